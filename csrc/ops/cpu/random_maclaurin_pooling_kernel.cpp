// random_maclaurin_pooling on CPU: GEMM tiles by at::mm into per-thread buffers, each reduced against the other
// projection as soon as it is computed, so no D x C2 (gram) or D x HW (project) product exists for more than one
// tile of kTile rows of W at a time.
//
// Forward, per image (s = 1 / sqrt(D)):
//   gram:    G_b = X_b Y_b^T (one at::bmm over the batch, all threads), then per (image, W tile) work item
//            T = W1_tile G_b (kTile x C2, at::mm) and out[b, d] = s <T_d, w2_d>.
//            FLOPs 2 HW C1 C2 + 2 D C1 C2 (+ 2 D C2 for the row dots); bytes: X, Y read once, G (4 C1 C2) written
//            once and read D / kTile times from cache-sized tiles, W1, W2 read once per image.
//   project: P1 = W1_tile X_b, P2 = W2_tile Y_b (kTile x HW each), out[b, d] = s <P1_d, P2_d>.
//            FLOPs 2 HW D (C1 + C2) (+ 2 D HW); bytes: X, Y, W1, W2 read once per image.
// Backward with g = dL/dout, dG_b = s W1^T diag(g_b) W2 (C1 x C2):
//   gram:    dG_b by W tiles (the rows of W2 scaled by s g_b into a per-thread buffer, then addmm), then
//            dX = dG Y, dY = dG^T X (at::bmm; when y is x, dX = (dG + dG^T) X).
//            dW1 = s sum_b diag(g_b) W2 G_b^T, dW2 = s sum_b diag(g_b) W1 G_b, per W tile over the images.
//   project: dX_b = W1^T (s g_b . (W2 Y_b)), dY_b = W2^T (s g_b . (W1 X_b)) by W tiles, never forming dG;
//            dW1 = sum_b (s g_b . (W2 Y_b)) X_b^T, dW2 = sum_b (s g_b . (W1 X_b)) Y_b^T.
// Every output element is summed by one work item in a fixed order (no atomics, no cross-thread reductions of ours);
// only the GEMM library's own blocking can vary with the thread count.
// Accumulation in fp32 (fp64 for fp64 inputs); fp16/bf16 inputs are converted to fp32 once before the GEMMs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <type_traits>

#include "ops/random_maclaurin_pooling.h"

namespace vkernels::random_maclaurin_pooling {
namespace {

// Rows of W per work item: a kTile x C2 fp32 tile (256 KiB at C2 = 512) stays in L2 between its GEMM and its dots,
// and kTile = 128 keeps the GEMM tiles large enough for MKL/oneDNN to run near peak.
constexpr int64_t kTile = 128;
// The backward's per-image loops accumulate GEMMs whose inner dimension is the tile: larger tiles there keep those
// accumulating GEMMs (K = tile) efficient.
constexpr int64_t kTileBwd = 512;

// Per-image work: one image per thread when there are enough images; otherwise the images in turn, each GEMM using
// every thread (at B = 1 a per-image parallel loop would leave all but one core idle).
template <class F>
void for_images(int64_t B, const F& f) {
  if (B >= at::get_num_threads())
    at::parallel_for(0, B, 1, f);
  else
    f(0, B);
}

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor as_mat(const at::Tensor& t, at::ScalarType acc) {
  return t.reshape({t.size(0), t.size(1), t.size(2) * t.size(3)}).to(acc).contiguous();
}

template <class acc_t>
acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec s0(acc_t(0)), s1(acc_t(0));
  int64_t i = 0;
  for (; i + 2 * V <= n; i += 2 * V) {
    s0 = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), s0);
    s1 = at::vec::fmadd(Vec::loadu(a + i + V), Vec::loadu(b + i + V), s1);
  }
  for (; i + V <= n; i += V) s0 = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), s0);
  acc_t r = at::vec::vec_reduce_all<acc_t>([](Vec& u, Vec& v) { return u + v; }, s0 + s1);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// dst[r, :] = scale[r] * src[r, :] for nd rows of length n (row strides n).
