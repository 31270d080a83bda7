// filtered_lrelu on CPU (and its masked linear twin, the gradient), fp16/bf16 computed in fp32, fp64 in fp64.
// One pass per (plane, band of TO output rows): load the input rows the band needs (+ bias) into a zero-padded
// thread-local fp32 buffer, form the band's mid rows with polyphase up-filtering (only taps that land on input
// pixels are multiplied: ~fuh*fuw/up^2 MACs per mid sample for 2-D fu, (fuw+fuh)/up separable), apply
// lrelu*gain+clamp (writing 2 mask bits) or the mask factors, then down-filter into the output rows
// (fdh*fdw/down^2 MACs per mid sample 2-D, (fdw+fdh)/down separable). The mid band lives only in the buffer.
// Bytes: x read once (plus the band overlap, ~fuh/(up*TO) extra), y written once, mask Mh*Mw/4 bytes written (or
// read). Bands overlap by fdh-down mid rows, which are recomputed rather than shared between threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/filtered_lrelu.h"
#include "ops/upfirdn2d.h"

namespace vkernels::filtered_lrelu {
namespace {

using upfirdn2d::floor_div;
using upfirdn2d::floor_mod;

template <class T>
inline void axpy(T* __restrict__ acc, T w, const T* __restrict__ src, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) acc[k] += w * src[k];
}

// Horizontal up pass: an input row stored zero-padded by `lo` -> M mid samples. Mid m = ph + k*U reads, through
// tap j, input index base(ph, j) + k, so each (phase, tap) pair is one contiguous multiply-add.
struct UpPlan {
  struct Tap {
    int64_t j, start;
  };
  int64_t U = 1, M = 0, lo = 0, L = 0, nk_max = 0;
  std::vector<int64_t> nk;
  std::vector<std::vector<Tap>> taps;

  explicit UpPlan(const Axis& a) : U(a.U), M(a.M) {
    nk.assign(U, 0);
    taps.resize(U);
    int64_t mn = std::numeric_limits<int64_t>::max(), mx = std::numeric_limits<int64_t>::min();
    std::vector<std::vector<std::pair<int64_t, int64_t>>> raw(U);
    for (int64_t ph = 0; ph < std::min(U, M); ++ph) {
      nk[ph] = (M - ph + U - 1) / U;
      nk_max = std::max(nk_max, nk[ph]);
      for (int64_t j = 0; j < a.A; ++j) {
        const int64_t t = ph + j - a.P0;
        if (floor_mod(t, U) != 0) continue;  // an inserted zero for every k
        const int64_t base = floor_div(t, U);
        raw[ph].emplace_back(j, base);
        mn = std::min(mn, base);
        mx = std::max(mx, base + nk[ph] - 1);
      }
    }
    if (mn > mx) mn = mx = 0;
    lo = std::max<int64_t>(0, -mn);
    L = lo + a.Z + std::max<int64_t>(0, mx - (a.Z - 1));
    for (int64_t ph = 0; ph < U; ++ph)
      for (auto [j, base] : raw[ph]) taps[ph].push_back({j, base + lo});
  }

  template <class T>
  void run(const T* buf, const T* w, T* mid, T* tmp) const {
    if (U == 1) {
      for (const auto& t : taps[0]) axpy(mid, w[t.j], buf + t.start, nk[0]);
      return;
    }
    for (int64_t ph = 0; ph < U; ++ph) {
      if (taps[ph].empty()) continue;
      std::fill(tmp, tmp + nk[ph], T(0));
      for (const auto& t : taps[ph]) axpy(tmp, w[t.j], buf + t.start, nk[ph]);
      for (int64_t k = 0; k < nk[ph]; ++k) mid[ph + k * U] += tmp[k];
    }
  }
};

// Horizontal down pass over a mid row stored de-interleaved by D (sample q*D + r at [r*R + q]): out[o] +=
// sum_k w[k] * a[o*D + k], each tap one contiguous multiply-add over o.
struct DownPlan {
  int64_t D = 1, M = 0, O = 0, B = 1, R = 0;
  explicit DownPlan(const Axis& a) : D(a.D), M(a.M), O(a.O), B(a.B), R((a.M + a.D - 1) / a.D) {}
  int64_t row_len() const { return D * R; }

