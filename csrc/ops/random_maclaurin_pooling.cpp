// random_maclaurin_pooling schema (forward and backward, defined once here) and the argument checks shared by backends.
//
// out[b, d] = (1 / sqrt(D)) sum_l (w1_d . x_bl)(w2_d . y_bl) = (1 / sqrt(D)) w1_d^T G_b w2_d, G_b = X_b Y_b^T
// (X_b: C1 x HW, Y_b: C2 x HW). Random Maclaurin features of degree 2 (Kar & Karnick 2012; Gao et al., CVPR 2016),
// sum-pooled over locations.
#include "ops/random_maclaurin_pooling.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/pooling_checks.h"

namespace vkernels::random_maclaurin_pooling {

namespace {
bool is_float(at::ScalarType st) {
  return st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble;
}
}  // namespace

Problem make_problem(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w1,
                     const at::Tensor& w2, const std::string& route) {
  const auto st = x.scalar_type();
  TORCH_CHECK(is_float(st), op, ": x must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [B, C1, H, W], got ", x.sizes());
  TORCH_CHECK(route == "gram" || route == "project", op, ": route must be 'gram' or 'project', got '", route, "'");
  Problem p;
  p.B = x.size(0);
  p.C1 = x.size(1);
  p.M = x.size(2) * x.size(3);
  p.x = x;
  p.sym = !(y && y->defined());
  p.C2 = pooling_checks::check_second_input(op, x, y);
  if (!p.sym) p.y = *y;
  TORCH_CHECK(is_float(w1.scalar_type()), op, ": w1 must be a float tensor, got ", w1.scalar_type());
  TORCH_CHECK(is_float(w2.scalar_type()), op, ": w2 must be a float tensor, got ", w2.scalar_type());
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == p.C1 && w1.size(0) >= 1, op, ": w1 must have shape [D, ", p.C1,
              "] with D >= 1, got ", w1.sizes());
  p.D = w1.size(0);
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == p.D && w2.size(1) == p.C2, op, ": w2 must have shape [", p.D, ", ", p.C2,
              "] (D from w1, C2 from y), got ", w2.sizes());
  TORCH_CHECK(w1.device() == x.device(), op, ": w1 is on ", w1.device(), " but x is on ", x.device());
  TORCH_CHECK(w2.device() == x.device(), op, ": w2 is on ", w2.device(), " but x is on ", x.device());
  p.w1 = w1;
  p.w2 = w2;
  p.gram = route == "gram";
  return p;
}

void check_grad_out(const char* op, const Problem& p, const at::Tensor& grad_out) {
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == p.B && grad_out.size(1) == p.D, op,
              ": grad_out must have shape [", p.B, ", ", p.D, "], got ", grad_out.sizes());
  TORCH_CHECK(is_float(grad_out.scalar_type()), op, ": grad_out must be a float tensor, got ",
              grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == p.x.device(), op, ": grad_out is on ", grad_out.device(), " but x is on ",
              p.x.device());
}

void check_proj(const char* op, const Problem& p, const at::Tensor& proj) {
  const auto acc = p.x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(proj.dim() == 4 && proj.size(0) == 2 && proj.size(1) == p.D && proj.size(2) == p.B &&
                  proj.size(3) == p.M,
              op, ": proj must have shape [2, ", p.D, ", ", p.B, ", ", p.M, "] (random_maclaurin_pooling_saved's ",
              "second output), got ", proj.sizes());
  TORCH_CHECK(proj.scalar_type() == acc, op, ": proj must be ", acc, " (the accumulation dtype of x's ",
              p.x.scalar_type(), "), got ", proj.scalar_type());
  TORCH_CHECK(proj.device() == p.x.device(), op, ": proj is on ", proj.device(), " but x is on ", p.x.device());
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // out: (B, D) in x's dtype, sum-pooled. y None: y = x. route: "gram" | "project" (the Python wrapper resolves
  // "auto"); both compute the same sum in fp32 (fp64 for fp64 inputs), only the order of the sums differs.
  m.def("random_maclaurin_pooling(Tensor x, Tensor? y, Tensor w1, Tensor w2, str route) -> Tensor");
  // Gradients w.r.t. x, y, w1, w2 (each an empty (0,) tensor where output_mask is false; grad_y is (0,) when y is
  // None: x's gradient then holds both terms). Every route's backward goes through dG_b = W1^T diag(g_b) W2 / sqrt(D).
  m.def("random_maclaurin_pooling_backward(Tensor grad_out, Tensor x, Tensor? y, Tensor w1, Tensor w2, str route, "
        "bool[4] output_mask) -> (Tensor grad_x, Tensor grad_y, Tensor grad_w1, Tensor grad_w2)");
  // The project route that keeps its projections for the backward: out as above, and proj = (2, D, B, HW) in the
  // accumulation dtype (fp32; fp64 for fp64 inputs), proj[0] = W1 X, proj[1] = W2 Y (images side by side).
  // The backward then needs no recomputation: 4 GEMMs for all of x, y, w1, w2 instead of 6.
  m.def("random_maclaurin_pooling_saved(Tensor x, Tensor? y, Tensor w1, Tensor w2) -> (Tensor out, Tensor proj)");
  m.def("random_maclaurin_pooling_saved_backward(Tensor grad_out, Tensor x, Tensor? y, Tensor w1, Tensor w2, "
        "Tensor proj, bool[4] output_mask) -> (Tensor grad_x, Tensor grad_y, Tensor grad_w1, Tensor grad_w2)");
}

}  // namespace vkernels::random_maclaurin_pooling
