// What the upsample_norm_act / spade_norm_act CPU kernels share (forward: upsample_norm_act_kernel.cpp,
// spade_norm_act_kernel.cpp; backward: upsample_norm_act_backward_kernel.cpp, spade_norm_act_backward_kernel.cpp):
// interpolation tables, argument checks, the vector load / store helpers (V, VecIO), the fused epilogue (Epi), the
// one-pass shifted statistics and the backward kernels' fixed-order block sums.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "ops/bias_act_math.h"
#include "ops/upsample_norm_act.h"

namespace vkernels::norm_act {

// One output coordinate of 1-D linear interpolation (align_corners=False), computed as torch's CPU kernel does
// (area_pixel_compute_source_index with scale = 1/s in the compute type), so results agree to the last bit or two.
template <class T>
struct Lin {
  int64_t i0, i1;
  T l0, l1;
};

template <class T>
std::vector<Lin<T>> make_lin(int64_t in, int64_t s) {
  std::vector<Lin<T>> r(in * s);
  const T scale = static_cast<T>(1.0 / static_cast<double>(s));
  for (int64_t o = 0; o < in * s; ++o) {
    T src = scale * (static_cast<T>(o) + T(0.5)) - T(0.5);
    if (src < T(0)) src = T(0);
    int64_t i0 = std::min(static_cast<int64_t>(src), in - 1);
    T l1 = std::min(std::max(src - static_cast<T>(i0), T(0)), T(1));
    r[o] = {i0, i0 + (i0 < in - 1 ? 1 : 0), T(1) - l1, l1};
  }
  return r;
}

inline bool is_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// 5-D x: kept in channels_last_3d when it is stored so (else read through a contiguous copy).
inline bool is_channels_last_3d(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

// The upsampled value at output (od, oh, ow) of a 5-D plane (pointer p to its (0, 0, 0) element, strides sd, sh,
// sw in elements): nearest by s, or trilinear (align_corners=False) through the make_lin tables of D, H and W,
// blended along W, then H, then D.
template <class scalar_t>
struct Up3 {
  using opmath_t = at::opmath_type<scalar_t>;
  int64_t s, sd, sh, sw;
  bool tri;
  std::vector<Lin<opmath_t>> ld, lh, lw;
  Up3(int64_t D, int64_t H, int64_t W, int64_t s_, bool tri_, int64_t sd_, int64_t sh_, int64_t sw_)
      : s(s_), sd(sd_), sh(sh_), sw(sw_), tri(tri_) {
    if (tri) ld = make_lin<opmath_t>(D, s), lh = make_lin<opmath_t>(H, s), lw = make_lin<opmath_t>(W, s);
  }
  opmath_t operator()(const scalar_t* p, int64_t od, int64_t oh, int64_t ow) const {
    if (!tri) return opmath_t(p[(od / s) * sd + (oh / s) * sh + (ow / s) * sw]);
    const Lin<opmath_t>&z = ld[od], &y = lh[oh], &q = lw[ow];
    auto row = [&](int64_t d, int64_t h) {
      const scalar_t* r = p + d * sd + h * sh;
      return q.l0 * opmath_t(r[q.i0 * sw]) + q.l1 * opmath_t(r[q.i1 * sw]);
    };
    const opmath_t t0 = y.l0 * row(z.i0, y.i0) + y.l1 * row(z.i0, y.i1);
    const opmath_t t1 = y.l0 * row(z.i1, y.i0) + y.l1 * row(z.i1, y.i1);
    return z.l0 * t0 + z.l1 * t1;
  }
};

// Calls f.template operator()<A>() with the runtime activation as a template argument.
template <class F>
void dispatch_act(bias_act::Act act, F&& f) {
  using bias_act::Act;
  switch (act) {
    case Act::kLinear: return f.template operator()<Act::kLinear>();
    case Act::kRelu: return f.template operator()<Act::kRelu>();
    case Act::kLrelu: return f.template operator()<Act::kLrelu>();
    case Act::kTanh: return f.template operator()<Act::kTanh>();
    case Act::kSigmoid: return f.template operator()<Act::kSigmoid>();
    case Act::kElu: return f.template operator()<Act::kElu>();
    case Act::kSelu: return f.template operator()<Act::kSelu>();
    case Act::kSoftplus: return f.template operator()<Act::kSoftplus>();
    default: return f.template operator()<Act::kSwish>();
  }
}

// Argument checks of the apply op (upsample_norm_act) and of its backward, which take the same arguments after dy:
// x, the per-(n, c) mean / a / b, scale, mode, act and clamp. Returns the parsed mode and activation.
inline std::pair<Mode, bias_act::Act> check_apply_args(std::string_view op, const at::Tensor& x, const at::Tensor& m,
                                                      const at::Tensor& a, const at::Tensor& b, int64_t scale,
                                                      c10::string_view mode_s, c10::string_view act_s,
                                                      std::optional<double> clamp) {
  check_x45(op, x);
  TORCH_CHECK(scale >= 1, op, ": scale must be an integer >= 1, got ", scale);
  const Mode mode = parse_mode_for(op, std::string_view(mode_s.data(), mode_s.size()), x.dim());
  const bias_act::Act act = parse_act(op, std::string_view(act_s.data(), act_s.size()));
  TORCH_CHECK(!clamp || *clamp >= 0, op, ": clamp must be None or >= 0, got ", clamp ? *clamp : 0.0);
  check_ab(op, x, m, "mean");
  check_ab(op, x, a, "a");
  check_ab(op, x, b, "b");
  return {mode, act};
}

inline bias_act::Params<double> make_params(double alpha, double gain, std::optional<double> clamp) {
  return {alpha, gain, gain != 0 ? 1.0 / gain : 0.0, clamp.value_or(0.0), -clamp.value_or(0.0), clamp.has_value()};
}

using at::vec::Vectorized;

// ---------------------------------------------------------------------------------------------------------------
// vector helpers: a step is one Vectorized<scalar_t> (8 fp32, 4 fp64, 16 fp16/bf16 = two fp32 vectors)
// ---------------------------------------------------------------------------------------------------------------
template <class scalar_t>
struct V {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  using sVec = Vectorized<scalar_t>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, opmath_t>;
  static constexpr int kN = kReduced ? 2 : 1;
  static constexpr int64_t kF = fVec::size();
  static constexpr int64_t kStep = sVec::size();
  static_assert(kStep == kN * kF);
  struct Pack {
    fVec v[kN];
  };
  static Pack load(const scalar_t* p) {
    Pack r;
    if constexpr (kReduced) {
      std::tie(r.v[0], r.v[1]) = at::vec::convert_to_float<scalar_t>(sVec::loadu(p));
    } else {
      r.v[0] = fVec::loadu(p);
    }
    return r;
  }
  static Pack loadf(const opmath_t* p) {
    Pack r;
    for (int k = 0; k < kN; ++k) r.v[k] = fVec::loadu(p + k * kF);
    return r;
  }
  static sVec pack(const fVec* v) {
    if constexpr (kReduced) {
      return at::vec::convert_from_float<scalar_t>(v[0], v[1]);
    } else {
      return v[0];
    }
  }
  static void to_opmath(const scalar_t* src, opmath_t* dst, int64_t n) {
    int64_t i = 0;
    for (; i + kStep <= n; i += kStep) {
      const Pack p = load(src + i);
      for (int k = 0; k < kN; ++k) p.v[k].store(dst + i + k * kF);
    }
    for (; i < n; ++i) dst[i] = opmath_t(src[i]);
  }
};

// The epilogue clamp(act((u - m) * a + b) * gain), scalar and vector: bias_act's math (bias_act::apply), so the
// vector lanes compute what bias_act's own vector loop computes. The mean is subtracted before scaling (not
// folded into b) so that large means do not cancel in fp32.
template <bias_act::Act A, class scalar_t>
struct Epi {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  bias_act::Params<opmath_t> ps;
  bias_act::Params<fVec> pv;
  explicit Epi(const bias_act::Params<double>& params)
      : ps(bias_act::cast_params<opmath_t>(params)), pv(bias_act::cast_params<fVec>(ps)) {}
  scalar_t operator()(opmath_t u, opmath_t m, opmath_t a, opmath_t b) const {
    return static_cast<scalar_t>(bias_act::apply<A, bias_act::Mode::kForward>((u - m) * a, b, opmath_t(0), ps));
  }
  fVec operator()(const fVec& u, const fVec& m, const fVec& a, const fVec& b) const {
    return bias_act::apply<A, bias_act::Mode::kForward>((u - m) * a, b, fVec(0), pv);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// statistics: one pass, sums of (u - shift) and (u - shift)^2 in fp64, shift = one value of the group (a
// representative value keeps the one-pass formula free of cancellation when |mean| >> std).
// ---------------------------------------------------------------------------------------------------------------
struct Acc {
  double s1 = 0, s2 = 0;
};

// Adds the sums of (u_i - shift) and (u_i - shift)^2, i in [0, n), to a; lv(i) gives the opmath vector u_i..u_i+F-1,
// ls(i) one value (tail). Four independent vector chains: a single fp64 add chain runs at the add latency. fp32:
// differences and squares are summed in fp32 over blocks of at most kBlk values, and each block's totals are added
// to the fp64 sums (the shift keeps the terms O(std), so a <= 256-term fp32 block sum loses ~1e-6 relative). Fixed
// order: deterministic.
template <class opmath_t, class LV, class LS>
void shifted_sums(int64_t n, opmath_t shift, const LV& lv, const LS& ls, Acc& a) {
  using fVec = Vectorized<opmath_t>;
  constexpr int64_t F = fVec::size(), kU = 4 * F;
  constexpr int64_t kBlk = std::is_same_v<opmath_t, float> ? 8 * kU : 64 * kU;
  const fVec sh(shift);
  int64_t i = 0;
  while (i + kU <= n) {
    const int64_t e = std::min(i + kBlk, n - (n - i) % kU);
    fVec s1[4] = {fVec(0), fVec(0), fVec(0), fVec(0)}, s2[4] = {fVec(0), fVec(0), fVec(0), fVec(0)};
    for (; i < e; i += kU)
      for (int k = 0; k < 4; ++k) {
        const fVec d = lv(i + k * F) - sh;
        s1[k] = s1[k] + d;
        s2[k] = at::vec::fmadd(d, d, s2[k]);
      }
    alignas(64) opmath_t b1[F], b2[F];
    ((s1[0] + s1[1]) + (s1[2] + s1[3])).store(b1);
    ((s2[0] + s2[1]) + (s2[2] + s2[3])).store(b2);
    for (int64_t l = 0; l < F; ++l) a.s1 += double(b1[l]), a.s2 += double(b2[l]);
  }
  for (; i < n; ++i) {
    const double d = double(ls(i)) - double(shift);
    a.s1 += d;
    a.s2 += d * d;
  }
}

// The shifted sums of one contiguous NCHW plane of n values (nearest / scale 1: the statistics of x itself).
// fp16/bf16 are converted to opmath in chunks of kSumChunk values through row (kSumChunk values or more).
inline constexpr int64_t kSumChunk = 1024;
template <class scalar_t>
void plane_sums(const scalar_t* p, int64_t n, at::opmath_type<scalar_t> sh, Acc& a,
                std::vector<at::opmath_type<scalar_t>>& row) {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  if constexpr (V<scalar_t>::kReduced) {
    for (int64_t i0 = 0; i0 < n; i0 += kSumChunk) {
      const int64_t len = std::min(kSumChunk, n - i0);
      V<scalar_t>::to_opmath(p + i0, row.data(), len);
      const opmath_t* q = row.data();
      shifted_sums<opmath_t>(len, sh, [&](int64_t i) { return fVec::loadu(q + i); }, [&](int64_t i) { return q[i]; },
                             a);
    }
  } else {
    shifted_sums<opmath_t>(n, sh, [&](int64_t i) { return fVec::loadu(p + i); }, [&](int64_t i) { return p[i]; }, a);
  }
}

// mean and biased variance of a group of count values from its shifted sums (shift: the group's first value).
template <class opmath_t>
void finish_stats(const Acc& a, double shift, double count, opmath_t& mean, opmath_t& var) {
  const double d = a.s1 / count;
  mean = static_cast<opmath_t>(shift + d);
  var = static_cast<opmath_t>(std::max(0.0, a.s2 / count - d * d));
}

// The statistics pass of upsample_norm_act_stats on a prepared x (contiguous NCHW, or channels_last when cl) into
// mean / var (shape (C,) or (N, C), compute type); defined in upsample_norm_act_kernel.cpp. spade_norm_act_train's
// two-pass path uses it, so both ops give the same bits.
void stats_into(const at::Tensor& x, int64_t s, Mode mode, bool per_sample, bool cl, at::Tensor& mean, at::Tensor& var);

// Loads / stores of one vector step of scalar_t as kN opmath vectors (fp16/bf16: 16 values = two fp32 vectors).
template <class scalar_t>
struct VecIO {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = at::vec::Vectorized<opmath_t>;
  using sVec = at::vec::Vectorized<scalar_t>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, opmath_t>;
  static constexpr int kN = kReduced ? 2 : 1;
  static constexpr int64_t kF = fVec::size();
  static constexpr int64_t kStep = sVec::size();
  static void load(const scalar_t* p, fVec* v) {
    if constexpr (kReduced) {
      std::tie(v[0], v[1]) = at::vec::convert_to_float<scalar_t>(sVec::loadu(p));
    } else {
      v[0] = fVec::loadu(p);
    }
  }
  static void loadf(const opmath_t* p, fVec* v) {
    for (int k = 0; k < kN; ++k) v[k] = fVec::loadu(p + k * kF);
  }
  static void store(scalar_t* p, const fVec* v) {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p);
    } else {
      v[0].store(p);
    }
  }
};

// r1[n, c], r2[n, c] = the sums over a sample's nb blocks, in block order, of the per-block fp64 partial sums
// part[((n * nb + b) * 2 + {0, 1}) * C + c] (the channels_last kernels' fixed-order reduction).
inline void sum_blocks(const std::vector<double>& part, int64_t N, int64_t nb, int64_t C, double* r1, double* r2) {
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t c = 0; c < C; ++c) {
        double d1 = 0, d2 = 0;
        for (int64_t b = 0; b < nb; ++b) {
          const double* p = part.data() + 2 * (n * nb + b) * C;
          d1 += p[c], d2 += p[C + c];
        }
        r1[n * C + c] = d1, r2[n * C + c] = d2;
      }
  });
}

// Backward helpers: an empty placeholder for an output not asked for, the memory format of a layout, dy's checks.
inline at::Tensor empty0(const at::Tensor& like) { return at::empty({0}, like.options()); }

inline at::MemoryFormat fmt_of(bool cl) { return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous; }

inline void check_dy(std::string_view op, const at::Tensor& dy, const at::Tensor& x, at::IntArrayRef shape) {
  TORCH_CHECK(dy.sizes() == shape, op, ": dy must have shape ", shape, ", got ", dy.sizes());
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), op, ": dy dtype ", dy.scalar_type(), " must equal x dtype ",
              x.scalar_type());
  TORCH_CHECK(dy.device() == x.device(), op, ": dy is on ", dy.device(), " but x is on ", x.device());
}

// 5-D x: the 4-D view (N, C, D*H, W) of x (contiguous or channels_last_3d: the view is contiguous or
// channels_last), whose statistics are those of nearest up(x).
inline at::Tensor merge_dh(const at::Tensor& x) {
  return x.as_strided({x.size(0), x.size(1), x.size(2) * x.size(3), x.size(4)},
                      {x.stride(0), x.stride(1), x.stride(3), x.stride(4)});
}

}  // namespace vkernels::norm_act
