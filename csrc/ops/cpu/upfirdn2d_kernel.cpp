// upfirdn2d on CPU, fp16/bf16 computed in fp32 (fp64 in fp64). Polyphase: only taps that land on an input pixel
// (not on an inserted zero) are ever multiplied, so an output costs about fh*fw/(upx*upy) MACs (2-D filter) or
// fh/upy + fw/upx (1-D filter, two passes). Bytes: reads x once, writes out once (plus an L1/L2-sized per-thread
// fp32 buffer). Two layouts:
//  - planes (NCHW and any non-channels-last strides): parallel over the N*C planes. Each plane is copied once into
//    an fp32 buffer with zero borders, its columns de-interleaved by the input stride of the polyphase walk, so every
//    inner loop is a contiguous multiply-add the compiler vectorises (acc[k] += w * src[k]).
//  - channels_last: parallel over output rows (n, oy); the inner loop runs along C, which is contiguous in both
//    x and out, so every tap is one vectorised multiply-add over C.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "ops/upfirdn2d.h"

namespace vkernels::upfirdn2d {
namespace {

using at::vec::Vectorized;

// acc[k] += w * src[k], k < n.
template <class T>
inline void axpy(T* __restrict__ acc, T w, const T* __restrict__ src, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) acc[k] += w * src[k];
}

// The same with src in the storage type (fp16/bf16 widened to fp32 in registers).
template <class scalar_t, class opmath_t>
inline void axpy_in(opmath_t* __restrict__ acc, opmath_t w, const scalar_t* __restrict__ src, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    axpy(acc, w, src, n);
  } else {
    using fVec = Vectorized<float>;
    using sVec = Vectorized<scalar_t>;
    const fVec wv(w);
    int64_t k = 0;
    for (; k + sVec::size() <= n; k += sVec::size()) {
      auto [a, b] = at::vec::convert_to_float<scalar_t>(sVec::loadu(src + k));
      at::vec::fmadd(a, wv, fVec::loadu(acc + k)).store(acc + k);
      at::vec::fmadd(b, wv, fVec::loadu(acc + k + fVec::size())).store(acc + k + fVec::size());
    }
    for (; k < n; ++k) acc[k] += w * opmath_t(src[k]);
  }
}

// dst[k] = src[k] converted, k < n.
template <class S, class D>
inline void convert_row(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  if constexpr (std::is_same_v<S, D>) {
    std::copy(src, src + n, dst);
  } else if constexpr (std::is_same_v<S, float> && !std::is_same_v<D, double>) {
    at::vec::convert(src, dst, n);  // float -> Half / BFloat16, vectorised
  } else if constexpr (std::is_same_v<D, float> && !std::is_same_v<S, double>) {
    using fVec = Vectorized<float>;
    using sVec = Vectorized<S>;
    int64_t k = 0;
    for (; k + sVec::size() <= n; k += sVec::size()) {
      auto [a, b] = at::vec::convert_to_float<S>(sVec::loadu(src + k));
      a.store(dst + k);
      b.store(dst + k + fVec::size());
    }
    for (; k < n; ++k) dst[k] = static_cast<D>(src[k]);
  } else {
    for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<D>(src[k]);
  }
}

// The polyphase walk along one axis (x) of the plane layout. Output o = ph + k*P (phase ph, step k) reads, through
// tap j, input index base(ph, j) + k*s: with g = gcd(up, down), P = up/g phases and an input stride s = down/g.
// The input row is stored zero-padded by `lo` on the left and de-interleaved by s (padded index q lives at
// [q % s][q / s]), so every (phase, tap) pair is a contiguous run starting at (r, m0).
struct AxisPlan {
  struct Tap {
    int64_t j, r, m0;
  };
  int64_t P = 1, s = 1, lo = 0, M = 1, nk_max = 0;
  std::vector<int64_t> nk;              // outputs per phase
  std::vector<std::vector<Tap>> taps;   // taps that hit input pixels, per phase

  AxisPlan(int64_t L, int64_t O, int64_t up, int64_t down, int64_t pad0, int64_t F) {
    const int64_t g = std::gcd(up, down);
    P = up / g;
    s = down / g;
    nk.assign(P, 0);
    taps.resize(P);
    int64_t lo_idx = std::numeric_limits<int64_t>::max(), hi_idx = std::numeric_limits<int64_t>::min();
    std::vector<std::vector<std::pair<int64_t, int64_t>>> raw(P);  // (j, base)
    for (int64_t ph = 0; ph < std::min(P, O); ++ph) {
      nk[ph] = (O - ph + P - 1) / P;
      nk_max = std::max(nk_max, nk[ph]);
      for (int64_t j = 0; j < F; ++j) {
        const int64_t t = ph * down + j - pad0;
        if (floor_mod(t, up) != 0) continue;  // lands on an inserted zero for every k
        const int64_t base = floor_div(t, up);
        raw[ph].emplace_back(j, base);
        lo_idx = std::min(lo_idx, base);
        hi_idx = std::max(hi_idx, base + (nk[ph] - 1) * s);
      }
    }
    if (lo_idx > hi_idx) lo_idx = hi_idx = 0;  // no tap ever hits an input pixel
    lo = std::max<int64_t>(0, -lo_idx);
    const int64_t hi = std::max<int64_t>(0, hi_idx - (L - 1));
    M = std::max<int64_t>(1, (L + lo + hi + s - 1) / s);
    for (int64_t ph = 0; ph < P; ++ph)
      for (auto [j, base] : raw[ph]) taps[ph].push_back({j, (base + lo) % s, (base + lo) / s});
  }
  int64_t row_len() const { return s * M; }
};