template <class acc_t>
void scale_rows(acc_t* dst, const acc_t* src, const acc_t* scale, int64_t nd, int64_t n) {
  for (int64_t r = 0; r < nd; ++r) {
    const acc_t c = scale[r];
    for (int64_t j = 0; j < n; ++j) dst[r * n + j] = c * src[r * n + j];
  }
}

// dst = a @ b on the first tile, dst += a @ b after it.
void mm_acc(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b, bool first) {
  if (first)
    at::mm_out(dst, a, b);
  else
    dst.addmm_(a, b);
}

struct Mats {
  at::Tensor X, Y, W1, W2;
};

// Detached: at::mm_out refuses inputs that require grad, and the dispatcher's below-autograd state does not follow
// the work into at::parallel_for's threads (this op has its own backward).
Mats mats(const Problem& p) {
  const auto acc = acc_type(p.x.scalar_type());
  Mats m;
  m.X = as_mat(p.x.detach(), acc);
  m.Y = p.sym ? m.X : as_mat(p.y.detach(), acc);
  m.W1 = p.w1.detach().to(acc).contiguous();
  m.W2 = p.w2.detach().to(acc).contiguous();
  return m;
}

template <class acc_t>
at::Tensor forward(const Problem& p) {
  const Mats m = mats(p);
  const int64_t B = p.B, D = p.D, nt = (D + kTile - 1) / kTile;
  at::Tensor out = at::empty({B, D}, m.X.options());
  if (B == 0) return out.to(p.x.scalar_type());
  const acc_t s = acc_t(1) / std::sqrt(acc_t(D));
  const at::Tensor G = p.gram ? at::bmm(m.X, m.Y.transpose(1, 2)).contiguous() : at::Tensor();
  const int64_t N = p.gram ? p.C2 : p.M;  // columns of each tile product
  const acc_t* w2 = m.W2.const_data_ptr<acc_t>();
  acc_t* o = out.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B * nt, 1, [&](int64_t i0, int64_t i1) {
    at::Tensor buf1 = at::empty({kTile, N}, m.X.options());
    at::Tensor buf2 = p.gram ? at::Tensor() : at::empty({kTile, N}, m.X.options());
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / nt, d0 = (it % nt) * kTile, nd = std::min(kTile, D - d0);
      at::Tensor t1 = buf1.narrow(0, 0, nd);
      const acc_t* rhs;
      if (p.gram) {
        at::mm_out(t1, m.W1.narrow(0, d0, nd), G.select(0, b));
        rhs = w2 + d0 * N;
      } else {
        at::Tensor t2 = buf2.narrow(0, 0, nd);
        at::mm_out(t1, m.W1.narrow(0, d0, nd), m.X.select(0, b));
        at::mm_out(t2, m.W2.narrow(0, d0, nd), m.Y.select(0, b));
        rhs = t2.const_data_ptr<acc_t>();
      }
      const acc_t* lhs = t1.const_data_ptr<acc_t>();
      for (int64_t r = 0; r < nd; ++r) o[b * D + d0 + r] = s * dot(lhs + r * N, rhs + r * N, N);
    }
  });
  return out.to(p.x.scalar_type());
}

