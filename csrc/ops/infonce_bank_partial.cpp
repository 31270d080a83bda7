// infonce_bank_partial schema (forward and backward, defined once here) and its argument checks: infonce_bank_loss's
// (ops/infonce_bank_loss.h), with messages naming this op.
#include <torch/library.h>

#include <optional>

#include "ops/infonce_bank_loss.h"

namespace vkernels::infonce_bank_loss {

Problem make_partial(const at::Tensor& q, const at::Tensor& k, const at::Tensor& bank, const at::Tensor& temperature,
                     const std::optional<at::Tensor>& exclude) {
  return make_forward(q, k, bank, temperature, 0.0, exclude, "infonce_bank_partial");
}

Problem make_partial_backward(const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& bank,
                              const at::Tensor& temperature, const std::optional<at::Tensor>& exclude,
                              const at::Tensor& lse) {
  const char* op = "infonce_bank_partial_backward";
  Problem p = make_forward(q, q, bank, temperature, 0.0, exclude, op);
  check_rows(grad_lse, "grad_lse", p.N, q, op);
  check_rows(lse, "lse", p.N, q, op);
  return p;
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // The bank candidates alone, for a bank sharded across ranks: lse_i = logsumexp over the kept j of q_i.b_j / T
  // (-inf when every entry is excluded) and rank_i = kept entries with q_i.b_j > q_i.k_i (k only sets the
  // comparison). The caller merges the shards' (lse, rank) with the positive. Its gradient (lse w.r.t. q, bank,
  // temperature) is infonce_bank_loss_backward's with grad_loss = 0, k = 0 and this lse.
  m.def("infonce_bank_partial(Tensor q, Tensor k, Tensor bank, Tensor temperature, Tensor? exclude) -> "
        "(Tensor lse, Tensor rank)");
  // Gradients of sum_i grad_lse_i lse_i (lse: the partial's, or any per-row log-normaliser such as the merged lse of
  // a sharded bank, where p_ij = exp(q_i.b_j / T - lse_i)) w.r.t. q, the bank (shape [0, d] unless bank_grad) and
  // temperature, over the kept bank entries only.
  m.def("infonce_bank_partial_backward(Tensor grad_lse, Tensor q, Tensor bank, Tensor temperature, Tensor? exclude, "
        "Tensor lse, bool bank_grad) -> (Tensor grad_q, Tensor grad_bank, Tensor grad_temperature)");
}

}  // namespace vkernels::infonce_bank_loss
