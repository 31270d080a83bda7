// infonce_bank_loss on CPU (and the tile loops infonce_bank_partial_kernel.cpp runs): logits S = Q B^T / T tile
// by tile (a GEMM of RB query rows x KT bank rows into a tile-sized buffer), with the exponentials, the online
// log-sum-exp, the rank count and the label-smoothing sum fused into one vectorised pass over the tile while it is
// still in cache. Nothing of size N x K exists.
//
// Work: forward 2 N K d FLOPs (one GEMM) + N K exps; backward 6 N K d FLOPs (recompute S; dQ += W B; dB += W^T Q)
// + N K exps. Bytes: q, k, bank read once per tile sweep (bank (K d) once per forward, per row block in cache).
// Accumulation in fp32 (fp64 for fp64 inputs); fp16/bf16 tiles are converted to fp32 before the GEMM.
//
// Parallel over bank tiles. Forward: every tile writes per-row partials (max, sumexp, rank count, logit sum) that
// are merged in tile order, so the result does not depend on the thread count. Backward: each thread owns whole
// bank tiles (it alone writes their dbank rows) and accumulates dq into its own [N, d] buffer; the buffers are
// summed in thread order (deterministic for a given thread count, like torch's own CPU reductions).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

#include "ops/cpu/infonce_bank_cpu_common.h"
#include "ops/infonce_bank_loss.h"

namespace vkernels::infonce_bank_loss {
namespace {

using at::vec::Vectorized;

constexpr int64_t KT = 256;  // bank rows per tile: the S tile (RB x KT fp32, 256 KB) stays in L2
constexpr int64_t RB = 256;  // query rows per GEMM

template <class acc_t>
at::Tensor as_acc(const at::Tensor& t) {
  return t.to(std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat).contiguous();
}

// Bank rows [j0, j0 + kt) as a contiguous acc_t matrix: a view when the bank already is one, else a converted copy.
template <class acc_t>
at::Tensor bank_tile(const at::Tensor& bank, int64_t j0, int64_t kt) {
  return as_acc<acc_t>(bank.narrow(0, j0, kt));
}

// l_pos_i = q_i . k_i / T from the acc_t copies.
template <class acc_t>
at::Tensor positive_logits(const at::Tensor& qf, const at::Tensor& kf, double inv_t) {
  const int64_t N = qf.size(0), D = qf.size(1);
  at::Tensor out = at::empty({N}, qf.options());
  const acc_t* qp = qf.const_data_ptr<acc_t>();
  const acc_t* kp = kf.const_data_ptr<acc_t>();
  acc_t* op = out.mutable_data_ptr<acc_t>();
  at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      acc_t s = 0;
      for (int64_t c = 0; c < D; ++c) s += qp[i * D + c] * kp[i * D + c];
      op[i] = s * acc_t(inv_t);
    }
  });
  return out;
}

// Sets the excluded entries of row i that fall in this tile to -inf; returns how many changed (repeats count once).
template <class acc_t>
int64_t mask_excluded(acc_t* row, const int64_t* ex, int64_t E, int64_t j0, int64_t kt) {
  int64_t hits = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t j = ex[e] - j0;
    if (j >= 0 && j < kt && row[j] != -std::numeric_limits<acc_t>::infinity()) {
      row[j] = -std::numeric_limits<acc_t>::infinity();
      ++hits;
    }
  }
  return hits;
}