  template <class T>
  void deinterleave(const T* mid, T* dst) const {
    if (D == 1) {
      std::copy(mid, mid + M, dst);
      return;
    }
    for (int64_t r = 0; r < D; ++r)
      for (int64_t q = 0; q < R; ++q) dst[r * R + q] = q * D + r < M ? mid[q * D + r] : T(0);
  }

  template <class T>
  void run(const T* src, const T* w, T* out) const {
    for (int64_t k = 0; k < B; ++k) axpy(out, w[k], src + (k % D) * R + k / D, O);
  }
};

template <class scalar_t>
void run(const Problem& p) {
  using T = at::opmath_type<scalar_t>;
  const Axis &ax = p.ax, &ay = p.ay;
  const UpPlan up(ax);
  const DownPlan dn(ax);
  const std::vector<T> wa(p.wa.begin(), p.wa.end()), wb(p.wb.begin(), p.wb.end());
  const int64_t Aw = ax.A, Ah = ay.A, Bw = ax.B, Bh = ay.B, Mw = ax.M, Ow = ax.O, L = up.L, DR = dn.row_len();
  const int64_t TO = std::min<int64_t>(ay.O, 8);  // output rows per band: the band's mid rows stay in L2
  const int64_t bands = (ay.O + TO - 1) / TO;
  const int64_t mid_rows_max = (TO - 1) * ay.D + Bh;
  const int64_t in_rows_max = (mid_rows_max + Ah - 2) / ay.U + 2;
  const scalar_t* x = p.x.const_data_ptr<scalar_t>();
  scalar_t* out = p.out.mutable_data_ptr<scalar_t>();
  const int64_t sN = p.x.stride(0), sC = p.x.stride(1), sH = p.x.stride(2), sW = p.x.stride(3);
  const int64_t oN = p.out.stride(0), oC = p.out.stride(1), oH = p.out.stride(2), oW = p.out.stride(3);
  const scalar_t* bias = p.b ? p.b->const_data_ptr<scalar_t>() : nullptr;
  const int64_t sb = p.b ? p.b->stride(0) : 0;
  const bool use_mask = p.masked || p.write_mask;
  uint8_t* mask = use_mask ? static_cast<uint8_t*>(p.mask.data_ptr()) : nullptr;
  const int64_t RB = mask_row_bytes(p.mask_w);
  const T gain = T(p.gain), slope = T(p.slope);
  const T clamp = p.clamp < 0 ? std::numeric_limits<T>::infinity() : T(p.clamp);
  const T fac[4] = {T(0), gain, gain * slope, T(0)};

  at::parallel_for(0, p.N * p.C * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> lbuf(in_rows_max * L), hbuf(p.sep_a ? in_rows_max * Mw : 0), mrow(Mw);
    std::vector<T> tmp(std::max<int64_t>(up.nk_max, 1)), midbuf(mid_rows_max * DR);
    std::vector<T> dbuf(p.sep_b ? mid_rows_max * Ow : 0), acc(Ow);
    std::vector<uint8_t> codes(RB * 4);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t pl = idx / bands, band = idx % bands, n = pl / p.C, c = pl % p.C;
      const int64_t oy0 = band * TO, oy1 = std::min(ay.O, oy0 + TO);
      const int64_t my0 = oy0 * ay.D, my1 = (oy1 - 1) * ay.D + Bh;
      // Mask rows this band writes: its own [oy0*D, oy1*D) (the last band: to the end), so no byte has two writers.
      const int64_t own1 = band == bands - 1 ? ay.M : oy1 * ay.D;
      const int64_t iy_lo = std::max<int64_t>(0, -floor_div(-(my0 - ay.P0), ay.U));
      const int64_t iy_hi = std::min<int64_t>(ay.Z - 1, floor_div(my1 - 1 + Ah - 1 - ay.P0, ay.U));
      const int64_t nrows = std::max<int64_t>(0, iy_hi - iy_lo + 1);
      const T bv = bias ? T(bias[c * sb]) : T(0);
      const scalar_t* xp = x + n * sN + c * sC;
      for (int64_t r = 0; r < nrows; ++r) {
        T* dst = lbuf.data() + r * L;
        std::fill(dst, dst + L, T(0));
        const scalar_t* src = xp + (iy_lo + r) * sH;
        for (int64_t i = 0; i < ax.Z; ++i) dst[up.lo + i] = T(src[i * sW]) + bv;
        if (p.sep_a) {
          T* h = hbuf.data() + r * Mw;
          std::fill(h, h + Mw, T(0));
          up.run(dst, wa.data(), h, tmp.data());
        }
      }
      for (int64_t my = my0; my < my1; ++my) {
        std::fill(mrow.begin(), mrow.end(), T(0));
        for (int64_t i = 0; i < Ah; ++i) {
          const int64_t t = my + i - ay.P0;
          if (floor_mod(t, ay.U) != 0) continue;
          const int64_t iy = floor_div(t, ay.U);
          if (iy < iy_lo || iy > iy_hi) continue;
          if (p.sep_a)
            axpy(mrow.data(), wa[i], hbuf.data() + (iy - iy_lo) * Mw, Mw);
          else
            up.run(lbuf.data() + (iy - iy_lo) * L, wa.data() + i * Aw, mrow.data(), tmp.data());
        }
        if (!p.masked) {
          for (int64_t m = 0; m < Mw; ++m) {
            const T v = mrow[m];
            T a = (v > T(0) ? v : v * slope) * gain;
            uint8_t code = v > T(0) ? 1 : 2;
            if (a > clamp || a < -clamp) {
              a = a > T(0) ? clamp : -clamp;
              code = 0;
            }
            mrow[m] = a;
            codes[m] = code;
          }
          if (p.write_mask && my >= oy0 * ay.D && my < own1) {
            uint8_t* mr = mask + (pl * p.mask_h + my) * RB;
            std::fill(codes.begin() + Mw, codes.end(), uint8_t(0));
            for (int64_t q = 0; q < RB; ++q)
              mr[q] = codes[4 * q] | (codes[4 * q + 1] << 2) | (codes[4 * q + 2] << 4) | (codes[4 * q + 3] << 6);
          }
        } else {
          const int64_t row = my + p.sy;
          if (row < 0 || row >= p.mask_h) {
            std::fill(mrow.begin(), mrow.end(), T(0));
          } else {
            const uint8_t* mr = mask + (pl * p.mask_h + row) * RB;
            for (int64_t m = 0; m < Mw; ++m) {
              const int64_t col = m + p.sx;
              const int code = col >= 0 && col < p.mask_w ? (mr[col >> 2] >> ((col & 3) * 2)) & 3 : 0;
              mrow[m] *= fac[code];
            }
          }
        }
        T* md = midbuf.data() + (my - my0) * DR;
        dn.deinterleave(mrow.data(), md);
        if (p.sep_b) {
          T* d = dbuf.data() + (my - my0) * Ow;
          std::fill(d, d + Ow, T(0));
          dn.run(md, wb.data(), d);
        }
      }
      for (int64_t oy = oy0; oy < oy1; ++oy) {
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t k = 0; k < Bh; ++k) {
          const int64_t r = oy * ay.D + k - my0;
          if (p.sep_b)
            axpy(acc.data(), wb[k], dbuf.data() + r * Ow, Ow);
          else
            dn.run(midbuf.data() + r * DR, wb.data() + k * Bw, acc.data());
        }
        scalar_t* dst = out + n * oN + c * oC + oy * oH;
        for (int64_t ox = 0; ox < Ow; ++ox) dst[ox * oW] = static_cast<scalar_t>(acc[ox]);
      }
    }
  });
}

