// infonce_bank_partial on CPU: the bank candidates alone (no positive), through infonce_bank_loss's tile loops
// (infonce_bank_loss_kernel.cpp, declared in infonce_bank_cpu_common.h): the same work per bank entry, minus the
// positive's O(N d) terms.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "ops/cpu/infonce_bank_cpu_common.h"
#include "ops/infonce_bank_loss.h"

namespace vkernels::infonce_bank_loss {
namespace {

std::tuple<at::Tensor, at::Tensor> infonce_bank_partial_cpu(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& bank, const at::Tensor& temperature,
                                                             const std::optional<at::Tensor>& exclude) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Problem p = make_partial(q, k, bank, temperature, exclude);
  const auto out = forward_cpu(p, /*with_positive=*/false);
  return {std::get<1>(out), std::get<2>(out)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> infonce_bank_partial_backward_cpu(
    const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& bank, const at::Tensor& temperature,
    const std::optional<at::Tensor>& exclude, const at::Tensor& lse, bool bank_grad) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Problem p = make_partial_backward(grad_lse, q, bank, temperature, exclude, lse);
  const at::Tensor zero = at::zeros_like(lse);
  const auto out = backward_cpu(p, zero, grad_lse, lse, zero, bank_grad, temperature, /*with_positive=*/false);
  return {std::get<0>(out), std::get<2>(out), std::get<3>(out)};
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("infonce_bank_partial", &infonce_bank_partial_cpu);
  m.impl("infonce_bank_partial_backward", &infonce_bank_partial_backward_cpu);
}

}  // namespace vkernels::infonce_bank_loss
