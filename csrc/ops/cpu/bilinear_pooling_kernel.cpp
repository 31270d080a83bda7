// bilinear_pooling on CPU, fused per image: the Gram GEMM (at::mm_out, i.e. MKL; fp32 / fp64 accumulation) writes
// one block of 64 rows at a time into a small tile (<= 1 MB, L2 resident); the epilogue takes the tile straight into
// the output (signed square root and the row's sum of squares in the same pass; the upper triangle gathered with
// triu). When y is x only the upper row blocks are multiplied and only the upper triangle is written in the block
// pass; once the norm is known, one pass over 8 x 8 tiles of the upper triangle scales each in place and writes its
// transpose into the lower triangle. No (B, C1, C2) tensor is ever allocated; the forward keeps only the per-image
// norm (B values) for the backward, which reads out and the norm.
//
// Work: when y is x the GEMM computes only each row block's upper part (columns j >= the block's first row):
// ~C^2 HW (1 + bs / C) FLOPs per image instead of 2 C^2 HW, i.e. a little over half the batched GEMM that the
// benchmark's floor measures; else 2 C1 C2 HW. Epilogue per pooled element: ~6 FLOPs, 4 bytes written by the GEMM
// into the tile (cache), out written once and re-read/written once (from L3 where an image's output fits).
// Backward per image: one pass over (g, out) for <out, g>, then, when y is x with the full output, strips of 256 rows
// of dG + dG^T (built from g, a transposed strip of g and out, in cache) each multiplied straight into their rows of
// dX; otherwise the epilogue's derivative into a per-thread C1 x C2 buffer, then one GEMM dX = dG Y (and
// dY = dG^T X). Per-thread buffers only.
// Parallel over images when B >= threads (each GEMM single-threaded, one parallel region per call), else over
// (image, row block) items of groups of images, or rows inside the backward's image. Sums of squares are per row,
// reduced in row order either way.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "ops/bilinear_pooling.h"

namespace vkernels::bilinear_pooling {
namespace {

using at::vec::Vectorized;

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor as_mat(const at::Tensor& t, at::ScalarType acc) {
  return t.reshape({t.size(0), t.size(1), t.size(2) * t.size(3)}).to(acc).contiguous();
}

// Rows of the Gram matrix per GEMM call: a tile of <= 1 MB (64 rows at C2 = 2048: 512 KB, L2 resident while the
// epilogue reads it). Measured single-threaded at C = 2048 / HW = 196 and C = 512 / HW = 784 (upper row blocks of
// the symmetric case): 64 rows beat 128 and 256 by 10-25 % (the tile stays in L2) and 32 (more calls). Smaller blocks
// also balance the threads better. Depends only on C2, never on the thread count.
int64_t block_rows(int64_t C1, int64_t C2) {
  return std::min(C1, std::clamp<int64_t>(262144 / std::max<int64_t>(C2, 1), 16, 64));
}

// Leading dimension of a tile of n columns: a row stride that is a multiple of 2 KB puts a column's values in the
// same few L1 sets (the mirror reads the tile column-wise), so pad by one cache line then.
template <class T>
int64_t tile_ld(int64_t n) {
  int64_t ld = (n + 15) / 16 * 16;
  if ((ld * int64_t(sizeof(T))) % 2048 == 0) ld += 64 / int64_t(sizeof(T));
  return ld;
}

// Images per group: consecutive images whose fp32 outputs fit in ~12 MB stay in L3 between the block pass that
// writes them and the scaling pass that re-reads them.
int64_t group_images(int64_t B, int64_t P, int64_t elem) {
  return std::clamp<int64_t>((int64_t(12) << 20) / std::max<int64_t>(P * elem, 1), 1, std::clamp<int64_t>(B, 1, 64));
}

// The q-th row block of an image in work order: 0, nb-1, 1, nb-2, ... so that any contiguous run of work items (the
// static split of at::parallel_for) mixes long and short upper-triangle blocks.
inline int64_t zigzag(int64_t q, int64_t nb) { return (q % 2 == 0) ? q / 2 : nb - 1 - q / 2; }

// Row-major C (m x n, ldc) = A B^T with A (m x k, lda) and B (n x k, ldb), through at::mm_out (MKL; single-threaded
// when called inside at::parallel_for). Raw pointers wrapped without copies.
template <class T>
void gemm_abt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
              const at::TensorOptions& opt) {
  const at::Tensor A = at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opt);
  const at::Tensor Bt = at::from_blob(const_cast<T*>(b), {k, n}, {1, ldb}, opt);
  at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opt);
  at::mm_out(C, A, Bt);
}

