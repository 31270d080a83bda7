// The CPU tile loops of infonce_bank_loss_kernel.cpp, which infonce_bank_partial_kernel.cpp runs as well.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "ops/infonce_bank_loss.h"

namespace vkernels::infonce_bank_loss {

// (loss, lse, rank) per row; with_positive = false: the bank candidates alone (infonce_bank_partial; loss undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const Problem& p, bool with_positive);

// (dq, dk, dbank, dtemperature) of sum_i (grad_loss_i loss_i + grad_lse_i lse_i); with_positive = false: of the bank
// candidates alone (infonce_bank_partial_backward, grad_loss = loss = 0).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const Problem& p, const at::Tensor& grad_loss, const at::Tensor& grad_lse, const at::Tensor& lse,
    const at::Tensor& loss, bool bank_grad, const at::Tensor& temperature, bool with_positive);

}  // namespace vkernels::infonce_bank_loss
