// bilinear_pooling schema (forward and backward, defined once here) and the argument checks shared by backends.
//
// z_b = vec((1 / HW) X_b Y_b^T) (X_b: C1 x HW, Y_b: C2 x HW; vec = row-major, or the upper triangle with triu), then
// with normalize = "signed_sqrt_l2": s = sign(z) sqrt(|z| + eps), out = s / max(||s||_2, 1e-12) (F.normalize).
#include "ops/bilinear_pooling.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/pooling_checks.h"

namespace vkernels::bilinear_pooling {

Problem make_problem(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& y,
                     const std::string& normalize, bool triu, double eps) {
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble, op,
              ": x must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [B, C1, H, W], got ", x.sizes());
  TORCH_CHECK(normalize == "none" || normalize == "signed_sqrt_l2", op,
              ": normalize must be 'none' or 'signed_sqrt_l2', got '", normalize, "'");
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  Problem p;
  p.B = x.size(0);
  p.C1 = x.size(1);
  p.M = x.size(2) * x.size(3);
  TORCH_CHECK(p.M > 0, op, ": x must have H * W >= 1, got ", x.sizes());
  p.x = x;
  p.sym = !(y && y->defined());
  p.C2 = pooling_checks::check_second_input(op, x, y);
  if (!p.sym) p.y = *y;
  TORCH_CHECK(!triu || p.C1 == p.C2, op, ": triu=True needs a square pooled matrix (y None or C2 == C1), got C1 = ",
              p.C1, ", C2 = ", p.C2);
  p.triu = triu;
  p.normalize = normalize == "signed_sqrt_l2";
  p.eps = eps;
  p.P = triu ? p.C1 * (p.C1 + 1) / 2 : p.C1 * p.C2;
  return p;
}

void check_backward_args(const Problem& p, const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& norm) {
  const char* op = "bilinear_pooling_backward";
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == p.B && grad_out.size(1) == p.P, op,
              ": grad_out must have shape [", p.B, ", ", p.P, "], got ", grad_out.sizes());
  if (!p.normalize) return;
  const auto acc = p.x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(out.sizes() == grad_out.sizes() && out.scalar_type() == p.x.scalar_type(), op,
              ": out must be the forward's [", p.B, ", ", p.P, "] ", p.x.scalar_type(), " output, got ", out.sizes(),
              " ", out.scalar_type());
  TORCH_CHECK(norm.dim() == 1 && norm.size(0) == p.B && norm.scalar_type() == acc, op,
              ": norm must be the forward's [", p.B, "] ", acc, " norm, got ", norm.sizes(), " ", norm.scalar_type());
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // out: (B, P) in x's dtype. norm: max(||s||_2, 1e-12) per image, (B,) in the accumulation dtype (float64 for
  // float64 inputs, else float32), kept for the backward together with out (s = out * norm there, so nothing of
  // size B x P is kept beyond the output itself); shape (0,) when normalize = 'none' (not needed).
  m.def("bilinear_pooling(Tensor x, Tensor? y, str normalize, bool triu, float eps) -> (Tensor out, Tensor norm)");
  // Gradients w.r.t. x and y (grad_y has shape (0,) when y is None: x's gradient then has both terms). out and norm:
  // the forward's outputs (only read when normalising).
  m.def("bilinear_pooling_backward(Tensor grad_out, Tensor x, Tensor? y, Tensor out, Tensor norm, str normalize, "
        "bool triu, float eps) -> (Tensor grad_x, Tensor grad_y)");
}

}  // namespace vkernels::bilinear_pooling
