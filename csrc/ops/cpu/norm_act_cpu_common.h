// Small helpers shared by the upsample_norm_act / spade_norm_act CPU kernels (forward in
// upsample_norm_act_kernel.cpp, backward in norm_act_backward_kernel.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "ops/bias_act_math.h"
#include "ops/upsample_norm_act.h"

namespace vkernels::norm_act {

// One output coordinate of 1-D linear interpolation (align_corners=False), computed as torch's CPU kernel does
// (area_pixel_compute_source_index with scale = 1/s in the compute type), so results agree to the last bit or two.
template <class T>
struct Lin {
  int64_t i0, i1;
  T l0, l1;
};

template <class T>
std::vector<Lin<T>> make_lin(int64_t in, int64_t s) {
  std::vector<Lin<T>> r(in * s);
  const T scale = static_cast<T>(1.0 / static_cast<double>(s));
  for (int64_t o = 0; o < in * s; ++o) {
    T src = scale * (static_cast<T>(o) + T(0.5)) - T(0.5);
    if (src < T(0)) src = T(0);
    int64_t i0 = std::min(static_cast<int64_t>(src), in - 1);
    T l1 = std::min(std::max(src - static_cast<T>(i0), T(0)), T(1));
    r[o] = {i0, i0 + (i0 < in - 1 ? 1 : 0), T(1) - l1, l1};
  }
  return r;
}

inline bool is_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Calls f.template operator()<A>() with the runtime activation as a template argument.
template <class F>
void dispatch_act(bias_act::Act act, F&& f) {
  using bias_act::Act;
  switch (act) {
    case Act::kLinear: return f.template operator()<Act::kLinear>();
    case Act::kRelu: return f.template operator()<Act::kRelu>();
    case Act::kLrelu: return f.template operator()<Act::kLrelu>();
    case Act::kTanh: return f.template operator()<Act::kTanh>();
    case Act::kSigmoid: return f.template operator()<Act::kSigmoid>();
    case Act::kElu: return f.template operator()<Act::kElu>();
    case Act::kSelu: return f.template operator()<Act::kSelu>();
    case Act::kSoftplus: return f.template operator()<Act::kSoftplus>();
    default: return f.template operator()<Act::kSwish>();
  }
}

// Argument checks of the apply op (upsample_norm_act) and of its backward, which take the same arguments after dy:
// x, the per-(n, c) mean / a / b, scale, mode, act and clamp. Returns the parsed mode and activation.
inline std::pair<Mode, bias_act::Act> check_apply_args(std::string_view op, const at::Tensor& x, const at::Tensor& m,
                                                      const at::Tensor& a, const at::Tensor& b, int64_t scale,
                                                      c10::string_view mode_s, c10::string_view act_s,
                                                      std::optional<double> clamp) {
  check_x(op, x);
  TORCH_CHECK(scale >= 1, op, ": scale must be an integer >= 1, got ", scale);
  const Mode mode = parse_mode(op, std::string_view(mode_s.data(), mode_s.size()));
  const bias_act::Act act = parse_act(op, std::string_view(act_s.data(), act_s.size()));
  TORCH_CHECK(!clamp || *clamp >= 0, op, ": clamp must be None or >= 0, got ", clamp ? *clamp : 0.0);
  check_ab(op, x, m, "mean");
  check_ab(op, x, a, "a");
  check_ab(op, x, b, "b");
  return {mode, act};
}

inline bias_act::Params<double> make_params(double alpha, double gain, std::optional<double> clamp) {
  return {alpha, gain, gain != 0 ? 1.0 / gain : 0.0, clamp.value_or(0.0), -clamp.value_or(0.0), clamp.has_value()};
}

}  // namespace vkernels::norm_act