template <class acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(const Problem& p, const at::Tensor& grad_out,
                                                                    std::array<bool, 4> mask) {
  const Mats m = mats(p);
  const auto opts = m.X.options();
  const int64_t B = p.B, C1 = p.C1, C2 = p.C2, M = p.M, D = p.D, nt = (D + kTileBwd - 1) / kTileBwd;
  const acc_t s = acc_t(1) / std::sqrt(acc_t(D));
  // s g, so every later product carries the 1/sqrt(D) already.
  const at::Tensor gs = (grad_out.to(m.X.scalar_type()) * s).contiguous();
  const acc_t* gp = gs.const_data_ptr<acc_t>();
  const acc_t* w1 = m.W1.const_data_ptr<acc_t>();
  const acc_t* w2 = m.W2.const_data_ptr<acc_t>();
  const bool need_x = mask[0], need_y = mask[1] && !p.sym;
  at::Tensor gx = at::empty({0}, p.x.options()), gy = at::empty({0}, p.x.options());
  at::Tensor gw1 = at::empty({0}, p.w1.options()), gw2 = at::empty({0}, p.w2.options());

  if (need_x || need_y) {
    at::Tensor dX = need_x ? at::empty({B, C1, M}, opts) : at::Tensor();
    at::Tensor dY = need_y ? at::empty({B, C2, M}, opts) : at::Tensor();
    if (p.gram) {
      at::Tensor dG = at::empty({B, C1, C2}, opts);
      for_images(B, [&](int64_t b0, int64_t b1) {
        at::Tensor buf = at::empty({kTileBwd, C2}, opts);
        for (int64_t b = b0; b < b1; ++b) {
          at::Tensor dGb = dG.select(0, b);
          for (int64_t t = 0; t < nt; ++t) {
            const int64_t d0 = t * kTileBwd, nd = std::min(kTileBwd, D - d0);
            at::Tensor sw2 = buf.narrow(0, 0, nd);
            scale_rows(sw2.mutable_data_ptr<acc_t>(), w2 + d0 * C2, gp + b * D + d0, nd, C2);
            mm_acc(dGb, m.W1.narrow(0, d0, nd).t(), sw2, t == 0);
          }
        }
      });
      if (p.sym) {
        at::bmm_out(dX, dG + dG.transpose(1, 2), m.X);
      } else {
        if (need_x) at::bmm_out(dX, dG, m.Y);
        if (need_y) at::bmm_out(dY, dG.transpose(1, 2), m.X);
      }
    } else {
      // dX_b = W1^T (s g_b . (W2 Y_b)) [+ W2^T (s g_b . (W1 X_b)) when y is x]; dY_b = W2^T (s g_b . (W1 X_b)).
      const bool p1_needed = p.sym || need_y;
      for_images(B, [&](int64_t b0, int64_t b1) {
        at::Tensor buf = at::empty({kTileBwd, M}, opts);
        for (int64_t b = b0; b < b1; ++b) {
          const at::Tensor Xb = m.X.select(0, b), Yb = m.Y.select(0, b);
          at::Tensor dXb = need_x ? dX.select(0, b) : at::Tensor();
          at::Tensor dYb = need_y ? dY.select(0, b) : at::Tensor();
          for (int64_t t = 0; t < nt; ++t) {
            const int64_t d0 = t * kTileBwd, nd = std::min(kTileBwd, D - d0);
            at::Tensor P = buf.narrow(0, 0, nd);
            acc_t* pp = P.mutable_data_ptr<acc_t>();
            if (need_x) {
              at::mm_out(P, m.W2.narrow(0, d0, nd), Yb);
              scale_rows(pp, pp, gp + b * D + d0, nd, M);
              mm_acc(dXb, m.W1.narrow(0, d0, nd).t(), P, t == 0);
            }
            if (p1_needed) {
              at::mm_out(P, m.W1.narrow(0, d0, nd), Xb);
              scale_rows(pp, pp, gp + b * D + d0, nd, M);
              if (p.sym)
                dXb.addmm_(m.W2.narrow(0, d0, nd).t(), P);
              else
                mm_acc(dYb, m.W2.narrow(0, d0, nd).t(), P, t == 0);
            }
          }
        }
      });
    }
    if (need_x) gx = dX.view(p.x.sizes()).to(p.x.scalar_type());
    if (need_y) gy = dY.view(p.y.sizes()).to(p.x.scalar_type());
  }

  if (mask[2] || mask[3]) {
    at::Tensor dW1 = at::zeros({D, C1}, opts), dW2 = at::zeros({D, C2}, opts);
    const at::Tensor G = p.gram && B > 0 ? at::bmm(m.X, m.Y.transpose(1, 2)).contiguous() : at::Tensor();
    at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
      at::Tensor buf = at::empty({kTileBwd, p.gram ? std::max(C1, C2) : M}, opts);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t d0 = t * kTileBwd, nd = std::min(kTileBwd, D - d0);
        at::Tensor dW1t = dW1.narrow(0, d0, nd), dW2t = dW2.narrow(0, d0, nd);
        for (int64_t b = 0; b < B; ++b) {
          const acc_t* gb = gp + b * D + d0;
          if (p.gram) {
            // dW1_tile += (s g . W2_tile) G_b^T; dW2_tile += (s g . W1_tile) G_b.
            const at::Tensor Gb = G.select(0, b);
            if (mask[2]) {
              at::Tensor sw = at::from_blob(buf.mutable_data_ptr<acc_t>(), {nd, C2}, opts);
              scale_rows(sw.mutable_data_ptr<acc_t>(), w2 + d0 * C2, gb, nd, C2);
              dW1t.addmm_(sw, Gb.t());
            }
            if (mask[3]) {
              at::Tensor sw = at::from_blob(buf.mutable_data_ptr<acc_t>(), {nd, C1}, opts);
              scale_rows(sw.mutable_data_ptr<acc_t>(), w1 + d0 * C1, gb, nd, C1);
              dW2t.addmm_(sw, Gb);
            }
          } else {
            // dW1_tile += (s g . (W2_tile Y_b)) X_b^T; dW2_tile += (s g . (W1_tile X_b)) Y_b^T.
            const at::Tensor Xb = m.X.select(0, b), Yb = m.Y.select(0, b);
            at::Tensor P = buf.narrow(0, 0, nd);
            acc_t* pp = P.mutable_data_ptr<acc_t>();
            if (mask[2]) {
              at::mm_out(P, m.W2.narrow(0, d0, nd), Yb);
              scale_rows(pp, pp, gb, nd, M);
              dW1t.addmm_(P, Xb.t());
            }
            if (mask[3]) {
              at::mm_out(P, m.W1.narrow(0, d0, nd), Xb);
              scale_rows(pp, pp, gb, nd, M);
              dW2t.addmm_(P, Yb.t());
            }
          }
        }
      }
    });
    if (mask[2]) gw1 = dW1.to(p.w1.scalar_type());
    if (mask[3]) gw2 = dW2.to(p.w2.scalar_type());
  }
  return {gx, gy, gw1, gw2};
}

