// isqrt_cov on CPU. GEMMs go to at::bmm / at::baddbmm (accumulation in fp32, fp64 for fp64 inputs); the
// Newton-Schulz elementwise step T = (3I - ZY)/2 is folded into the GEMMs' alpha/beta (Y T = 1.5 Y - 0.5 Y P,
// T Z = 1.5 Z - 0.5 P Z with P = Z Y), so it costs no pass of its own. The C++ loops here fuse what is left:
// trace + normalisation + the first iterate Z_1 in one pass over the Gram matrix; post-compensation + triu packing +
// cast in one pass; and in the backward the triu unpacking + the trace-gradient term, and the symmetrisation + the
// trace-normalisation gradient.
//
// Work per image: covariance 2 C^2 HW FLOPs; forward Newton-Schulz 3 iters - 1 C x C GEMMs (2 C^3 FLOPs each,
// the first is A A); backward recomputes the iterates (3 iters - 4 GEMMs) and runs 6 per iteration back, plus the
// final dX = S Xc (2 C^2 HW). Elementwise passes: each reads/writes O(C^2) fp32 per image (~4-12 bytes per element).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "ops/isqrt_cov.h"

namespace vkernels::isqrt_cov {
namespace {

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// X - mean over the HW locations, in the accumulation dtype: Ibar applied without an M x M matrix.
at::Tensor centered(const Problem& p) {
  at::Tensor X = p.x.reshape({p.B, p.C, p.M}).to(acc_type(p.x.scalar_type()));
  return X - X.mean(2, true);
}

// G (B, C, C) raw Gram of Xc -> A = G / (M t) in place, t = max(tr(G) / M, floor); Z1 = 1.5 I - 0.5 A when wanted.
template <class acc_t>
at::Tensor normalise(at::Tensor& G, at::Tensor* Z1, int64_t M) {
  const int64_t B = G.size(0), C = G.size(1);
  at::Tensor t = at::empty({B}, G.options());
  acc_t* g = G.mutable_data_ptr<acc_t>();
  acc_t* tp = t.mutable_data_ptr<acc_t>();
  acc_t* z = Z1 ? Z1->mutable_data_ptr<acc_t>() : nullptr;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      acc_t* gb = g + b * C * C;
      acc_t tr = 0;
      for (int64_t i = 0; i < C; ++i) tr += gb[i * C + i];
      tr = std::max(tr / acc_t(M), acc_t(kTraceFloor));
      tp[b] = tr;
      const acc_t s = acc_t(1) / (tr * acc_t(M));
      for (int64_t i = 0; i < C; ++i)
        for (int64_t j = 0; j < C; ++j) {
          const acc_t a = gb[i * C + j] * s;
          gb[i * C + j] = a;
          if (z) z[(b * C + i) * C + j] = (i == j ? acc_t(1.5) : acc_t(0)) - acc_t(0.5) * a;
        }
    }
  });
  return t;
}

// The Newton-Schulz iterates. Returns Y_iters; with `keep`, also Y_k, Z_k (k < iters) and P_k = Z_{k-1} Y_{k-1}.
template <class acc_t>
at::Tensor newton_schulz(const at::Tensor& A, const at::Tensor& Z1, int64_t iters, std::vector<at::Tensor>* Ys,
                         std::vector<at::Tensor>* Zs, std::vector<at::Tensor>* Ps) {
  at::Tensor Y = at::baddbmm(A, A, A, 1.5, -0.5);  // Y_1 = A T_1 = 1.5 A - 0.5 A A
  at::Tensor Z = Z1;
  for (int64_t k = 2; k <= iters; ++k) {
    at::Tensor P = at::bmm(Z, Y);
    if (Ys) {
      Ys->push_back(Y);
      Zs->push_back(Z);
      Ps->push_back(P);
    }
    at::Tensor Yn = at::baddbmm(Y, Y, P, 1.5, -0.5);
    if (k < iters) Z = at::baddbmm(Z, P, Z, 1.5, -0.5);
    Y = Yn;
  }
  return Y;
}

