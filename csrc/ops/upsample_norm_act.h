// upsample_norm_act / spade_norm_act: what the schema file shares with the CPU kernels.
//
// The public functions (vkernels/ops/upsample_norm_act.py, spade_norm_act.py) split the fused layer into two
// kernels, so each backend needs no knowledge of batch vs instance norm, running statistics or affine conventions:
//   upsample_norm_act_stats(x, scale, mode, per_sample) -> (mean, var): biased mean/variance of the upsampled
//       values u = up(x) per channel (over N, H, W) or per (n, c) (over H, W), accumulated in fp64 (one pass of
//       shifted sums).
//   upsample_norm_act(x, mean, a, b, scale, mode, act, ...) -> clamp(act((u - mean) * a + b) * gain), u = up(x)
//       computed on the fly (never written), a = rstd * scale and b = shift combined by the caller.
//   spade_norm_act(x, mean, rstd, gamma, beta, act, ...) -> clamp(act((x - mean) * rstd * (1 + gamma) + beta) * gain).
// mean, a, b, rstd are (N, C) in the compute type (fp32 for fp16/bf16/fp32 x, fp64 for fp64 x).
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>

#include "ops/bias_act_math.h"

namespace vkernels::norm_act {

// kBilinear: linear interpolation along every spatial dimension ("bilinear" for 4-D x, "trilinear" for 5-D x).
enum class Mode : int { kNearest, kBilinear };

bias_act::Act parse_act(std::string_view op, std::string_view name);
Mode parse_mode(std::string_view op, std::string_view name);
// upsample_norm_act's ops: "nearest" for 4-D and 5-D x, "bilinear" for 4-D x, "trilinear" for 5-D x.
Mode parse_mode_for(std::string_view op, std::string_view name, int64_t dim);
// Checks shared by the ops' CPU entry points (the Triton variants make the same checks in Python).
void check_x(std::string_view op, const at::Tensor& x);
// upsample_norm_act's ops: x 4-D (N, C, H, W) or 5-D (N, C, D, H, W).
void check_x45(std::string_view op, const at::Tensor& x);
// t must be (N, C) in x's compute type on x's device.
void check_ab(std::string_view op, const at::Tensor& x, const at::Tensor& t, const char* name);
at::ScalarType compute_type(at::ScalarType t);

}  // namespace vkernels::norm_act