// Row-major C (m x n) = op(A) B with A (m x k, lda) or, with trans_a, A (k x m, lda); B (k x n, ldb).
template <class T>
void gemm_ab(bool trans_a, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
             int64_t ldc, const at::TensorOptions& opt) {
  const at::Tensor A = trans_a ? at::from_blob(const_cast<T*>(a), {m, k}, {1, lda}, opt)
                               : at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opt);
  const at::Tensor Bm = at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opt);
  at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opt);
  at::mm_out(C, A, Bm);
}

template <class acc_t>
inline acc_t signed_sqrt(acc_t z, acc_t eps) {
  // sign(0) = 0, as torch.sign: an exact zero stays zero.
  return z == acc_t(0) ? acc_t(0) : std::copysign(std::sqrt(std::abs(z) + eps), z);
}

// d[0:n) = signed_sqrt(v[0:n)) (or v itself without normalisation); returns the sum of d^2. Vectorised; the lane
// partial sums are reduced in a fixed order, so the result depends only on n and the data.
template <class acc_t>
acc_t row_epilogue(const acc_t* v, acc_t* d, int64_t n, acc_t scale, acc_t eps, bool normalize) {
  using Vec = Vectorized<acc_t>;
  const Vec vscale(scale);
  int64_t j = 0;
  if (!normalize) {
    for (; j + Vec::size() <= n; j += Vec::size()) (Vec::loadu(v + j) * vscale).store(d + j);
    for (; j < n; ++j) d[j] = v[j] * scale;
    return acc_t(0);
  }
  const Vec zero(acc_t(0)), veps(eps), sign_mask(acc_t(-0.0));
  Vec acc(acc_t(0));
  for (; j + Vec::size() <= n; j += Vec::size()) {
    const Vec z = Vec::loadu(v + j) * vscale;
    const Vec mag = z.abs() + veps;                      // |z| + eps = s^2
    const Vec nz = z != zero;                            // all-ones lanes where z != 0
    const Vec s = (mag.sqrt() | (z & sign_mask)) & nz;   // copysign, then 0 where z == 0
    s.store(d + j);
    acc = acc + (mag & nz);
  }
  acc_t lanes[Vec::size()];
  acc.store(lanes);
  acc_t ss = 0;
  for (int64_t l = 0; l < Vec::size(); ++l) ss += lanes[l];
  for (; j < n; ++j) {
    const acc_t z = v[j] * scale;
    d[j] = signed_sqrt(z, eps);
    ss += z == acc_t(0) ? acc_t(0) : std::abs(z) + eps;
  }
  return ss;
}

// Everything the blocks need. dst(b): where image b's s (or z) goes before scaling — its output row itself when out
// has the accumulation dtype, else a per-group fp32 staging buffer of P values per image.
template <class scalar_t, class acc_t>
struct Fwd {
  const Problem& p;
  const acc_t* X;
  const acc_t* Y;
  int64_t bs;
  at::TensorOptions opt;

  // Rows [i0, i1) of image b: GEMM into tile (row stride ld), epilogue, into dst; ss_rows[i - i0] = row i's sum of
  // s^2 as it appears in the output (twice for the mirrored off-diagonal part when y is x and the output is full).
  void block(int64_t b, int64_t i0, int64_t i1, acc_t* tile, acc_t* dst, acc_t* ss_rows) const {
    const int64_t C1 = p.C1, C2 = p.C2, M = p.M, m = i1 - i0;
    const int64_t j0 = p.sym ? i0 : 0, n = C2 - j0, ld = tile_ld<acc_t>(n);
    const acc_t inv_m = acc_t(1) / acc_t(M), eps = acc_t(p.eps);
    const acc_t* Xb = X + b * C1 * M;
    const acc_t* Yb = (p.sym ? X : Y) + b * C2 * M;
    gemm_abt<acc_t>(m, n, M, Xb + i0 * M, M, Yb + j0 * M, M, tile, ld, opt);
    for (int64_t r = 0; r < m; ++r) {
      const int64_t i = i0 + r;
      const int64_t js = p.sym || p.triu ? i : 0;  // first column kept: the diagonal when y is x or with triu
      acc_t* trow = tile + r * ld + (js - j0);
      acc_t* drow = dst + (p.triu ? triu_index(i, i, C1) : i * C2 + js);
      if (p.sym && !p.triu) {
        // Only the upper part (j >= i) here; the lower one is written after the norm is known
        // (mirror_scale_inplace, or mirror_scaled from the staging buffer).
        const acc_t diag_ss = row_epilogue<acc_t>(trow, drow, 1, inv_m, eps, p.normalize);
        const acc_t rest = row_epilogue<acc_t>(trow + 1, drow + 1, C2 - js - 1, inv_m, eps, p.normalize);
        ss_rows[r] = diag_ss + 2 * rest;
      } else {
        ss_rows[r] = row_epilogue<acc_t>(trow, drow, C2 - js, inv_m, eps, p.normalize);
      }
    }
  }
};

