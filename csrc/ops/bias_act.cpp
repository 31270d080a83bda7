// bias_act schema (defined once here) and the argument checks and layout handling shared by every backend.
#include "ops/bias_act.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>

namespace vkernels::bias_act {
namespace {

constexpr std::array<std::string_view, 9> kActNames = {"linear", "relu",    "lrelu",    "tanh", "sigmoid",
                                                       "elu",    "selu",    "softplus", "swish"};

Act parse_act(std::string_view name) {
  for (size_t i = 0; i < kActNames.size(); ++i)
    if (kActNames[i] == name) return static_cast<Act>(i);
  TORCH_CHECK(false, "bias_act: act must be one of linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish; "
                     "got '", name, "'");
}

// A tensor with out's (dense) strides holding t's values; t itself when it already has them.
at::Tensor like_out(const at::Tensor& t, const at::Tensor& out) {
  if (t.strides() == out.strides()) return t;
  return at::empty_like(out).copy_(t);
}

Problem make(const at::Tensor& v, const at::Tensor* g, const std::optional<at::Tensor>& b, int64_t dim,
             std::string_view act, double alpha, double gain, std::optional<double> clamp, Mode mode) {
  const char* vname = g ? "ref" : "x";
  TORCH_CHECK(v.scalar_type() == at::kHalf || v.scalar_type() == at::kBFloat16 || v.scalar_type() == at::kFloat ||
                  v.scalar_type() == at::kDouble,
              "bias_act: ", vname, " must be float16, bfloat16, float32 or float64, got ", v.scalar_type());
  Problem p;
  p.act = parse_act(act);
  p.mode = mode;
  TORCH_CHECK(!clamp || *clamp >= 0, "bias_act: clamp must be None or >= 0, got ", clamp ? *clamp : 0.0);
  const bool y_ref = mode == Mode::kGrad1Y || mode == Mode::kGrad2Y;
  TORCH_CHECK(!y_ref || p.act != Act::kSwish, "bias_act_grad: swish needs ref_is_y=False (its derivative is not a "
                                               "function of its output)");
  TORCH_CHECK(!y_ref || gain != 0, "bias_act_grad: ref_is_y=True needs gain != 0");
  p.params = {alpha, gain, gain != 0 ? 1.0 / gain : 0.0, clamp.value_or(0.0), -clamp.value_or(0.0),
              clamp.has_value()};
  if (g) {
    TORCH_CHECK(g->sizes() == v.sizes(), "bias_act_grad: grad has shape ", g->sizes(), " but ref has shape ",
                v.sizes());
    TORCH_CHECK(g->scalar_type() == v.scalar_type(), "bias_act_grad: grad dtype ", g->scalar_type(),
                " must match ref dtype ", v.scalar_type());
    TORCH_CHECK(g->device() == v.device(), "bias_act_grad: grad is on ", g->device(), " but ref is on ", v.device());
  }
  if (b && b->defined() && !y_ref) {
    TORCH_CHECK(v.dim() > 0, "bias_act: x must have at least one dimension when b is given");
    TORCH_CHECK(dim >= -v.dim() && dim < v.dim(), "bias_act: dim must be in [", -v.dim(), ", ", v.dim() - 1,
                "] for x of rank ", v.dim(), ", got ", dim);
    dim = dim < 0 ? dim + v.dim() : dim;
    TORCH_CHECK(b->dim() == 1 && b->size(0) == v.size(dim), "bias_act: b must have shape [", v.size(dim),
                "] (x.shape[", dim, "]), got ", b->sizes());
    TORCH_CHECK(b->scalar_type() == v.scalar_type(), "bias_act: b dtype ", b->scalar_type(), " must match ", vname,
                " dtype ", v.scalar_type());
    TORCH_CHECK(b->device() == v.device(), "bias_act: b is on ", b->device(), " but ", vname, " is on ", v.device());
    p.b = b->contiguous();
    p.C = v.size(dim);
  }
  p.out = at::empty_like(v);  // dense with v's layout when v is dense; a dense layout otherwise
  p.numel = v.numel();
  if (p.numel == 0) return p;
  p.v = like_out(v, p.out);
  if (g) p.g = like_out(*g, p.out);
  if (p.b.defined()) p.cs = p.C > 1 ? p.out.stride(dim) : 1;
  return p;
}

}  // namespace

Problem make_forward(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, std::string_view act,
                     double alpha, double gain, std::optional<double> clamp) {
  return make(x, nullptr, b, dim, act, alpha, gain, clamp, Mode::kForward);
}

Problem make_grad(const at::Tensor& grad, const at::Tensor& ref, const std::optional<at::Tensor>& b, int64_t dim,
                  std::string_view act, double alpha, double gain, std::optional<double> clamp, bool ref_is_y,
                  int64_t order) {
  TORCH_CHECK(order == 1 || order == 2, "bias_act_grad: order must be 1 or 2, got ", order);
  Mode mode = ref_is_y ? (order == 1 ? Mode::kGrad1Y : Mode::kGrad2Y) : (order == 1 ? Mode::kGrad1X : Mode::kGrad2X);
  return make(ref, &grad, b, dim, act, alpha, gain, clamp, mode);
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  m.def("bias_act(Tensor x, Tensor? b, int dim, str act, float alpha, float gain, float? clamp) -> Tensor");
  // Gradient of bias_act with respect to z = x + b (order 1), or of that with respect to ref (order 2).
  // ref is the forward output y when ref_is_y, else x (and b is added to it).
  m.def("bias_act_grad(Tensor grad, Tensor ref, Tensor? b, int dim, str act, float alpha, float gain, float? clamp, "
        "bool ref_is_y, int order) -> Tensor");
}

}  // namespace vkernels::bias_act
