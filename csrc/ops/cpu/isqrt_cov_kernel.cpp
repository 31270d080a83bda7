// isqrt_cov on CPU, one image at a time in cache-resident per-thread scratch (parallel over images when B >= threads,
// each GEMM single-threaded; else images in turn with MKL's threads inside each GEMM). GEMMs go to at::mm_out /
// at::addmm_out (MKL; fp32 accumulation, fp64 for fp64 inputs) on raw pointers, in place: no per-update copies.
//
// Symmetry. Every Newton-Schulz iterate Y_k, Z_k, P_k = Z_{k-1} Y_{k-1}, T_k is a polynomial in A (symmetric), so
// they are symmetric and commute. Products known to be symmetric are computed as their upper block triangle only
// (row blocks of 64: row block r multiplies columns r0..C; 10/16 of the FLOPs at C = 256) and mirrored. The
// elementwise step T = (3I - ZY)/2 is folded into the GEMMs' alpha/beta (Y T = 1.5 Y - 0.5 Y P, T Z = 1.5 Z - 0.5 P Z).
// The backward symmetrises the incoming gradient first: the adjoint of a matrix function of a symmetric A commutes
// with transposition, and A's gradient is symmetrised anyway (A = Xc Xc^T / (M t)), so the result is the same; with a
// symmetric gradient every adjoint stays symmetric and one step back through iteration k is
//   gY' = 1.5 gY - 0.5 (gY P + (gY P)^T) - 0.5 Z (gZ Z),   gZ' = 1.5 gZ - 0.5 (gZ P + (gZ P)^T) - 0.5 Y (gY Y):
// four full GEMMs and two upper-triangle ones (the last iteration, gZ = 0: one full + one full + one triangle).
//
// Work per image (N = iters, C x C GEMM = 2 C^3 FLOPs, s = triangle fraction, 10/16 at C = 256): forward covariance
// s 2 C^2 HW + (3N - 1) s GEMMs; backward recomputes 3N - 4 triangle GEMMs (the forward keeps only A and t), runs
// 2 + s + (N - 2)(4 + 2s) + 1 GEMMs back, and dX = S Xc (2 C^2 HW). Elementwise passes read/write O(C^2) fp32 per
// image in cache (4-16 bytes per element); x is read once in the forward and twice in the backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "ops/isqrt_cov.h"

namespace vkernels::isqrt_cov {
namespace {

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// Rows per block of an upper-triangle product: small enough to skip most of the lower triangle, large enough that
// MKL's per-call packing stays cheap.
constexpr int64_t kTriBlock = 64;

template <class T>
at::Tensor mat(const T* p, int64_t m, int64_t n, int64_t s0, int64_t s1, const at::TensorOptions& opt) {
  return at::from_blob(const_cast<T*>(p), {m, n}, {s0, s1}, opt);
}

// Row-major C x C (or C x n with ldc) products on raw pointers; at::addmm_out in place (self == out) reads beta C.
template <class T>
struct Mm {
  int64_t C;
  at::TensorOptions opt;