void dispatch(const Problem& p) {
  if (p.out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "filtered_lrelu_cpu",
                                  [&] { run<scalar_t>(p); });
}

std::tuple<at::Tensor, at::Tensor> filtered_lrelu_cpu(const at::Tensor& x, const at::Tensor& fu, const at::Tensor& fd,
                                                      const std::optional<at::Tensor>& b, int64_t up, int64_t down,
                                                      int64_t px0, int64_t px1, int64_t py0, int64_t py1,
                                                      double gain, double slope, std::optional<double> clamp,
                                                      bool flip_filter, bool write_mask) {
  TORCH_CHECK(x.device().is_cpu(), "filtered_lrelu: the CPU kernel got x on ", x.device());
  Problem p = make(x, fu, fd, up, down, px0, px1, py0, py1, double(up * up), 1.0, flip_filter, "filtered_lrelu");
  TORCH_CHECK(std::isfinite(gain), "filtered_lrelu: gain must be finite, got ", gain);
  TORCH_CHECK(std::isfinite(slope), "filtered_lrelu: slope must be finite, got ", slope);
  TORCH_CHECK(!clamp || *clamp >= 0, "filtered_lrelu: clamp must be None or >= 0, got ", *clamp);
  if (b) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == p.C, "filtered_lrelu: b must have shape (", p.C, ",), got ",
                b->sizes());
    TORCH_CHECK(b->scalar_type() == x.scalar_type(), "filtered_lrelu: b must have x's dtype ", x.scalar_type(),
                ", got ", b->scalar_type());
    TORCH_CHECK(b->device() == x.device(), "filtered_lrelu: b is on ", b->device(), " but x is on ", x.device());
    p.b = *b;
  }
  p.gain = gain, p.slope = slope, p.clamp = clamp ? *clamp : -1.0;
  p.write_mask = write_mask;
  p.mask_h = p.ay.M, p.mask_w = p.ax.M;
  p.mask = write_mask ? at::zeros({p.N, p.C, p.mask_h, mask_row_bytes(p.mask_w)}, x.options().dtype(at::kByte))
                      : at::empty({0}, x.options().dtype(at::kByte));
  if (write_mask && p.mask.numel() == 0) p.write_mask = false;
  dispatch(p);
  return {p.out, p.mask};
}