// with_positive = false: infonce_bank_partial, the bank candidates alone (loss is then not meaningful: returned
// undefined), for a bank sharded across ranks whose per-row partials are merged by the caller.
template <class scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const Problem& p, bool with_positive = true) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Vec = Vectorized<acc_t>;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const int64_t N = p.N, K = p.K, E = p.E, ntiles = (K + KT - 1) / KT;
  const acc_t inv_t = acc_t(p.inv_t);
  const bool smooth = p.smoothing > 0;
  const at::Tensor qf = as_acc<acc_t>(p.q);
  const at::Tensor lpos = positive_logits<acc_t>(qf, as_acc<acc_t>(p.k), p.inv_t);
  const auto opt = qf.options();
  // Per (tile, row) partials: max, sum of exp(l - max), count of logits > l_pos, sum of logits (smoothing).
  at::Tensor pm = at::empty({ntiles, N}, opt), ps = at::empty({ntiles, N}, opt), pc = at::empty({ntiles, N}, opt);
  at::Tensor px = smooth ? at::empty({ntiles, N}, opt) : at::Tensor();
  const acc_t* lp = lpos.const_data_ptr<acc_t>();
  const int64_t* exp_ = p.exclude.const_data_ptr<int64_t>();

  at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
    at::AutoDispatchBelowADInplaceOrView guard;  // per worker thread: the TLS guard of the caller does not reach it
    at::Tensor S = at::empty({std::min(RB, N), KT}, opt);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = t * KT, kt = std::min(KT, K - j0);
      const at::Tensor B = bank_tile<acc_t>(p.bank, j0, kt);
      for (int64_t r0 = 0; r0 < N; r0 += RB) {
        const int64_t rb = std::min(RB, N - r0);
        at::Tensor St = S.view(-1).narrow(0, 0, rb * kt).view({rb, kt});
        at::mm_out(St, qf.narrow(0, r0, rb), B.t());
        acc_t* sp = St.mutable_data_ptr<acc_t>();
        for (int64_t r = 0; r < rb; ++r) {
          const int64_t i = r0 + r;
          acc_t* x = sp + r * kt;
          // Pass 1: scale, max, sum.
          Vec vmax(kNegInf), vsum(0);
          const Vec vit(inv_t);
          int64_t j = 0;
          for (; j + Vec::size() <= kt; j += Vec::size()) {
            Vec v = Vec::loadu(x + j) * vit;
            v.store(x + j);
            vmax = at::vec::maximum(vmax, v);
            vsum = vsum + v;
          }
          acc_t m = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
          acc_t sx = smooth ? at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vsum) : 0;
          for (; j < kt; ++j) {
            x[j] *= inv_t;
            m = std::max(m, x[j]);
            sx += x[j];
          }
          if (E > 0) {
            const int64_t* ex = exp_ + i * E;
            bool hit = false;
            for (int64_t e = 0; e < E; ++e) {
              const int64_t jj = ex[e] - j0;
              if (jj >= 0 && jj < kt && x[jj] != kNegInf) {
                sx -= x[jj];
                x[jj] = kNegInf;
                hit = true;
              }
            }
            if (hit) {
              m = kNegInf;
              for (int64_t jj = 0; jj < kt; ++jj) m = std::max(m, x[jj]);
            }
          }
          // Pass 2: sum of exp(x - m) and the rank count (excluded entries are -inf: they add 0 to both).
          acc_t s = 0, cnt = 0;
          if (m != kNegInf) {
            const Vec vm(m), vlp(lp[i]), one(1), zero(0);
            Vec vs(0), vc(0);
            j = 0;
            for (; j + Vec::size() <= kt; j += Vec::size()) {
              const Vec v = Vec::loadu(x + j);
              vs = vs + (v - vm).exp_u20();
              vc = vc + Vec::blendv(zero, one, v > vlp);
            }
            s = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vs);
            cnt = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vc);
            for (; j < kt; ++j) {
              s += std::exp(x[j] - m);
              cnt += x[j] > lp[i] ? 1 : 0;
            }
          }
          pm.mutable_data_ptr<acc_t>()[t * N + i] = m;
          ps.mutable_data_ptr<acc_t>()[t * N + i] = s;
          pc.mutable_data_ptr<acc_t>()[t * N + i] = cnt;
          if (smooth) px.mutable_data_ptr<acc_t>()[t * N + i] = sx;
        }
      }
    }
  });

  // Merge the tiles in order, starting from the positive (always a candidate): lse, loss, rank.
  at::Tensor loss = at::empty({N}, opt), lse = at::empty({N}, opt);
  at::Tensor rank = at::empty({N}, opt.dtype(at::kLong));
  const acc_t eps = acc_t(p.smoothing);
  const acc_t* cntp = p.count.const_data_ptr<acc_t>();
  at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      acc_t m = with_positive ? lp[i] : kNegInf, s = with_positive ? 1 : 0, sx = lp[i];
      int64_t c = 0;
      for (int64_t t = 0; t < ntiles; ++t) {
        const acc_t mt = pm.const_data_ptr<acc_t>()[t * N + i];
        c += int64_t(pc.const_data_ptr<acc_t>()[t * N + i]);
        if (smooth) sx += px.const_data_ptr<acc_t>()[t * N + i];
        if (mt == kNegInf) continue;
        const acc_t mn = std::max(m, mt);
        s = s * std::exp(m - mn) + ps.const_data_ptr<acc_t>()[t * N + i] * std::exp(mt - mn);
        m = mn;
      }
      const acc_t l = s > 0 ? m + std::log(s) : kNegInf;  // a partial with every entry excluded: empty, -inf
      lse.mutable_data_ptr<acc_t>()[i] = l;
      loss.mutable_data_ptr<acc_t>()[i] = smooth ? l - (1 - eps) * lp[i] - eps * sx / cntp[i] : l - lp[i];
      rank.mutable_data_ptr<int64_t>()[i] = c;
    }
  });
  if (!with_positive) loss = at::Tensor();
  return {loss, lse, rank};
}