  // c (m x n, ldc) = beta c + alpha a b, a (m x k, lda, or transposed), b (k x n, ldb, or transposed).
  void gemm(T* c, const T* a, const T* b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
            double alpha, double beta, bool ta = false, bool tb = false) const {
    at::Tensor out = mat(c, m, n, ldc, 1, opt);
    const at::Tensor am = ta ? mat(a, m, k, 1, lda, opt) : mat(a, m, k, lda, 1, opt);
    const at::Tensor bm = tb ? mat(b, k, n, 1, ldb, opt) : mat(b, k, n, ldb, 1, opt);
    if (beta == 0.0 && alpha == 1.0) {
      at::mm_out(out, am, bm);
    } else {
      at::addmm_out(out, out, am, bm, beta, alpha);
    }
  }
  // Full C x C: c = beta c + alpha a b.
  void full(T* c, const T* a, const T* b, double alpha = 1.0, double beta = 0.0) const {
    gemm(c, a, b, C, C, C, C, C, C, alpha, beta);
  }
  // c = beta c + alpha a b for a product known to be symmetric (c symmetric on entry when beta != 0): the upper
  // block triangle only, then mirrored. With k/lda/tb: a (C x k), b (k x C) for the covariance (b = a^T).
  void sym(T* c, const T* a, const T* b, double alpha = 1.0, double beta = 0.0, int64_t k = -1, int64_t lda = -1,
           int64_t ldb = -1, bool tb = false) const {
    if (k < 0) k = lda = ldb = C;
    for (int64_t r0 = 0; r0 < C; r0 += kTriBlock) {
      const int64_t m = std::min(kTriBlock, C - r0);
      gemm(c + r0 * C + r0, a + r0 * lda, tb ? b + r0 * ldb : b + r0, m, C - r0, k, lda, ldb, C, alpha, beta, false,
           tb);
    }
    mirror(c);
  }
  // Lower triangle := upper triangle, in 32 x 32 tiles.
  void mirror(T* c) const {
    constexpr int64_t t = 32;
    for (int64_t i0 = 0; i0 < C; i0 += t)
      for (int64_t j0 = i0; j0 < C; j0 += t)
        for (int64_t i = i0; i < std::min(i0 + t, C); ++i)
          for (int64_t j = std::max(j0, i + 1); j < std::min(j0 + t, C); ++j) c[j * C + i] = c[i * C + j];
  }
};

// d = a s + b (q + q^T) (+ e u when u), all C x C; d may alias s.
template <class T>
void sym_combine(T* d, const T* s, T a, const T* q, T b, const T* u, T e, int64_t C) {
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = i; j < C; ++j) {
      T v = (s ? a * s[i * C + j] : T(0)) + b * (q[i * C + j] + q[j * C + i]);
      if (u) v += e * u[i * C + j];
      d[i * C + j] = v;
      d[j * C + i] = v;
    }
}

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t e = 0; e < n; ++e) s += a[e] * b[e];
  return s;
}

// Xc = X_b - its row means (C x M).
template <class T>
void center(const T* X, T* xc, int64_t C, int64_t M) {
  for (int64_t i = 0; i < C; ++i) {
    const T* r = X + i * M;
    T s = 0;
    for (int64_t m = 0; m < M; ++m) s += r[m];
    const T mu = s / T(M);
    for (int64_t m = 0; m < M; ++m) xc[i * M + m] = r[m] - mu;
  }
}

// Runs f(b, scratch) for every image: over threads when B >= threads, else in turn (MKL threads inside the GEMMs).
template <class T, class F>
void per_image(int64_t B, int64_t slot, const at::TensorOptions& opt, F&& f) {
  const bool over_images = B >= at::get_num_threads() && !at::in_parallel_region();
  at::Tensor scratch = at::empty({over_images ? at::get_num_threads() : 1, slot}, opt);
  T* sc = scratch.mutable_data_ptr<T>();
  if (over_images) {
    const at::ThreadLocalState tls;  // the caller's dispatch state (inference mode etc.) for the workers' GEMMs
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      at::ThreadLocalStateGuard guard(tls);
      T* mine = sc + at::get_thread_num() * slot;
      for (int64_t b = b0; b < b1; ++b) f(b, mine);
    });
  } else {
    for (int64_t b = 0; b < B; ++b) f(b, sc);
  }
}

// Centered covariance -> A = G / (M t) (written to a), returns t = max(tr G / M, floor).
template <class T>
T normalised_cov(const Mm<T>& mm, const T* X, T* xc, T* a, int64_t C, int64_t M) {
  center(X, xc, C, M);
  mm.sym(a, xc, xc, 1.0, 0.0, M, M, M, true);
  T tr = 0;
  for (int64_t i = 0; i < C; ++i) tr += a[i * C + i];
  tr = std::max(tr / T(M), T(kTraceFloor));
  const T s = T(1) / (tr * T(M));
  for (int64_t e = 0; e < C * C; ++e) a[e] *= s;
  return tr;
}

// Newton-Schulz from A. Writes Y_1..Y_{n} into ys[0..n-1] (n = last), Z_1..Z_{zn} into zs, P_2..P_{pn} into ps,
// where each array may be a ring of 2 (stride 0 for "keep only the latest two" is handled by the caller's pointers).
// Y_k = 1.5 Y_{k-1} - 0.5 Y_{k-1} P_k, Z_k = 1.5 Z_{k-1} - 0.5 P_k Z_{k-1}, P_k = Z_{k-1} Y_{k-1}.
template <class T>
void zinit(T* z, const T* a, int64_t C) {
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < C; ++j) z[i * C + j] = (i == j ? T(1.5) : T(0)) - T(0.5) * a[i * C + j];
}

