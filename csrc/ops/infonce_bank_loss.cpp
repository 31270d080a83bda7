// infonce_bank_loss schema (forward and backward, defined once here) and the argument checks shared by backends
// and by infonce_bank_partial (ops/infonce_bank_partial.cpp).
//
// loss_i = logsumexp_c(l_ic) - (1 - eps) l_i0 - eps mean_c(l_ic), over the candidates c of row i: the positive
// l_i0 = q_i.k_i / T and the bank l_ij = q_i.b_j / T, minus the bank entries that `exclude` names for row i.
// eps = 0 is MoCo's cross_entropy(cat([l_pos, l_neg], 1) / T, zeros); eps > 0 is F.cross_entropy's label smoothing.
#include "ops/infonce_bank_loss.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace vkernels::infonce_bank_loss {
namespace {

bool is_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

}  // namespace

void check_rows(const at::Tensor& t, const char* name, int64_t N, const at::Tensor& q, const char* op) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N, op, ": ", name, " must have shape [", N, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.device() == q.device(), op, ": ", name, " is on ", t.device(), " but q is on ", q.device());
}

Problem make_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& bank, const at::Tensor& temperature,
                     double label_smoothing, const std::optional<at::Tensor>& exclude, const char* op) {
  TORCH_CHECK(is_float(q.scalar_type()), op, ": q must be float16, bfloat16, float32 or float64, got ",
              q.scalar_type());
  TORCH_CHECK(q.dim() == 2, op, ": q must have shape [N, d], got ", q.sizes());
  TORCH_CHECK(k.dim() == 2 && k.sizes() == q.sizes(), op, ": k must have q's shape ", q.sizes(),
              ", got ", k.sizes());
  TORCH_CHECK(bank.dim() == 2 && bank.size(1) == q.size(1), op, ": bank must have shape [K, ", q.size(1),
              "] (d from q), got ", bank.sizes());
  TORCH_CHECK(bank.size(0) > 0, op, ": bank must not be empty (K = 0)");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && bank.scalar_type() == q.scalar_type(),
              op, ": k and bank must have q's dtype ", q.scalar_type(), ", got ", k.scalar_type(),
              " and ", bank.scalar_type());
  TORCH_CHECK(k.device() == q.device() && bank.device() == q.device(), op, ": q, k and bank must be on "
              "one device, got ", q.device(), ", ", k.device(), ", ", bank.device());
  TORCH_CHECK(temperature.numel() == 1 && temperature.dim() == 0 && is_float(temperature.scalar_type()),
              op, ": temperature must be a 0-dim float tensor, got shape ", temperature.sizes(),
              " dtype ", temperature.scalar_type());
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
              op, ": label_smoothing must be in [0, 1], got ", label_smoothing);
  Problem p;
  p.N = q.size(0);
  p.D = q.size(1);
  p.K = bank.size(0);
  p.q = q;
  p.k = k;
  p.bank = bank;
  p.smoothing = label_smoothing;
  if (temperature.device().is_cpu()) {  // the kernels that read it on the host (CPU); GPU kernels load it
    p.temperature = temperature.item<double>();
    TORCH_CHECK(p.temperature > 0 && std::isfinite(p.temperature),
                op, ": temperature must be a finite number > 0, got ", p.temperature);
    p.inv_t = 1.0 / p.temperature;
  }
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (exclude && exclude->defined()) {
    const auto& ex = *exclude;
    TORCH_CHECK(ex.scalar_type() == at::kLong, op, ": exclude must be int64, got ", ex.scalar_type());
    TORCH_CHECK((ex.dim() == 1 || ex.dim() == 2) && ex.size(0) == p.N, op, ": exclude must have shape [",
                p.N, "] or [", p.N, ", E], got ", ex.sizes());
    TORCH_CHECK(ex.device() == q.device(), op, ": exclude is on ", ex.device(), " but q is on ",
                q.device());
    p.exclude = (ex.dim() == 1 ? ex.unsqueeze(1) : ex).contiguous();
    p.E = p.exclude.size(1);
  } else {
    p.exclude = at::empty({p.N, 0}, q.options().dtype(at::kLong));
  }
  if (q.device().is_cpu()) {
    // Candidates per row: K + 1 minus the distinct valid indices named (a repeated index excludes one entry).
    p.count = at::empty({p.N}, q.options().dtype(acc));
    const int64_t* ex = p.exclude.const_data_ptr<int64_t>();
    std::vector<int64_t> seen;
    for (int64_t i = 0; i < p.N; ++i) {
      seen.assign(ex + i * p.E, ex + (i + 1) * p.E);
      for (int64_t e : seen)
        TORCH_CHECK(e >= -1 && e < p.K, op, ": exclude[", i, "] holds ", e,
                    ", out of range for a bank of K = ", p.K, " entries (-1 means none)");
      std::sort(seen.begin(), seen.end());
      const int64_t distinct = std::unique(seen.begin(), seen.end()) - seen.begin();
      const int64_t n_ex = distinct - (!seen.empty() && seen[0] == -1 ? 1 : 0);
      if (acc == at::kDouble)
        p.count.mutable_data_ptr<double>()[i] = double(p.K + 1 - n_ex);
      else
        p.count.mutable_data_ptr<float>()[i] = float(p.K + 1 - n_ex);
    }
  }
  return p;
}

Problem make_backward(const at::Tensor& grad_loss, const at::Tensor& grad_lse, const at::Tensor& q,
                      const at::Tensor& k, const at::Tensor& bank, const at::Tensor& temperature,
                      double label_smoothing, const std::optional<at::Tensor>& exclude, const at::Tensor& lse,
                      const at::Tensor& loss) {
  Problem p = make_forward(q, k, bank, temperature, label_smoothing, exclude);
  check_rows(grad_loss, "grad_loss", p.N, q);
  check_rows(grad_lse, "grad_lse", p.N, q);
  check_rows(lse, "lse", p.N, q);
  check_rows(loss, "loss", p.N, q);
  return p;
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // Per-row results: loss and lse in the accumulation dtype (float64 for float64 inputs, else float32) and rank
  // (int64: bank candidates whose logit is strictly larger than the positive's; 0 = top-1). temperature is a 0-dim
  // tensor so that it can be learned (the backward returns its gradient).
  m.def("infonce_bank_loss(Tensor q, Tensor k, Tensor bank, Tensor temperature, float label_smoothing, "
        "Tensor? exclude) -> (Tensor loss, Tensor lse, Tensor rank)");
  // Gradients of sum_i(grad_loss_i loss_i + grad_lse_i lse_i) w.r.t. q, k, bank (shape [0, d] unless bank_grad) and
  // temperature, recomputing the logits tile by tile from the forward's per-row lse and loss.
  m.def("infonce_bank_loss_backward(Tensor grad_loss, Tensor grad_lse, Tensor q, Tensor k, Tensor bank, "
        "Tensor temperature, float label_smoothing, Tensor? exclude, Tensor lse, Tensor loss, bool bank_grad) -> "
        "(Tensor grad_q, Tensor grad_k, Tensor grad_bank, Tensor grad_temperature)");
}

}  // namespace vkernels::infonce_bank_loss