// Vertical taps of output row oy that hit an input row: (tap index i, input row iy).
inline int64_t row_taps(int64_t oy, int64_t up, int64_t down, int64_t pad0, int64_t F, int64_t H, int64_t* ti,
                        int64_t* iy) {
  int64_t n = 0;
  for (int64_t i = 0; i < F; ++i) {
    const int64_t t = oy * down + i - pad0;
    if (floor_mod(t, up) != 0) continue;
    const int64_t r = floor_div(t, up);
    if (r < 0 || r >= H) continue;
    ti[n] = i;
    iy[n++] = r;
  }
  return n;
}

template <class scalar_t>
struct Planes {
  using opmath_t = at::opmath_type<scalar_t>;
  const Problem& p;

  // One input row (strided) into its zero-padded, de-interleaved buffer row.
  static void load_row(const scalar_t* src, int64_t sw, int64_t W, const AxisPlan& ax, opmath_t* dst) {
    std::fill(dst, dst + ax.row_len(), opmath_t(0));
    if (ax.s == 1 && sw == 1) {
      convert_row(src, dst + ax.lo, W);
    } else {
      // Padded index q = m*s + r holds input column q - lo: walk each de-interleaved row r without divisions.
      const int64_t s = ax.s, lo = ax.lo;
      for (int64_t r = 0; r < s; ++r) {
        opmath_t* d = dst + r * ax.M;
        const int64_t m0 = std::max<int64_t>(0, (lo - r + s - 1) / s);
        const int64_t m1 = W - 1 + lo - r < 0 ? 0 : (W - 1 + lo - r) / s + 1;
        const scalar_t* sp = src + (m0 * s + r - lo) * sw;
        for (int64_t m = m0; m < m1; ++m, sp += s * sw) d[m] = opmath_t(*sp);
      }
    }
  }

  // Horizontal polyphase pass of one buffered row into acc (P x nk_max, phase-major), weights wx[j] * scale.
  static void hpass(const opmath_t* row, const AxisPlan& ax, const opmath_t* wx, opmath_t* acc) {
    for (int64_t ph = 0; ph < ax.P; ++ph)
      for (const auto& t : ax.taps[ph]) axpy(acc + ph * ax.nk_max, wx[t.j], row + t.r * ax.M + t.m0, ax.nk[ph]);
  }

  // Phase-major acc -> one output row of outW values (interleaving phases).
  template <class D>
  static void store_row(const opmath_t* acc, const AxisPlan& ax, int64_t outW, opmath_t* tmp, D* dst) {
    if (ax.P == 1) {
      convert_row(acc, dst, outW);
      return;
    }
    for (int64_t ph = 0; ph < ax.P; ++ph)
      for (int64_t k = 0; k < ax.nk[ph]; ++k) tmp[ph + k * ax.P] = acc[ph * ax.nk_max + k];
    convert_row(tmp, dst, outW);
  }