template <class scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const Problem& p) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t B = p.B, C = p.C, P = p.P;
  const at::Tensor Xc = centered(p);
  at::Tensor A = at::bmm(Xc, Xc.transpose(1, 2));
  at::Tensor Z1 = p.iters >= 2 ? at::empty_like(A) : at::Tensor();
  at::Tensor t = normalise<acc_t>(A, p.iters >= 2 ? &Z1 : nullptr, p.M);
  const at::Tensor Y = newton_schulz<acc_t>(A, Z1, p.iters, nullptr, nullptr, nullptr).contiguous();
  at::Tensor out = p.triu ? at::empty({B, P}, p.x.options()) : at::empty({B, C, C}, p.x.options());
  const acc_t* y = Y.const_data_ptr<acc_t>();
  const acc_t* tp = t.const_data_ptr<acc_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * C, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / C, i = r % C, j0 = p.triu ? i : 0;
      const acc_t s = std::sqrt(tp[b]);
      scalar_t* orow = o + b * P + (p.triu ? triu_index(i, i, C) : i * C) - j0;
      for (int64_t j = j0; j < C; ++j) orow[j] = scalar_t(y[r * C + j] * s);
    }
  });
  return {out, A, t};
}

template <class scalar_t>
at::Tensor backward(const Problem& p, const at::Tensor& grad_out, const at::Tensor& A, const at::Tensor& t) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t B = p.B, C = p.C, P = p.P, N = p.iters;
  // Recompute the iterates (the forward kept only A and t).
  at::Tensor Z1 = N >= 2 ? at::empty_like(A) : at::Tensor();
  if (N >= 2) {
    Z1 = A * -0.5;
    Z1.diagonal(0, 1, 2).add_(1.5);
  }
  std::vector<at::Tensor> Ys, Zs, Ps;
  const at::Tensor YN = newton_schulz<acc_t>(A, Z1, N, &Ys, &Zs, &Ps).contiguous();
  // gY_N = sqrt(t) unpack(grad_out); d loss / d t from the post-compensation: <grad, Y_N> / (2 sqrt t).
  const at::Tensor g = grad_out.to(A.scalar_type()).contiguous();
  at::Tensor gY = at::empty({B, C, C}, A.options());
  std::vector<acc_t> aux_rows(B * C);
  {
    const acc_t* gp = g.const_data_ptr<acc_t>();
    const acc_t* y = YN.const_data_ptr<acc_t>();
    const acc_t* tp = t.const_data_ptr<acc_t>();
    acc_t* gy = gY.mutable_data_ptr<acc_t>();
    at::parallel_for(0, B * C, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / C, i = r % C;
        const acc_t s = std::sqrt(tp[b]);
        const acc_t* grow = gp + b * P + (p.triu ? triu_index(i, i, C) - i : i * C);
        acc_t dot = 0;
        for (int64_t j = 0; j < C; ++j) {
          const acc_t gv = (p.triu && j < i) ? acc_t(0) : grow[j];
          dot += gv * y[r * C + j];
          gy[r * C + j] = gv * s;
        }
        aux_rows[r] = dot;
      }
    });
  }
  // Back through iterations N..2 (Y, Z, P = Y_{k-1}, Z_{k-1}, Z_{k-1} Y_{k-1}); gZ_N = 0.
  at::Tensor gZ;
  for (int64_t k = N; k >= 2; --k) {
    const at::Tensor &Y = Ys[k - 2], &Z = Zs[k - 2], &Pk = Ps[k - 2];
    at::Tensor gT = at::bmm(Y, gY);
    if (gZ.defined()) gT.baddbmm_(gZ, Z);
    at::Tensor gYn = at::baddbmm(gY, gY, Pk, 1.5, -0.5).baddbmm_(Z, gT, 1.0, -0.5);
    at::Tensor gZn = gZ.defined() ? at::baddbmm(gZ, Pk, gZ, 1.5, -0.5).baddbmm_(gT, Y, 1.0, -0.5)
                                  : at::bmm(gT, Y).mul_(-0.5);
    gY = gYn;
    gZ = gZn;
  }
  // Iteration 1 (Z_0 = I, Y_0 = P_1 = A): gA = gY T_1 - 0.5 gT, gT = A gY + gZ_1.
  at::Tensor gT = gZ.defined() ? at::baddbmm(gZ, A, gY) : at::bmm(A, gY);
  at::Tensor gA = at::baddbmm(gY, gY, A, 1.5, -0.5).add_(gT, -0.5).contiguous();
  // A = Sigma / t, t = tr Sigma, Sigma = Xc Xc^T / M:
  // S = gSigma + gSigma^T = (gA + gA^T) / t + 2 (aux - <gA, A> / t) I, and dX = S Xc / M.
  at::Tensor S = at::empty_like(gA);
  {
    const acc_t* ga = gA.const_data_ptr<acc_t>();
    const acc_t* a = A.const_data_ptr<acc_t>();
    const acc_t* tp = t.const_data_ptr<acc_t>();
    acc_t* sp = S.mutable_data_ptr<acc_t>();
    const acc_t inv_m = acc_t(1) / acc_t(p.M);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* gb = ga + b * C * C;
        const acc_t* ab = a + b * C * C;
        acc_t d = 0, aux = 0;
        for (int64_t e = 0; e < C * C; ++e) d += gb[e] * ab[e];
        for (int64_t i = 0; i < C; ++i) aux += aux_rows[b * C + i];
        const acc_t tb = tp[b], st = std::sqrt(tb);
        const acc_t diag = 2 * (aux / (2 * st) - d / tb) * inv_m, off = inv_m / tb;
        for (int64_t i = 0; i < C; ++i)
          for (int64_t j = 0; j < C; ++j)
            sp[(b * C + i) * C + j] = (gb[i * C + j] + gb[j * C + i]) * off + (i == j ? diag : acc_t(0));
      }
    });
  }
  return at::bmm(S, centered(p)).view(p.x.sizes()).to(p.x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> isqrt_cov_cpu(const at::Tensor& x, int64_t iters, bool triu) {
  const Problem p = make_problem("isqrt_cov", x, iters, triu);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "isqrt_cov_cpu",
                                  [&] { r = forward<scalar_t>(p); });
  return r;
}