template <class scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(const Problem& p, const at::Tensor& grad_loss,
                                                                    const at::Tensor& grad_lse, const at::Tensor& lse_,
                                                                    const at::Tensor& loss_, bool bank_grad,
                                                                    const at::Tensor& temperature,
                                                                    bool with_positive = true) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Vec = Vectorized<acc_t>;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const int64_t N = p.N, K = p.K, D = p.D, E = p.E, ntiles = (K + KT - 1) / KT;
  const acc_t inv_t = acc_t(p.inv_t), eps = acc_t(p.smoothing);
  const at::Tensor qf = as_acc<acc_t>(p.q), kf = as_acc<acc_t>(p.k);
  const at::Tensor lpos = positive_logits<acc_t>(qf, kf, p.inv_t);
  const auto opt = qf.options();
  const at::Tensor g = as_acc<acc_t>(grad_loss), h = as_acc<acc_t>(grad_lse);
  const at::Tensor lse = as_acc<acc_t>(lse_), loss = as_acc<acc_t>(loss_);
  // dL/dl_ij = coef_i p_ij - sm_i over the bank candidates, with coef = g + h and sm = g eps / count.
  const at::Tensor coef = g + h, sm = g * eps / p.count;
  const acc_t *cp = coef.const_data_ptr<acc_t>(), *smp = sm.const_data_ptr<acc_t>();
  const acc_t* lsep = lse.const_data_ptr<acc_t>();
  const int64_t* exp_ = p.exclude.const_data_ptr<int64_t>();
  const int64_t nth = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntiles));
  at::Tensor dq_part = at::zeros({nth, N, D}, opt), e_part = at::zeros({nth, N}, opt);
  at::Tensor dbank = bank_grad ? at::empty({K, D}, p.bank.options().memory_format(at::MemoryFormat::Contiguous))
                               : at::empty({0, D}, p.bank.options());

  at::parallel_for(0, ntiles, (ntiles + nth - 1) / nth, [&](int64_t t0, int64_t t1) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const int64_t tid = at::get_thread_num() % nth;
    at::Tensor dqp = dq_part[tid];
    acc_t* ep = e_part[tid].mutable_data_ptr<acc_t>();
    at::Tensor S = at::empty({std::min(RB, N), KT}, opt);
    at::Tensor DB = bank_grad ? at::empty({KT, D}, opt) : at::Tensor();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = t * KT, kt = std::min(KT, K - j0);
      const at::Tensor B = bank_tile<acc_t>(p.bank, j0, kt);
      at::Tensor DBt = bank_grad ? DB.narrow(0, 0, kt) : at::Tensor();
      if (bank_grad) DBt.zero_();
      for (int64_t r0 = 0; r0 < N; r0 += RB) {
        const int64_t rb = std::min(RB, N - r0);
        at::Tensor W = S.view(-1).narrow(0, 0, rb * kt).view({rb, kt});
        const at::Tensor Q = qf.narrow(0, r0, rb);
        at::mm_out(W, Q, B.t());
        acc_t* sp = W.mutable_data_ptr<acc_t>();
        for (int64_t r = 0; r < rb; ++r) {
          const int64_t i = r0 + r;
          acc_t* x = sp + r * kt;
          const bool masked = E > 0 && mask_excluded(x, exp_ + i * E, E, j0, kt) > 0;
          const Vec vit(inv_t), vl(lsep[i]), vc(cp[i]), vsm(smp[i]), zero(0), ninf(kNegInf);
          Vec ve(0);
          int64_t j = 0;
          // x -> w = (coef p - sm) / T, p = exp(x / T - lse); excluded entries (-inf) get w = 0 and add 0 to E.
          for (; j + Vec::size() <= kt; j += Vec::size()) {
            const Vec raw = Vec::loadu(x + j);
            const Vec v = raw * vit;
            const Vec pr = (v - vl).exp_u20();
            Vec w = (vc * pr - vsm) * vit;
            if (masked) {
              const Vec keep = raw != ninf;
              ve = ve + Vec::blendv(zero, pr * (v - vl), keep);
              w = Vec::blendv(zero, w, keep);
            } else {
              ve = ve + pr * (v - vl);
            }
            w.store(x + j);
          }
          acc_t es = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, ve);
          for (; j < kt; ++j) {
            if (x[j] == kNegInf) {
              x[j] = 0;
              continue;
            }
            const acc_t v = x[j] * inv_t, pr = std::exp(v - lsep[i]);
            es += pr * (v - lsep[i]);
            x[j] = (cp[i] * pr - smp[i]) * inv_t;
          }
          ep[i] += es;
        }
        dqp.narrow(0, r0, rb).addmm_(W, B);
        if (bank_grad) DBt.addmm_(W.t(), Q);
      }
      if (bank_grad) dbank.narrow(0, j0, kt).copy_(DBt);
    }
  });

  // The positive's terms (O(N d)), then the partials summed in thread order.
  at::Tensor dq = dq_part[0].clone(), esum = e_part[0].clone();
  for (int64_t t = 1; t < nth; ++t) {
    dq.add_(dq_part[t]);
    esum.add_(e_part[t]);
  }
  if (!with_positive) {
    // infonce_bank_partial_backward: d(sum_i h_i lse_i)/dT = -(1/T) sum_i h_i sum_j p_ij l_ij = -(1/T) sum_i h_i
    // (E_i + lse_i); a row with every entry excluded (lse = -inf) has no gradient.
    const at::Tensor per_row = at::where(lse.isneginf(), at::zeros_like(lse), h * (esum + lse));
    const at::Tensor dt = (per_row.sum() * (-p.inv_t)).to(temperature.scalar_type());
    return {dq.to(p.q.scalar_type()), at::Tensor(), dbank, dt};
  }
  const at::Tensor ppos = (lpos - lse).exp();
  const at::Tensor wpos = (coef * ppos - sm - g * (1 - eps)) * inv_t;  // dL/dl_i0 / T
  dq.addcmul_(wpos.unsqueeze(1), kf);
  const at::Tensor dk = (wpos.unsqueeze(1) * qf).to(p.q.scalar_type());
  esum.addcmul_(ppos, lpos - lse);
  // dL/dT = -(1/T) sum_i sum_c dL/dl_ic l_ic = -(1/T) sum_i (coef_i E_i + h_i lse_i + g_i loss_i), with
  // E_i = sum_c p_ic (l_ic - lse_i) (minus p's entropy). Centering at lse avoids the cancellation of sum_c p l
  // against lse - loss (both ~ l_max ~ 1/T), which cost fp32 accuracy at small T.
  const at::Tensor dt = ((coef * esum + h * lse + g * loss).sum() * (-p.inv_t)).to(temperature.scalar_type());
  return {dq.to(p.q.scalar_type()), dk, dbank, dt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> infonce_bank_loss_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                     const at::Tensor& bank,
                                                                     const at::Tensor& temperature,
                                                                     double label_smoothing,
                                                                     const std::optional<at::Tensor>& exclude) {
  at::AutoDispatchBelowADInplaceOrView guard;  // the tile GEMMs (mm_out) are internal, never differentiated
  const Problem p = make_forward(q, k, bank, temperature, label_smoothing, exclude);
  return forward_cpu(p, /*with_positive=*/true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> infonce_bank_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& bank, const at::Tensor& temperature, double label_smoothing,
    const std::optional<at::Tensor>& exclude, const at::Tensor& lse, const at::Tensor& loss, bool bank_grad) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const Problem p = make_backward(grad_loss, grad_lse, q, k, bank, temperature, label_smoothing, exclude, lse, loss);
  return backward_cpu(p, grad_loss, grad_lse, lse, loss, bank_grad, temperature, /*with_positive=*/true);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const Problem& p, bool with_positive) {
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.q.scalar_type(), "infonce_bank_cpu_forward",
                                  [&] { out = forward<scalar_t>(p, with_positive); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const Problem& p, const at::Tensor& grad_loss, const at::Tensor& grad_lse, const at::Tensor& lse,
    const at::Tensor& loss, bool bank_grad, const at::Tensor& temperature, bool with_positive) {
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.q.scalar_type(), "infonce_bank_cpu_backward", [&] {
    out = backward<scalar_t>(p, grad_loss, grad_lse, lse, loss, bank_grad, temperature, with_positive);
  });
  return out;
}

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("infonce_bank_loss", &infonce_bank_loss_cpu);
  m.impl("infonce_bank_loss_backward", &infonce_bank_loss_backward_cpu);
}

}  // namespace vkernels::infonce_bank_loss