// y is x, full output, staged (out in fp16 / bf16): rows [k0, k1) of one image, o[k, i] = src[i, k] * s for i < k
// (the lower triangle from the upper one). Run after the block pass, while the image's output is still in L3: the rows are written front to back
// (a column strip written from the tile at GEMM time instead missed the cache on every line: 1.2x slower, measured).
// Reads come in 8-row pieces of the column strip, which stay in L1 while k sweeps the block.
template <class scalar_t, class acc_t>
void mirror_scaled(const acc_t* src, scalar_t* o, int64_t C, int64_t k0, int64_t k1, acc_t s) {
  constexpr int64_t W = 8;
  for (int64_t ib = 0; ib < k1 - 1; ib += W)
    for (int64_t k = std::max(k0, ib + 1); k < k1; ++k) {
      const int64_t ie = std::min(ib + W, k);
      scalar_t* orow = o + k * C;
      for (int64_t i = ib; i < ie; ++i) orow[i] = scalar_t(src[i * C + k] * s);
    }
}

// y is x, full output, out in the accumulation dtype: rows [i0, i1) of one image's upper triangle (unscaled s,
// written by the block pass) are scaled in place and written, scaled, into the lower triangle's columns [i0, i1).
// One pass instead of a mirror pass and a scaling pass: the upper rows are read once, both halves written once. 8 x 8
// tiles (AVX2: a register transpose) inside 64 x 64 blocks, so the 64 lower rows a block writes stay in L1.
// Measured at C = 2048 / HW = 196 (B = 4, 2 threads, shared machine): forward 0.93x (median) / 0.85x (min) the time
// of the previous mirror pass + scaling pass; at C = 512 / HW = 784 the same within noise.
// Each upper element belongs to exactly one row range, so row ranges can run on different threads.
template <class acc_t>
void mirror_scale_inplace(acc_t* o, int64_t C, int64_t i0, int64_t i1, acc_t s) {
  constexpr int64_t W = 8, KB = 64;
  auto scalar_tile = [&](int64_t r8, int64_t k8) {
    for (int64_t i = r8; i < std::min(r8 + W, i1); ++i)
      for (int64_t k = std::max(k8, i); k < std::min(k8 + W, C); ++k) {
        const acc_t v = o[i * C + k] * s;
        o[i * C + k] = v;
        o[k * C + i] = v;  // the diagonal (k == i) rewrites itself
      }
  };
  for (int64_t K0 = i0; K0 < C; K0 += KB)
    for (int64_t r8 = i0; r8 < i1; r8 += W)
      for (int64_t k8 = std::max(K0, r8); k8 < std::min(K0 + KB, C); k8 += W) {
#if defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
        if constexpr (std::is_same_v<acc_t, float>) {
          if (k8 > r8 && r8 + W <= i1 && k8 + W <= C) {
            at::vec::VectorizedN<float, 8> t;
            const Vectorized<float> vs(s);
            for (int r = 0; r < 8; ++r) {
              t[r] = Vectorized<float>::loadu(o + (r8 + r) * C + k8) * vs;
              t[r].store(o + (r8 + r) * C + k8);
            }
            at::vec::transpose_block(t);
            for (int r = 0; r < 8; ++r) t[r].store(o + (k8 + r) * C + r8);
            continue;
          }
        }
#endif
        scalar_tile(r8, k8);
      }
}

