// infonce_bank_loss / infonce_bank_partial: what the schema files share with the kernels (argument checks and the
// normalised problem).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace vkernels::infonce_bank_loss {

// One call, device-agnostic. q, k: (N, d); bank: (K, d); all of one float dtype. exclude: (N, E) int64 contiguous
// (E may be 0), -1 = none. inv_t: 1 / temperature. count: per row, the number of candidates left after exclusion
// (K + 1 minus the distinct valid excluded indices), as the dtype of the accumulator (fp64 for fp64, else fp32).
struct Problem {
  at::Tensor q, k, bank, exclude, count;
  int64_t N = 0, K = 0, D = 0, E = 0;
  double inv_t = 1.0, temperature = 1.0, smoothing = 0.0;
};

// op: the name the error messages give.
Problem make_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& bank, const at::Tensor& temperature,
                     double label_smoothing, const std::optional<at::Tensor>& exclude,
                     const char* op = "infonce_bank_loss");
// A per-row (N,) float32 / float64 tensor on q's device (the backward ops' grad_loss, grad_lse, lse, loss).
void check_rows(const at::Tensor& t, const char* name, int64_t N, const at::Tensor& q,
                const char* op = "infonce_bank_loss_backward");
// infonce_bank_partial's checks (the forward's, messages naming that op; label smoothing 0); in
// ops/infonce_bank_partial.cpp.
Problem make_partial(const at::Tensor& q, const at::Tensor& k, const at::Tensor& bank, const at::Tensor& temperature,
                     const std::optional<at::Tensor>& exclude);
// infonce_bank_partial_backward's checks: the partial's (k = q, unused) and grad_lse, lse of shape (N,).
Problem make_partial_backward(const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& bank,
                              const at::Tensor& temperature, const std::optional<at::Tensor>& exclude,
                              const at::Tensor& lse);
// Also checks the backward's extra inputs (per-row fp32/fp64 grad_loss, grad_lse, lse, loss of shape (N,)).
Problem make_backward(const at::Tensor& grad_loss, const at::Tensor& grad_lse, const at::Tensor& q,
                      const at::Tensor& k, const at::Tensor& bank, const at::Tensor& temperature,
                      double label_smoothing, const std::optional<at::Tensor>& exclude, const at::Tensor& lse,
                      const at::Tensor& loss);

}  // namespace vkernels::infonce_bank_loss