  void operator()() const {
    const int64_t H = p.H, W = p.W, outH = p.outH, outW = p.outW, fh = p.fh, fw = p.fw;
    const AxisPlan ax(W, outW, p.upx, p.downx, p.padx0, fw);
    const int64_t RL = ax.row_len();
    // Taps in the compute type: 2-D w[i][j] (fh*fw), or separable fx (fw) then fy (fh).
    std::vector<opmath_t> w(p.taps.begin(), p.taps.end());
    const opmath_t* wx = w.data();
    const opmath_t* fy = w.data() + fw;
    const scalar_t* x = p.x.const_data_ptr<scalar_t>();
    scalar_t* out = p.out.mutable_data_ptr<scalar_t>();
    const int64_t sN = p.x.stride(0), sC = p.x.stride(1), sH = p.x.stride(2), sW = p.x.stride(3);
    const int64_t planes = p.N * p.C, plane_out = outH * outW;
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_out + H * W));
    at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> buf(H * RL), acc(ax.P * std::max<int64_t>(ax.nk_max, 1)), tmp(outW);
      std::vector<opmath_t> rows(p.separable ? H * outW : 0);
      std::vector<int64_t> ti(fh), iy(fh);
      for (int64_t pl = begin; pl < end; ++pl) {
        const scalar_t* xp = x + (pl / p.C) * sN + (pl % p.C) * sC;
        scalar_t* op = out + pl * plane_out;
        for (int64_t r = 0; r < H; ++r) load_row(xp + r * sH, sW, W, ax, buf.data() + r * RL);
        if (p.separable) {
          // Pass 1: every input row filtered horizontally (fp32 intermediate); pass 2: vertical taps over rows.
          for (int64_t r = 0; r < H; ++r) {
            std::fill(acc.begin(), acc.end(), opmath_t(0));
            hpass(buf.data() + r * RL, ax, wx, acc.data());
            store_row(acc.data(), ax, outW, tmp.data(), rows.data() + r * outW);
          }
          for (int64_t oy = 0; oy < outH; ++oy) {
            const int64_t n = row_taps(oy, p.upy, p.downy, p.pady0, fh, H, ti.data(), iy.data());
            std::fill(tmp.begin(), tmp.end(), opmath_t(0));
            for (int64_t t = 0; t < n; ++t) axpy(tmp.data(), fy[ti[t]], rows.data() + iy[t] * outW, outW);
            convert_row(tmp.data(), op + oy * outW, outW);
          }
        } else {
          for (int64_t oy = 0; oy < outH; ++oy) {
            const int64_t n = row_taps(oy, p.upy, p.downy, p.pady0, fh, H, ti.data(), iy.data());
            std::fill(acc.begin(), acc.end(), opmath_t(0));
            for (int64_t t = 0; t < n; ++t) hpass(buf.data() + iy[t] * RL, ax, wx + ti[t] * fw, acc.data());
            store_row(acc.data(), ax, outW, tmp.data(), op + oy * outW);
          }
        }
      }
    });
  }
};

template <class scalar_t>
struct ChannelsLast {
  using opmath_t = at::opmath_type<scalar_t>;
  const Problem& p;

  void operator()() const {
    const int64_t C = p.C, H = p.H, W = p.W, outH = p.outH, outW = p.outW, fh = p.fh, fw = p.fw;
    std::vector<opmath_t> w(p.taps.begin(), p.taps.end());
    const opmath_t* wx = w.data();
    const opmath_t* fy = w.data() + fw;
    // x is channels_last-dense (Problem::channels_last): element (n, c, h, w) at n*sN + h*sH + w*C + c.
    const scalar_t* x = p.x.const_data_ptr<scalar_t>();
    scalar_t* out = p.out.mutable_data_ptr<scalar_t>();
    const int64_t sN = p.x.stride(0), sH = p.x.stride(2), sW = p.x.stride(3);
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, outW * C));
    at::parallel_for(0, p.N * outH, grain, [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> acc(C), vrow(p.separable ? W * C : 0);
      std::vector<int64_t> ti(fh), iy(fh), tj(fw), ix(fw);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / outH, oy = row % outH;
        const scalar_t* xn = x + n * sN;
        scalar_t* orow = out + (n * outH + oy) * outW * C;
        const int64_t nyt = row_taps(oy, p.upy, p.downy, p.pady0, fh, H, ti.data(), iy.data());
        if (p.separable) {  // vertical taps into one fp32 row of W pixels, then horizontal taps per output pixel
          std::fill(vrow.begin(), vrow.end(), opmath_t(0));
          for (int64_t t = 0; t < nyt; ++t)
            for (int64_t c = 0; c < W; ++c)
              axpy_in(vrow.data() + c * C, fy[ti[t]], xn + iy[t] * sH + c * sW, C);
        }
        for (int64_t ox = 0; ox < outW; ++ox) {
          const int64_t nxt = row_taps(ox, p.upx, p.downx, p.padx0, fw, W, tj.data(), ix.data());
          std::fill(acc.begin(), acc.end(), opmath_t(0));
          if (p.separable) {
            for (int64_t t = 0; t < nxt; ++t) axpy(acc.data(), wx[tj[t]], vrow.data() + ix[t] * C, C);
          } else {
            for (int64_t a = 0; a < nyt; ++a)
              for (int64_t b = 0; b < nxt; ++b)
                axpy_in(acc.data(), w[ti[a] * fw + tj[b]], xn + iy[a] * sH + ix[b] * sW, C);
          }
          convert_row(acc.data(), orow + ox * C, C);
        }
      }
    });
  }
};

at::Tensor upfirdn2d_cpu(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                         int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip_filter,
                         double gain) {
  TORCH_CHECK(x.device().is_cpu(), "upfirdn2d: the CPU kernel got x on ", x.device());
  Problem p = make(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain);
  if (p.out.numel() == 0) return p.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cpu", [&] {
    if (p.channels_last)
      ChannelsLast<scalar_t>{p}();
    else
      Planes<scalar_t>{p}();
  });
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) { m.impl("upfirdn2d", &upfirdn2d_cpu); }

}  // namespace vkernels::upfirdn2d