// o[e] = src[e] * s over [e0, e1) (in place when o aliases src).
template <class scalar_t, class acc_t>
void scale_run(const acc_t* src, scalar_t* o, int64_t n, acc_t s) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using Vec = Vectorized<acc_t>;
    int64_t e = 0;
    for (; e + Vec::size() <= n; e += Vec::size()) (Vec::loadu(src + e) * Vec(s)).store(o + e);
    for (; e < n; ++e) o[e] = src[e] * s;
  } else {
    for (int64_t e = 0; e < n; ++e) o[e] = scalar_t(src[e] * s);
  }
}

template <class scalar_t>
std::tuple<at::Tensor, at::Tensor> forward(const Problem& p) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  constexpr bool same = std::is_same_v<scalar_t, acc_t>;
  const auto acc = acc_type(p.x.scalar_type());
  const at::Tensor X = as_mat(p.x, acc);
  const at::Tensor Y = p.sym ? X : as_mat(p.y, acc);
  at::Tensor out = at::empty({p.B, p.P}, p.x.options());
  at::Tensor nrm = at::empty({p.normalize ? p.B : 0}, X.options());
  if (p.B == 0 || p.P == 0) return {out, nrm};
  const int64_t B = p.B, P = p.P, C1 = p.C1;
  const int64_t bs = block_rows(C1, p.C2);
  const int64_t nb = (C1 + bs - 1) / bs;
  const int64_t tile_n = bs * tile_ld<acc_t>(p.C2);
  // Two ways to spread the work, both with single-threaded GEMMs of the same shapes: whole images per thread when
  // B >= threads (one parallel region per call: on a loaded machine every barrier costs a descheduled thread's
  // wait), else threads take (image, row block) items of a group of images whose outputs (<= ~12 MB) are still in
  // L3 for the mirror / scaling passes that follow.
  const int64_t T = at::in_parallel_region() ? 1 : at::get_num_threads();
  const bool over_images = B >= T;
  const int64_t G = over_images ? 1 : group_images(B, P, sizeof(acc_t));
  const int64_t stage_n = same ? 0 : G * P;
  Fwd<scalar_t, acc_t> f{p, X.const_data_ptr<acc_t>(), p.sym ? nullptr : Y.const_data_ptr<acc_t>(), bs, X.options()};
  // Scratch (tiles, staging, row sums; per thread when over images) from torch's allocator, so profilers see it.
  const int64_t ntiles = over_images ? 1 : T;
  const int64_t slot = ntiles * tile_n + stage_n + G * C1;
  at::Tensor scratch = at::empty({(over_images ? T : 1) * slot}, X.options());
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  acc_t* nr = p.normalize ? nrm.mutable_data_ptr<acc_t>() : nullptr;
  const at::ThreadLocalState tls;  // the caller's dispatch state (inference mode etc.) for the workers' at::mm_out

  // Images [g0, g1) with the slot's scratch; threaded: every pass split over threads, else all on this thread.
  auto group = [&](int64_t g0, int64_t g1, acc_t* sc, bool threaded) {
    acc_t* tiles = sc;
    acc_t* stage = tiles + ntiles * tile_n;
    acc_t* ss_rows = stage + stage_n;
    auto pfor = [&](int64_t n, int64_t grain, const auto& fn) {
      if (threaded) at::parallel_for(0, n, grain, fn);
      else fn(0, n);
    };
    auto dst = [&](int64_t b) -> acc_t* {
      if constexpr (same) return reinterpret_cast<acc_t*>(op + b * P);
      else return stage + (b - g0) * P;
    };
    const int64_t gn = g1 - g0;
    pfor(gn * nb, 1, [&](int64_t q0, int64_t q1) {
      at::ThreadLocalStateGuard guard(tls);
      acc_t* mine = tiles + (ntiles > 1 ? at::get_thread_num() : 0) * tile_n;
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t b = g0 + q / nb, i0 = zigzag(q % nb, nb) * bs;
        f.block(b, i0, std::min(C1, i0 + bs), mine, dst(b), ss_rows + (b - g0) * C1 + i0);
      }
    });
    acc_t invs[64];
    TORCH_INTERNAL_ASSERT(gn <= 64);
    for (int64_t b = g0; b < g1; ++b) {
      invs[b - g0] = 1;
      if (!p.normalize) continue;
      acc_t ss = 0;  // row order: the result does not depend on the thread count
      for (int64_t i = 0; i < C1; ++i) ss += ss_rows[(b - g0) * C1 + i];
      const acc_t d = std::max(std::sqrt(ss), acc_t(kL2Eps));
      nr[b] = d;
      invs[b - g0] = acc_t(1) / d;
    }
    if (p.sym && !p.triu && same) {
      pfor(gn * nb, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t b = g0 + q / nb, k0 = zigzag(q % nb, nb) * bs;
          mirror_scale_inplace<acc_t>(dst(b), C1, k0, std::min(C1, k0 + bs), invs[b - g0]);
        }
      });
    } else if (p.sym && !p.triu) {
      // Staged (low-precision out): the lower triangles from the staging buffer, then the upper ones, cast.
      pfor(gn * nb, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t b = g0 + q / nb, k0 = zigzag(q % nb, nb) * bs;
          mirror_scaled<scalar_t, acc_t>(dst(b), op + b * P, C1, k0, std::min(C1, k0 + bs), invs[b - g0]);
        }
      });
      pfor(gn * C1, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = g0 + r / C1, i = r % C1;
          scale_run<scalar_t, acc_t>(dst(b) + i * C1 + i, op + b * P + i * C1 + i, C1 - i, invs[b - g0]);
        }
      });
    } else if (!same || p.normalize) {
      pfor(gn * P, 16384, [&](int64_t e0, int64_t e1) {
        while (e0 < e1) {
          const int64_t bl = e0 / P, e_end = std::min(e1, (bl + 1) * P);
          scale_run<scalar_t, acc_t>(dst(g0) + e0, op + g0 * P + e0, e_end - e0, invs[bl]);
          e0 = e_end;
        }
      });
    }
  };
  acc_t* sc = scratch.mutable_data_ptr<acc_t>();
  if (over_images) {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      acc_t* mine = sc + (T > 1 ? at::get_thread_num() : 0) * slot;
      for (int64_t b = b0; b < b1; ++b) group(b, b + 1, mine, false);
    });
  } else {
    for (int64_t g0 = 0; g0 < B; g0 += G) group(g0, std::min(B, g0 + G), sc, true);
  }
  return {out, nrm};
}

