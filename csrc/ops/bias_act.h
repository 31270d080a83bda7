// bias_act: what the schema file shares with the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "ops/bias_act_math.h"

namespace vkernels::bias_act {

// One elementwise launch, device-agnostic: out[i] = apply(v[i], b[channel(i)], g[i]).
// v, g and out share one dense layout (storage order); channel(i) = (i / cs) % C in that order.
struct Problem {
  at::Tensor out, v, g, b;  // g undefined in forward, b undefined without bias
  int64_t numel = 0, cs = 1, C = 1;
  Act act = Act::kLinear;
  Mode mode = Mode::kForward;
  Params<double> params{};
};

Problem make_forward(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, std::string_view act,
                     double alpha, double gain, std::optional<double> clamp);
Problem make_grad(const at::Tensor& grad, const at::Tensor& ref, const std::optional<at::Tensor>& b, int64_t dim,
                  std::string_view act, double alpha, double gain, std::optional<double> clamp, bool ref_is_y,
                  int64_t order);

// The op entry points each backend registers: shared checks and layout handling, then that backend's run().
template <void (*Run)(const Problem&)>
at::Tensor forward_op(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                      double alpha, double gain, std::optional<double> clamp) {
  Problem p = make_forward(x, b, dim, std::string_view(act.data(), act.size()), alpha, gain, clamp);
  Run(p);
  return p.out;
}

template <void (*Run)(const Problem&)>
at::Tensor grad_op(const at::Tensor& grad, const at::Tensor& ref, const std::optional<at::Tensor>& b, int64_t dim,
                   c10::string_view act, double alpha, double gain, std::optional<double> clamp, bool ref_is_y,
                   int64_t order) {
  Problem p = make_grad(grad, ref, b, dim, std::string_view(act.data(), act.size()), alpha, gain, clamp, ref_is_y,
                        order);
  Run(p);
  return p.out;
}

}  // namespace vkernels::bias_act