// ---- project route with the projections kept for the backward (random_maclaurin_pooling_saved) ----
// Forward: P1 = W1 [X_1 .. X_B], P2 = W2 [Y_1 .. Y_B] as two whole GEMMs (D x C) @ (C x B HW) on every thread (the
// GEMM floor itself), kept as proj = (2, D, B, HW) in the accumulation dtype, then out[b, d] = s <P1[d, b], P2[d, b]>.
// FLOPs 2 B HW D (C1 + C2) (+ 2 B D HW); bytes: X, Y, W1, W2 read once, 2 B D HW written once and read once.
// Backward, per tile of T rows of D (S1 = s g . P1, S2 = s g . P2 formed tile by tile in a buffer, never whole):
//   dX += W1_t^T S2_t (y is x: + W2_t^T S1_t), dY += W2_t^T S1_t, dW1_t = S2_t X^T, dW2_t = S1_t Y^T.
// That is 4 GEMMs of the forward's size in all for x, y, w1, w2 (2 for x alone when y is x) against the tiled
// route's 6 (it recomputes P1 and P2). Each GEMM runs on every thread; the accumulation order over the tiles is fixed.

// (B, C, HW) -> (C, B HW): the images side by side, so each projection is one GEMM.
at::Tensor side_by_side(const at::Tensor& X) {
  return X.permute({1, 0, 2}).reshape({X.size(1), X.size(0) * X.size(2)}).contiguous();
}