// d loss / d z (times 1/HW) at packed positions [0, n) of one image: (g - out <out, g>) 0.5 / (d^2 |out|) / HW with
// d = max(||s||, 1e-12) (the <out, g> term only above the floor), 0 where out == 0 (z == 0: torch.sign's derivative).
// This is the chain rule through F.normalize and sign(z) sqrt(|z| + eps) with s = out d and |s| = sqrt(|z| + eps).
template <class scalar_t, class acc_t>
void dz_run(const scalar_t* g, const scalar_t* o, acc_t* dst, int64_t n, acc_t k, acc_t h, acc_t inv_m,
            bool normalize) {
  int64_t e = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using Vec = Vectorized<acc_t>;
    if (!normalize) {
      for (; e + Vec::size() <= n; e += Vec::size()) (Vec::loadu(g + e) * Vec(inv_m)).store(dst + e);
    } else {
      const Vec vk(k), vh(h), zero(acc_t(0));
      for (; e + Vec::size() <= n; e += Vec::size()) {
        const Vec ov = Vec::loadu(o + e);
        const Vec r = (Vec::loadu(g + e) - ov * vk) * vh / ov.abs();
        (r & (ov != zero)).store(dst + e);  // 0 where out == 0 (the division gave inf or nan there)
      }
    }
  }
  if (!normalize) {
    for (; e < n; ++e) dst[e] = acc_t(g[e]) * inv_m;
    return;
  }
  for (; e < n; ++e) {
    const acc_t ov = acc_t(o[e]);
    dst[e] = ov == acc_t(0) ? acc_t(0) : (acc_t(g[e]) - ov * k) * h / std::abs(ov);
  }
}

// sum a[e] b[e] over [0, n): lane partial sums reduced in a fixed order (depends only on n and the data).
template <class scalar_t, class acc_t>
acc_t dot_run(const scalar_t* a, const scalar_t* b, int64_t n) {
  int64_t e = 0;
  acc_t dot = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using Vec = Vectorized<acc_t>;
    Vec acc0(acc_t(0)), acc1(acc_t(0));
    for (; e + 2 * Vec::size() <= n; e += 2 * Vec::size()) {
      acc0 = at::vec::fmadd(Vec::loadu(a + e), Vec::loadu(b + e), acc0);
      acc1 = at::vec::fmadd(Vec::loadu(a + e + Vec::size()), Vec::loadu(b + e + Vec::size()), acc1);
    }
    acc_t lanes[Vec::size()];
    (acc0 + acc1).store(lanes);
    for (int64_t l = 0; l < Vec::size(); ++l) dot += lanes[l];
  }
  for (; e < n; ++e) dot += acc_t(a[e]) * acc_t(b[e]);
  return dot;
}