template <class scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const Problem& p) {
  using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t B = p.B, C = p.C, P = p.P, M = p.M, N = p.iters, CC = C * C;
  const auto acc = acc_type(p.x.scalar_type());
  const at::Tensor X = p.x.reshape({B, C, M}).to(acc).contiguous();
  at::Tensor A = at::empty({B, C, C}, X.options());
  at::Tensor t = at::empty({B}, X.options());
  at::Tensor out = p.triu ? at::empty({B, P}, p.x.options()) : at::empty({B, C, C}, p.x.options());
  if (B == 0) return {out, A, t};
  const T* xp = X.const_data_ptr<T>();
  T* ap = A.mutable_data_ptr<T>();
  T* tp = t.mutable_data_ptr<T>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const Mm<T> mm{C, X.options()};
  // scratch: Xc, Y, Yn, Z, Zn, P
  per_image<T>(B, C * M + 5 * CC, X.options(), [&](int64_t b, T* s) {
    T *xc = s, *y = xc + C * M, *yn = y + CC, *z = yn + CC, *zn = z + CC, *pk = zn + CC;
    T* a = ap + b * CC;
    const T tr = normalised_cov(mm, xp + b * C * M, xc, a, C, M);
    tp[b] = tr;
    std::copy(a, a + CC, y);
    mm.sym(y, a, a, -0.5, 1.5);  // Y_1 = 1.5 A - 0.5 A A
    if (N >= 2) zinit(z, a, C);  // Z_1 = 1.5 I - 0.5 A
    for (int64_t k = 2; k <= N; ++k) {
      mm.sym(pk, z, y);
      std::copy(y, y + CC, yn);
      mm.sym(yn, y, pk, -0.5, 1.5);
      if (k < N) {
        std::copy(z, z + CC, zn);
        mm.sym(zn, pk, z, -0.5, 1.5);
        std::swap(z, zn);
      }
      std::swap(y, yn);
    }
    const T st = std::sqrt(tr);
    scalar_t* o = op + b * P;
    for (int64_t i = 0; i < C; ++i) {
      const int64_t j0 = p.triu ? i : 0;
      scalar_t* orow = o + (p.triu ? triu_index(i, i, C) : i * C) - j0;
      for (int64_t j = j0; j < C; ++j) orow[j] = scalar_t(y[i * C + j] * st);
    }
  });
  return {out, A, t};
}