template <class acc_t>
std::tuple<at::Tensor, at::Tensor> forward_saved(const Problem& p) {
  const Mats m = mats(p);
  const int64_t B = p.B, D = p.D, M = p.M, BM = B * M;
  const at::Tensor Xa = side_by_side(m.X), Ya = p.sym ? Xa : side_by_side(m.Y);
  at::Tensor proj = at::empty({2, D, B, M}, m.X.options());
  at::Tensor P1 = proj.select(0, 0).view({D, BM}), P2 = proj.select(0, 1).view({D, BM});
  at::mm_out(P1, m.W1, Xa);
  at::mm_out(P2, m.W2, Ya);
  at::Tensor out = at::empty({B, D}, m.X.options());
  const acc_t s = acc_t(1) / std::sqrt(acc_t(D));
  const acc_t* p1 = P1.const_data_ptr<acc_t>();
  const acc_t* p2 = P2.const_data_ptr<acc_t>();
  acc_t* o = out.mutable_data_ptr<acc_t>();
  at::parallel_for(0, D * B, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {  // i = d B + b: the order proj is laid out in
      const int64_t d = i / std::max<int64_t>(B, 1), b = i % std::max<int64_t>(B, 1);
      o[b * D + d] = s * dot(p1 + i * M, p2 + i * M, M);
    }
  });
  return {out.to(p.x.scalar_type()), proj};
}

template <class acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_saved(const Problem& p, const at::Tensor& grad_out,
                                                                          const at::Tensor& proj,
                                                                          std::array<bool, 4> mask) {
  const Mats m = mats(p);
  const auto opts = m.X.options();
  const int64_t B = p.B, C1 = p.C1, C2 = p.C2, M = p.M, D = p.D, BM = B * M;
  const acc_t s = acc_t(1) / std::sqrt(acc_t(D));
  const at::Tensor gs = (grad_out.to(m.X.scalar_type()) * s).contiguous();
  const acc_t* gp = gs.const_data_ptr<acc_t>();
  const at::Tensor pr = proj.contiguous();
  const acc_t* p1 = pr.const_data_ptr<acc_t>();
  const acc_t* p2 = p1 + D * BM;
  const bool need_x = mask[0], need_y = mask[1] && !p.sym;
  const bool need_s1 = p.sym ? need_x || mask[3] : need_y || mask[3];  // S1 feeds dY (or dX when y is x) and dW2
  const bool need_s2 = need_x || mask[2];                              // S2 feeds dX and dW1
  at::Tensor gx = at::empty({0}, p.x.options()), gy = at::empty({0}, p.x.options());
  at::Tensor gw1 = at::empty({0}, p.w1.options()), gw2 = at::empty({0}, p.w2.options());
  // X, Y side by side only for the weights' gradients (dX, dY come out side by side and are put back at the end).
  const at::Tensor Xa = mask[2] || (mask[3] && p.sym) ? side_by_side(m.X) : at::Tensor();
  const at::Tensor Ya = !mask[3] ? at::Tensor() : p.sym ? Xa : side_by_side(m.Y);
  at::Tensor dXa = need_x ? at::empty({C1, BM}, opts) : at::Tensor();
  at::Tensor dYa = need_y ? at::empty({C2, BM}, opts) : at::Tensor();
  at::Tensor dW1 = mask[2] ? at::empty({D, C1}, opts) : at::Tensor();
  at::Tensor dW2 = mask[3] ? at::empty({D, C2}, opts) : at::Tensor();
  // Tile rows: about 1 MB of scaled projections per buffer (the saved projections are the memory that counts), at
  // least 256 rows so the accumulating GEMMs (K = T) stay efficient.
  const int64_t T = std::min<int64_t>(D, std::max<int64_t>(256, (int64_t(1) << 18) / std::max<int64_t>(BM, 1)));
  at::Tensor buf1 = need_s1 ? at::empty({T, BM}, opts) : at::Tensor();
  at::Tensor buf2 = need_s2 ? at::empty({T, BM}, opts) : at::Tensor();
  // S[r, b, :] = gs[b, d0 + r] P[d0 + r, b, :]
  auto scale = [&](at::Tensor& buf, const acc_t* src, int64_t d0, int64_t nd) {
    acc_t* dst = buf.mutable_data_ptr<acc_t>();
    at::parallel_for(0, nd * B, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = i / B, b = i % B;
        const acc_t c = gp[b * D + d0 + r];
        const acc_t* a = src + (d0 * B + i) * M;
        acc_t* o = dst + i * M;
        for (int64_t j = 0; j < M; ++j) o[j] = c * a[j];
      }
    });
  };
  for (int64_t d0 = 0, t = 0; d0 < D; d0 += T, ++t) {
    const int64_t nd = std::min(T, D - d0);
    at::Tensor S1 = need_s1 ? buf1.narrow(0, 0, nd) : at::Tensor();
    at::Tensor S2 = need_s2 ? buf2.narrow(0, 0, nd) : at::Tensor();
    if (BM > 0) {
      if (need_s1) scale(S1, p1, d0, nd);
      if (need_s2) scale(S2, p2, d0, nd);
    }
    const at::Tensor W1t = m.W1.narrow(0, d0, nd), W2t = m.W2.narrow(0, d0, nd);
    if (need_x) {
      mm_acc(dXa, W1t.t(), S2, t == 0);
      if (p.sym) dXa.addmm_(W2t.t(), S1);
    }
    if (need_y) mm_acc(dYa, W2t.t(), S1, t == 0);
    if (mask[2]) {
      at::Tensor o = dW1.narrow(0, d0, nd);
      at::mm_out(o, S2, Xa.t());
    }
    if (mask[3]) {
      at::Tensor o = dW2.narrow(0, d0, nd);
      at::mm_out(o, S1, Ya.t());
    }
  }
  auto back = [&](const at::Tensor& dA, int64_t C, const at::Tensor& like) {
    return dA.view({C, B, M}).permute({1, 0, 2}).contiguous().view(like.sizes()).to(p.x.scalar_type());
  };
  if (need_x) gx = back(dXa, C1, p.x);
  if (need_y) gy = back(dYa, C2, p.y);
  if (mask[2]) gw1 = dW1.to(p.w1.scalar_type());
  if (mask[3]) gw2 = dW2.to(p.w2.scalar_type());
  return {gx, gy, gw1, gw2};
}