// y is x, full output: rows [i0, i1) of dG + dG^T (row i at dg + (i - i0) ldg) = ((g + g^T) - 2 k out) h / |out| (0 where out == 0), which is
// dz + dz^T because out is exactly symmetric (the forward writes the lower triangle as a copy of the upper one).
// g^T's rows come from a column strip of g, transposed 8 x 8 at a time into gt (m x ldg, in cache), so
// dG is written row by row (a separate symmetrisation pass over the 16 MB dG at C = 2048 read and wrote it
// column-wise and missed the cache on every line).
template <class scalar_t, class acc_t>
void dg_sym_rows(const scalar_t* g, const scalar_t* o, acc_t* dg, int64_t ldg, int64_t C, int64_t i0, int64_t i1,
                 acc_t* gt, acc_t k, acc_t h, acc_t inv_m, bool normalize) {
  const int64_t m = i1 - i0;
  constexpr int64_t W = 8;
  for (int64_t j0 = 0; j0 < C; j0 += W) {
    const int64_t je = std::min(C, j0 + W);
    int64_t r = 0;
#if defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>)
      if (je - j0 == W)  // 8 x 8 register transposes (the scalar loop was a strided gather per element)
        for (; r + W <= m; r += W) at::vec::transpose_mxn<float, 8, 8>(g + j0 * C + i0 + r, C, gt + r * ldg + j0, ldg);
#endif
    for (; r < m; ++r)
      for (int64_t j = j0; j < je; ++j) gt[r * ldg + j] = acc_t(g[j * C + i0 + r]);
  }
  for (int64_t r = 0; r < m; ++r) {
    const int64_t i = i0 + r;
    const scalar_t* grow = g + i * C;
    const scalar_t* orow = o ? o + i * C : nullptr;
    const acc_t* trow = gt + r * ldg;
    acc_t* drow = dg + r * ldg;
    int64_t j = 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      using Vec = Vectorized<acc_t>;
      const Vec vk2(2 * k), vh(h), vm(inv_m), zero(acc_t(0));
      for (; j + Vec::size() <= C; j += Vec::size()) {
        const Vec gs = Vec::loadu(grow + j) + Vec::loadu(trow + j);
        if (normalize) {
          const Vec ov = Vec::loadu(orow + j);
          (((gs - ov * vk2) * vh / ov.abs()) & (ov != zero)).store(drow + j);
        } else {
          (gs * vm).store(drow + j);
        }
      }
    }
    for (; j < C; ++j) {
      const acc_t gs = acc_t(grow[j]) + trow[j];
      if (!normalize) {
        drow[j] = gs * inv_m;
      } else {
        const acc_t ov = acc_t(orow[j]);
        drow[j] = ov == acc_t(0) ? acc_t(0) : (gs - 2 * k * ov) * h / std::abs(ov);
      }
    }
  }
}