template <class scalar_t>
at::Tensor backward(const Problem& p, const at::Tensor& grad_out, const at::Tensor& A, const at::Tensor& t) {
  using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t B = p.B, C = p.C, P = p.P, M = p.M, N = p.iters, CC = C * C;
  const auto acc = acc_type(p.x.scalar_type());
  const at::Tensor X = p.x.reshape({B, C, M}).to(acc).contiguous();
  const at::Tensor g = grad_out.contiguous();
  at::Tensor gx = at::empty({B, C, M}, X.options());
  if (B == 0) return gx.view(p.x.sizes()).to(p.x.scalar_type());
  const T* xp = X.const_data_ptr<T>();
  const T* ap = A.const_data_ptr<T>();
  const T* tp = t.const_data_ptr<T>();
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  T* gxp = gx.mutable_data_ptr<T>();
  const Mm<T> mm{C, X.options()};
  // scratch: Xc, Y_1..Y_{N-1}, Z_1..Z_{N-1}, P_2..P_N, gY, gZ, gYn, gZn, W1, W2
  const int64_t nk = std::max<int64_t>(N - 1, 0);
  per_image<T>(B, C * M + (3 * nk + 6) * CC, X.options(), [&](int64_t b, T* s) {
    T* xc = s;
    T* ys = xc + C * M;      // ys[(k-1) CC] = Y_k, k = 1..N-1
    T* zs = ys + nk * CC;    // Z_k
    T* ps = zs + nk * CC;    // ps[(k-2) CC] = P_k, k = 2..N
    T *gy = ps + nk * CC, *gz = gy + CC, *gyn = gz + CC, *gzn = gyn + CC, *w1 = gzn + CC, *w2 = w1 + CC;
    const T* a = ap + b * CC;
    auto Yk = [&](int64_t k) -> const T* { return k == 0 ? a : ys + (k - 1) * CC; };
    // Recompute the iterates.
    if (N >= 2) {
      T* y1 = ys;
      std::copy(a, a + CC, y1);
      mm.sym(y1, a, a, -0.5, 1.5);
      zinit(zs, a, C);
      for (int64_t k = 2; k <= N; ++k) {
        T* pk = ps + (k - 2) * CC;
        mm.sym(pk, zs + (k - 2) * CC, ys + (k - 2) * CC);
        if (k < N) {
          T *yk = ys + (k - 1) * CC, *zk = zs + (k - 1) * CC;
          const T *yp = ys + (k - 2) * CC, *zp = zs + (k - 2) * CC;
          std::copy(yp, yp + CC, yk);
          mm.sym(yk, yp, pk, -0.5, 1.5);
          std::copy(zp, zp + CC, zk);
          mm.sym(zk, pk, zp, -0.5, 1.5);
        }
      }
    }
    // gY_N = sqrt(t) sym(unpack(g)).
    const T tb = tp[b], st = std::sqrt(tb);
    const scalar_t* gb = gp + b * P;
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = i; j < C; ++j) {
        T v;
        if (p.triu) {
          v = i == j ? T(gb[triu_index(i, i, C)]) : T(0.5) * T(gb[triu_index(i, j, C)]);
        } else {
          v = T(0.5) * (T(gb[i * C + j]) + T(gb[j * C + i]));
        }
        gy[i * C + j] = v * st;
        gy[j * C + i] = v * st;
      }
    // <gY_N, Y_N> (the trace's gradient through sqrt(t)) from Y_N = 1.5 Y_{N-1} - 0.5 Y_{N-1} P_N:
    // <gY, Y P> = <gY P, Y> for symmetric Y, P; gY P is the first GEMM of the step back anyway.
    const T* PN = N >= 2 ? ps + (N - 2) * CC : a;  // P_1 = Z_0 Y_0 = A
    const T* YN1 = Yk(N - 1);
    mm.full(w1, gy, PN);
    const T aux = (T(1.5) * dot(gy, YN1, CC) - T(0.5) * dot(w1, YN1, CC)) / st;
    bool have_gz = false;
    for (int64_t k = N; k >= 2; --k) {
      const T *Y = Yk(k - 1), *Z = zs + (k - 2) * CC, *Pk = ps + (k - 2) * CC;
      if (k < N) mm.full(w1, gy, Pk);  // k == N: computed above
      if (have_gz) {
        mm.full(w2, gz, Pk);
        sym_combine(gzn, gz, T(1.5), w2, T(-0.5), static_cast<const T*>(nullptr), T(0), C);
        sym_combine(gyn, gy, T(1.5), w1, T(-0.5), static_cast<const T*>(nullptr), T(0), C);
        mm.full(w1, gz, Z);
        mm.sym(gyn, Z, w1, -0.5, 1.0);  // - 0.5 Z gZ Z
      } else {
        sym_combine(gyn, gy, T(1.5), w1, T(-0.5), static_cast<const T*>(nullptr), T(0), C);
        std::fill(gzn, gzn + CC, T(0));
      }
      mm.full(w2, gy, Y);
      mm.sym(gzn, Y, w2, -0.5, 1.0);  // - 0.5 Y gY Y
      std::swap(gy, gyn);
      std::swap(gz, gzn);
      have_gz = true;
    }
    // Iteration 1 (Y_0 = P_1 = A, Z_0 = I): gA = 1.5 gY - 0.5 (gY A + A gY) - 0.5 gZ_1.
    if (N >= 2) mm.full(w1, gy, a);  // N == 1: w1 = gY A already
    T* ga = gyn;
    sym_combine(ga, gy, T(1.5), w1, T(-0.5), have_gz ? static_cast<const T*>(gz) : nullptr, T(-0.5), C);
    // A = Sigma / t, t = tr Sigma, Sigma = Xc Xc^T / M (gA symmetric):
    // S = gSigma + gSigma^T = 2 gA / t + 2 (aux / (2 sqrt t) - <gA, A> / t) I, and dX = S Xc / M.
    const T d = dot(ga, a, CC);
    const T inv_m = T(1) / T(M);
    const T diag = T(2) * (aux / (T(2) * st) - d / tb) * inv_m, off = T(2) * inv_m / tb;
    for (int64_t e = 0; e < CC; ++e) ga[e] *= off;
    for (int64_t i = 0; i < C; ++i) ga[i * C + i] += diag;
    center(xp + b * C * M, xc, C, M);
    mm.gemm(gxp + b * C * M, ga, xc, C, M, C, C, M, M, 1.0, 0.0);
  });
  return gx.view(p.x.sizes()).to(p.x.scalar_type());
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