std::tuple<at::Tensor, at::Tensor> random_maclaurin_pooling_saved_cpu(const at::Tensor& x,
                                                                      const std::optional<at::Tensor>& y,
                                                                      const at::Tensor& w1, const at::Tensor& w2) {
  const Problem p = make_problem("random_maclaurin_pooling_saved", x, y, w1, w2, "project");
  if (x.scalar_type() == at::kDouble) return forward_saved<double>(p);
  return forward_saved<float>(p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> random_maclaurin_pooling_saved_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w1,
    const at::Tensor& w2, const at::Tensor& proj, std::array<bool, 4> output_mask) {
  const char* op = "random_maclaurin_pooling_saved_backward";
  const Problem p = make_problem(op, x, y, w1, w2, "project");
  check_grad_out(op, p, grad_out);
  check_proj(op, p, proj);
  if (x.scalar_type() == at::kDouble) return backward_saved<double>(p, grad_out, proj, output_mask);
  return backward_saved<float>(p, grad_out, proj, output_mask);
}

at::Tensor random_maclaurin_pooling_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w1,
                                        const at::Tensor& w2, c10::string_view route) {
  const Problem p = make_problem("random_maclaurin_pooling", x, y, w1, w2, std::string(route));
  at::Tensor r;
  if (x.scalar_type() == at::kDouble)
    r = forward<double>(p);
  else
    r = forward<float>(p);
  return r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> random_maclaurin_pooling_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w1,
    const at::Tensor& w2, c10::string_view route, std::array<bool, 4> output_mask) {
  const Problem p = make_problem("random_maclaurin_pooling_backward", x, y, w1, w2, std::string(route));
  check_grad_out("random_maclaurin_pooling_backward", p, grad_out);
  if (x.scalar_type() == at::kDouble) return backward<double>(p, grad_out, output_mask);
  return backward<float>(p, grad_out, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("random_maclaurin_pooling", &random_maclaurin_pooling_cpu);
  m.impl("random_maclaurin_pooling_backward", &random_maclaurin_pooling_backward_cpu);
  m.impl("random_maclaurin_pooling_saved", &random_maclaurin_pooling_saved_cpu);
  m.impl("random_maclaurin_pooling_saved_backward", &random_maclaurin_pooling_saved_backward_cpu);
}

}  // namespace vkernels::random_maclaurin_pooling