at::Tensor filtered_lrelu_masked_cpu(const at::Tensor& z, const at::Tensor& fa, const at::Tensor& fb,
                                     const at::Tensor& mask, int64_t mask_w, int64_t sx, int64_t sy, int64_t up,
                                     int64_t down, int64_t px0, int64_t px1, int64_t py0, int64_t py1, double gain_a,
                                     double gain_b, double gain, double slope, bool flip_filter) {
  TORCH_CHECK(z.device().is_cpu(), "filtered_lrelu_masked: the CPU kernel got z on ", z.device());
  Problem p = make(z, fa, fb, up, down, px0, px1, py0, py1, gain_a, gain_b, flip_filter, "filtered_lrelu_masked");
  TORCH_CHECK(mask.scalar_type() == at::kByte, "filtered_lrelu_masked: mask must be uint8, got ", mask.scalar_type());
  TORCH_CHECK(mask_w >= 0, "filtered_lrelu_masked: mask_w must be >= 0, got ", mask_w);
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == p.N && mask.size(1) == p.C &&
                  mask.size(3) == mask_row_bytes(mask_w),
              "filtered_lrelu_masked: mask must have shape (", p.N, ", ", p.C, ", mask_h, ", mask_row_bytes(mask_w),
              "), got ", mask.sizes());
  TORCH_CHECK(mask.device() == z.device(), "filtered_lrelu_masked: mask is on ", mask.device(), " but z is on ",
              z.device());
  p.masked = true;
  p.mask = mask.contiguous();
  p.mask_w = mask_w, p.mask_h = mask.size(2), p.sx = sx, p.sy = sy;
  p.gain = gain, p.slope = slope;
  dispatch(p);
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("filtered_lrelu", &filtered_lrelu_cpu);
  m.impl("filtered_lrelu_masked", &filtered_lrelu_masked_cpu);
}

}  // namespace vkernels::filtered_lrelu