at::Tensor isqrt_cov_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& A,
                                  const at::Tensor& trace, int64_t iters, bool triu) {
  const Problem p = make_problem("isqrt_cov_backward", x, iters, triu);
  const auto acc = acc_type(x.scalar_type());
  if (triu) {
    TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == p.B && grad_out.size(1) == p.P,
                "isqrt_cov_backward: grad_out must have shape [", p.B, ", ", p.P, "], got ", grad_out.sizes());
  } else {
    TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == p.B && grad_out.size(1) == p.C &&
                    grad_out.size(2) == p.C,
                "isqrt_cov_backward: grad_out must have shape [", p.B, ", ", p.C, ", ", p.C, "], got ",
                grad_out.sizes());
  }
  TORCH_CHECK(A.dim() == 3 && A.size(0) == p.B && A.size(1) == p.C && A.size(2) == p.C && A.scalar_type() == acc,
              "isqrt_cov_backward: A must be the forward's [", p.B, ", ", p.C, ", ", p.C, "] ", acc, " tensor, got ",
              A.sizes(), " ", A.scalar_type());
  TORCH_CHECK(trace.dim() == 1 && trace.size(0) == p.B && trace.scalar_type() == acc,
              "isqrt_cov_backward: trace must be the forward's [", p.B, "] ", acc, " tensor, got ", trace.sizes(),
              " ", trace.scalar_type());
  at::Tensor r;
  const at::Tensor Ac = A.contiguous(), tc = trace.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "isqrt_cov_backward_cpu",
                                  [&] { r = backward<scalar_t>(p, grad_out, Ac, tc); });
  return r;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("isqrt_cov", &isqrt_cov_cpu);
  m.impl("isqrt_cov_backward", &isqrt_cov_backward_cpu);
}

}  // namespace vkernels::isqrt_cov
