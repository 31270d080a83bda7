// upsample_norm_act schemas (defined once here) and the argument checks both norm ops' kernels share
// (spade_norm_act's schemas: ops/spade_norm_act.cpp).
#include "ops/upsample_norm_act.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>

namespace vkernels::norm_act {

// The order of bias_act::Act (bias_act's activation set, reused rather than redefined).
constexpr std::array<std::string_view, 9> kActNames = {"linear", "relu",    "lrelu",    "tanh", "sigmoid",
                                                       "elu",    "selu",    "softplus", "swish"};

bias_act::Act parse_act(std::string_view op, std::string_view name) {
  for (size_t i = 0; i < kActNames.size(); ++i)
    if (kActNames[i] == name) return static_cast<bias_act::Act>(i);
  TORCH_CHECK(false, op, ": act must be one of linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish; got '",
              name, "'");
}

Mode parse_mode(std::string_view op, std::string_view name) {
  if (name == "nearest") return Mode::kNearest;
  if (name == "bilinear") return Mode::kBilinear;
  TORCH_CHECK(false, op, ": mode must be 'nearest' or 'bilinear', got '", name, "'");
}

Mode parse_mode_for(std::string_view op, std::string_view name, int64_t dim) {
  if (dim != 5) return parse_mode(op, name);
  if (name == "nearest") return Mode::kNearest;
  if (name == "trilinear") return Mode::kBilinear;
  TORCH_CHECK(false, op, ": mode must be 'nearest' or 'trilinear' for 5-D x, got '", name, "'");
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_x(std::string_view op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat ||
                  x.scalar_type() == at::kDouble,
              op, ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
}

void check_x45(std::string_view op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 || x.dim() == 5, op, ": x must be 4-D (N, C, H, W) or 5-D (N, C, D, H, W), got shape ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat ||
                  x.scalar_type() == at::kDouble,
              op, ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
}

void check_ab(std::string_view op, const at::Tensor& x, const at::Tensor& t_, const char* name) {
  const auto ct = compute_type(x.scalar_type());
  const at::Tensor* t = &t_;
  {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) == x.size(1), op, ": ", name,
                " must have shape (N, C) = (", x.size(0), ", ", x.size(1), "), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == ct, op, ": ", name, " must be ", ct, " for x of dtype ", x.scalar_type(),
                ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), op, ": ", name, " is on ", t->device(), " but x is on ", x.device());
  }
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // x: (N, C, H, W) with mode 'nearest' / 'bilinear', or (N, C, D, H, W) with 'nearest' / 'trilinear' (every
  // spatial dimension upsampled by scale).
  // Biased mean and variance of up(x) per channel (per_sample=False: over N, H', W') or per (n, c) (over H', W').
  m.def("upsample_norm_act_stats(Tensor x, int scale, str mode, bool per_sample) -> (Tensor, Tensor)");
  // clamp(act((up(x) - mean[n, c]) * a[n, c] + b[n, c]) * gain, -clamp, clamp).
  m.def("upsample_norm_act(Tensor x, Tensor mean, Tensor a, Tensor b, int scale, str mode, str act, float alpha, float gain, "
        "float? clamp) -> Tensor");
  // Backward ops (first order; their own gradients are the differentiable composites in vkernels/ops/*.py).
  // Outputs whose output_mask entry is False come back as empty (0-element) tensors.
  // (dx, dmean, da, db) of upsample_norm_act given dy = dL/dout.
  m.def("upsample_norm_act_backward(Tensor dy, Tensor x, Tensor mean, Tensor a, Tensor b, int scale, str mode, "
        "str act, float alpha, float gain, float? clamp, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // dx of upsample_norm_act_stats given the gradients of its (mean, var) outputs.
  m.def("upsample_norm_act_stats_backward(Tensor gmean, Tensor gvar, Tensor x, Tensor mean, int scale, str mode, "
        "bool per_sample) -> Tensor");
}

}  // namespace vkernels::norm_act