template <class scalar_t>
std::tuple<at::Tensor, at::Tensor> backward(const Problem& p, const at::Tensor& grad_out, const at::Tensor& out,
                                            const at::Tensor& nrm) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const auto acc = acc_type(p.x.scalar_type());
  const int64_t B = p.B, C1 = p.C1, C2 = p.C2, P = p.P, M = p.M;
  const acc_t inv_m = acc_t(1) / acc_t(M);
  // dG's row stride, padded off multiples of 2 KB: the symmetrisation reads it column-wise in 32 x 32 tiles, which
  // with C2 = 2048 (8 KB rows) put all 32 rows of a tile in one L1 set.
  const int64_t ldg = tile_ld<acc_t>(C2);
  const at::Tensor X = as_mat(p.x, acc);
  const at::Tensor Y = p.sym ? X : as_mat(p.y, acc);
  constexpr bool same = std::is_same_v<scalar_t, acc_t>;
  at::Tensor gx = at::empty({B, C1, M}, p.x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor gy = p.sym ? at::empty({0}, p.x.options()) : at::empty({B, C2, M}, p.x.options());
  if (B == 0 || C1 == 0 || C2 == 0) return {gx.zero_().view(p.x.sizes()), p.sym ? gy : gy.zero_().view(p.y.sizes())};
  const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* o = p.normalize ? out.const_data_ptr<scalar_t>() : nullptr;
  const acc_t* nr = p.normalize ? nrm.const_data_ptr<acc_t>() : nullptr;
  const acc_t* Xp = X.const_data_ptr<acc_t>();
  const acc_t* Yp = Y.const_data_ptr<acc_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  scalar_t* gyp = p.sym ? nullptr : gy.mutable_data_ptr<scalar_t>();

  // One image: y is x with the full output: strips of dG rows, each straight into its rows of dX by a GEMM; else
  // dG into dg (C1 x C2), then the GEMMs (into gx/gy directly, or via tmp and a cast).
  // Rows per strip: 256 (dG strip and transposed g strip 2 MB each at C = 2048, L3). Measured at C = 2048 / HW = 196
  // (B = 4, 2 threads, shared machine): fwd+bwd medians 64 rows 1.25-1.28x the GEMM floor, 128 rows 1.19-1.20x,
  // 256 rows 1.01-1.14x, 512 rows 1.12x: fewer, larger GEMMs re-pack X fewer times.
  const int64_t kStrip = std::min<int64_t>(C1, 256);
  const bool sym_full = p.sym && !p.triu;
  const at::ThreadLocalState tls_outer;  // for the strips' at::mm_out on worker threads
  const bool over_images = B >= at::get_num_threads() && !at::in_parallel_region();
  const int64_t gt_slots = over_images || at::in_parallel_region() ? 1 : at::get_num_threads();
  auto image = [&](int64_t b, acc_t* dg, acc_t* tmp, acc_t* gts, bool threaded) {
    const scalar_t* gb = g + b * P;
    const scalar_t* ob = o ? o + b * P : nullptr;
    acc_t k = 0, h = inv_m;
    if (p.normalize) {
      const acc_t d = nr[b];
      if (d > acc_t(kL2Eps)) {
        k = dot_run<scalar_t, acc_t>(ob, gb, P);
      }
      h = acc_t(0.5) / (d * d) * inv_m;
    }
    auto rows = [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        acc_t* row = dg + i * ldg;
        if (p.triu) {
          // Packed row i covers j >= i; j < i is filled by the mirror below (y is x) or zero.
          const int64_t off = triu_index(i, i, C1);
          dz_run<scalar_t, acc_t>(gb + off, ob ? ob + off : nullptr, row + i, C2 - i, k, h, inv_m, p.normalize);
          if (p.sym) row[i] *= 2;
          else std::fill(row, row + i, acc_t(0));
        } else {
          dz_run<scalar_t, acc_t>(gb + i * C2, ob ? ob + i * C2 : nullptr, row, C2, k, h, inv_m, p.normalize);
        }
      }
    };
    acc_t* gxb = same ? reinterpret_cast<acc_t*>(gxp + b * C1 * M) : tmp;
    auto strips = [&](int64_t s0, int64_t s1) {
      // One transposed strip per worker. The slot count is fixed outside the parallel region: inside it
      // at::get_num_threads() is not the region's size, and two workers sharing a strip raced (wrong dG rows).
      const int64_t t = threaded && gt_slots > 1 ? at::get_thread_num() : 0;
      TORCH_INTERNAL_ASSERT(t < gt_slots, "bilinear_pooling backward: worker ", t, " has no strip buffer");
      acc_t* gt = gts + t * 2 * kStrip * ldg;
      acc_t* ds = gt + kStrip * ldg;
      at::ThreadLocalStateGuard guard(tls_outer);
      for (int64_t st = s0; st < s1; ++st) {
        // The strip of dG (in cache) goes straight into its rows of dX, so dG never exists whole: the 16 MB dG per
        // image at C = 2048 was written to memory and read back by one big GEMM.
        const int64_t i0 = st * kStrip, i1 = std::min(C1, i0 + kStrip);
        dg_sym_rows<scalar_t, acc_t>(gb, ob, ds, ldg, C1, i0, i1, gt, k, h, inv_m, p.normalize);
        gemm_ab<acc_t>(false, i1 - i0, M, C2, ds, ldg, Yp + b * C2 * M, M, gxb + i0 * M, M, X.options());
      }
    };
    const int64_t nstrips = (C1 + kStrip - 1) / kStrip;
    if (sym_full) {
      if (threaded) at::parallel_for(0, nstrips, 1, strips); else strips(0, nstrips);
    } else if (threaded) {
      at::parallel_for(0, C1, 16, rows);
    } else {
      rows(0, C1);
    }
    if (p.sym && p.triu) {
      // The lower triangle mirrors the upper (diagonal doubled above). Tiles of 32 x 32 keep both sides in cache.
      constexpr int64_t T = 32;
      auto sym = [&](int64_t t0, int64_t t1) {
        for (int64_t ib = t0; ib < t1; ++ib)
          for (int64_t jb = ib; jb < (C1 + T - 1) / T; ++jb)
            for (int64_t i = ib * T; i < std::min(C1, ib * T + T); ++i)
              for (int64_t j = std::max(i + 1, jb * T); j < std::min(C1, jb * T + T); ++j)
                dg[j * ldg + i] = dg[i * ldg + j];
      };
      const int64_t nt = (C1 + T - 1) / T;
      if (threaded) at::parallel_for(0, nt, 1, sym); else sym(0, nt);
    }
    if (!sym_full) gemm_ab<acc_t>(false, C1, M, C2, dg, ldg, Yp + b * C2 * M, M, gxb, M, X.options());
    if constexpr (!same)
      for (int64_t e = 0; e < C1 * M; ++e) gxp[b * C1 * M + e] = scalar_t(tmp[e]);
    if (!p.sym) {
      acc_t* gyb = same ? reinterpret_cast<acc_t*>(gyp + b * C2 * M) : tmp;
      gemm_ab<acc_t>(true, C2, M, C1, dg, ldg, Xp + b * C1 * M, M, gyb, M, X.options());
      if constexpr (!same)
        for (int64_t e = 0; e < C2 * M; ++e) gyp[b * C2 * M + e] = scalar_t(tmp[e]);
    }
  };
  const int64_t tmp_n = same ? 0 : std::max(C1, C2) * M;
  // Per-thread dG (C1 x C2) and cast buffer from torch's allocator (profilers see them); never a (B, C1, C2) tensor.
  const int64_t gt_n = sym_full ? gt_slots * 2 * kStrip * ldg : 0;
  const int64_t dg_n = sym_full ? 0 : C1 * ldg;
  const int64_t slot = dg_n + tmp_n + gt_n;
  at::Tensor scratch = at::empty({over_images ? at::get_num_threads() : 1, slot}, X.options());
  acc_t* sc = scratch.mutable_data_ptr<acc_t>();
  if (over_images) {
    const at::ThreadLocalState tls;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      at::ThreadLocalStateGuard guard(tls);
      acc_t* mine = sc + at::get_thread_num() * slot;
      for (int64_t b = b0; b < b1; ++b) image(b, mine, mine + dg_n, mine + dg_n + tmp_n, false);
    });
  } else {
    for (int64_t b = 0; b < B; ++b) image(b, sc, sc + dg_n, sc + dg_n + tmp_n, true);
  }
  return {gx.view(p.x.sizes()), p.sym ? gy : gy.view(p.y.sizes())};
}

std::tuple<at::Tensor, at::Tensor> bilinear_pooling_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y,
                                                        c10::string_view normalize, bool triu, double eps) {
  const Problem p = make_problem("bilinear_pooling", x, y, std::string(normalize), triu, eps);
  std::tuple<at::Tensor, at::Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bilinear_pooling_cpu",
                                  [&] { r = forward<scalar_t>(p); });
  return r;
}

std::tuple<at::Tensor, at::Tensor> bilinear_pooling_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                 const std::optional<at::Tensor>& y,
                                                                 const at::Tensor& out, const at::Tensor& norm,
                                                                 c10::string_view normalize, bool triu, double eps) {
  const Problem p = make_problem("bilinear_pooling_backward", x, y, std::string(normalize), triu, eps);
  check_backward_args(p, grad_out, out, norm);
  std::tuple<at::Tensor, at::Tensor> r;
  const at::Tensor g = grad_out.to(x.scalar_type()).contiguous();
  const at::Tensor o = p.normalize ? out.contiguous() : out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bilinear_pooling_backward_cpu",
                                  [&] { r = backward<scalar_t>(p, g, o, norm.contiguous()); });
  return r;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("bilinear_pooling", &bilinear_pooling_cpu);
  m.impl("bilinear_pooling_backward", &bilinear_pooling_backward_cpu);
}

}  // namespace vkernels::bilinear_pooling
