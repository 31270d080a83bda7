// upsample_norm_act / spade_norm_act on CPU (see ops/upsample_norm_act.h for the split into stats + apply).
// fp16/bf16 computed in fp32, statistics accumulated in fp64 (two passes: mean, then sum of squared deviations).
// Per element of the output (s = scale, M = N*C*H*W input elements, 4 = sizeof(fp32)):
//  - stats, nearest: reads x twice (2*M*4 bytes for fp32), no writes beyond (N*)C floats; nearest upsampling by an
//    integer factor repeats every input value s*s times, so mean and variance are those of x itself.
//  - stats, bilinear: the upsampled values are formed on the fly in a row buffer (6 FLOPs each, twice), never
//    written; x is read from cache for each of the ~2s rows that touch it.
//  - apply: reads x once, writes the s*s*M outputs once; nearest evaluates the activation once per input element
//    and replicates it (1 FMA + act per input), bilinear 6 FLOPs + FMA + act per output.
//  - spade: reads x, gamma, beta, writes out: 4 tensors of M elements; ~5 FLOPs + act per element.
// The per-element activation / gain / clamp is bias_act's (ops/bias_act_math.h), shared with its CPU and CUDA code.
// Layouts: NCHW (and any non-channels_last strides, read through a contiguous copy): parallel over planes / input
// rows; channels_last: parallel over rows of pixels, inner loop over C, which is contiguous in x and out.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "ops/upsample_norm_act.h"

namespace vkernels::norm_act {
namespace {

using bias_act::Act;

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

bool is_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Calls f.template operator()<A>() with the runtime activation as a template argument.
template <class F>
void dispatch_act(Act act, F&& f) {
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

bias_act::Params<double> make_params(double alpha, double gain, std::optional<double> clamp) {
  return {alpha, gain, gain != 0 ? 1.0 / gain : 0.0, clamp.value_or(0.0), -clamp.value_or(0.0), clamp.has_value()};
}

// ---------------------------------------------------------------------------------------------------------------
// statistics
// ---------------------------------------------------------------------------------------------------------------
template <class scalar_t>
void stats_cpu_impl(const at::Tensor& x, int64_t s, Mode mode, bool per_sample, at::Tensor& mean, at::Tensor& var) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const bool bil = mode == Mode::kBilinear && s > 1;
  const int64_t OH = bil ? H * s : H, OW = bil ? W * s : W;
  const auto lh = make_lin<opmath_t>(H, s), lw = make_lin<opmath_t>(W, s);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  auto* mp = mean.mutable_data_ptr<opmath_t>();
  auto* vp = var.mutable_data_ptr<opmath_t>();
  const int64_t groups = per_sample ? N * C : C;
  const int64_t n_per = per_sample ? 1 : N;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<double> row(OW);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t c = g % C, nb = per_sample ? g / C : 0;
      // Calls fn(row) for every row of the (upsampled) values of this group.
      auto for_rows = [&](auto&& fn) {
        for (int64_t n = nb; n < nb + n_per; ++n) {
          const scalar_t* p = xp + n * sn + c * sc;
          for (int64_t oh = 0; oh < OH; ++oh) {
            if (!bil) {
              const scalar_t* r = p + oh * sh;
              for (int64_t w = 0; w < W; ++w) row[w] = static_cast<double>(static_cast<opmath_t>(r[w * sw]));
            } else {
              const auto& y = lh[oh];
              const scalar_t* r0 = p + y.i0 * sh;
              const scalar_t* r1 = p + y.i1 * sh;
              for (int64_t ow = 0; ow < OW; ++ow) {
                const auto& q = lw[ow];
                const opmath_t a = q.l0 * opmath_t(r0[q.i0 * sw]) + q.l1 * opmath_t(r0[q.i1 * sw]);
                const opmath_t b = q.l0 * opmath_t(r1[q.i0 * sw]) + q.l1 * opmath_t(r1[q.i1 * sw]);
                row[ow] = static_cast<double>(y.l0 * a + y.l1 * b);
              }
            }
            fn(row.data());
          }
        }
      };
      const double count = static_cast<double>(n_per * OH * OW);
      double sum = 0;
      double mu = 0;
      if (!bil && sw == 1) {
        // Contiguous rows of x (NCHW): accumulate straight from x, vectorised, no row buffer.
        for (int pass = 0; pass < 2; ++pass) {
          double tot = 0;
          for (int64_t n = nb; n < nb + n_per; ++n) {
            const scalar_t* p = xp + n * sn + c * sc;
            for (int64_t h = 0; h < H; ++h) {
              const scalar_t* r = p + h * sh;
              double acc = 0;
              if (pass == 0) {
#pragma omp simd reduction(+ : acc)
                for (int64_t w = 0; w < W; ++w) acc += static_cast<double>(static_cast<opmath_t>(r[w]));
              } else {
#pragma omp simd reduction(+ : acc)
                for (int64_t w = 0; w < W; ++w) {
                  const double d = static_cast<double>(static_cast<opmath_t>(r[w])) - mu;
                  acc += d * d;
                }
              }
              tot += acc;
            }
          }
          if (pass == 0) {
            sum = tot;
            mu = sum / count;
          } else {
            sum = tot;
          }
        }
        mp[g] = static_cast<opmath_t>(mu);
        vp[g] = static_cast<opmath_t>(sum / count);
        continue;
      }
      for_rows([&](const double* r) {
        double acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < OW; ++i) acc += r[i];
        sum += acc;
      });
      mu = sum / count;
      double m2 = 0;
      for_rows([&](const double* r) {
        double acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < OW; ++i) acc += (r[i] - mu) * (r[i] - mu);
        m2 += acc;
      });
      vp[g] = static_cast<opmath_t>(m2 / count);
      mp[g] = static_cast<opmath_t>(mu);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> stats_cpu(const at::Tensor& x, int64_t scale, c10::string_view mode_s,
                                             bool per_sample) {
  constexpr std::string_view op = "upsample_norm_act_stats";
  check_x(op, x);
  TORCH_CHECK(scale >= 1, op, ": scale must be an integer >= 1, got ", scale);
  const Mode mode = parse_mode(op, std::string_view(mode_s.data(), mode_s.size()));
  const auto ct = compute_type(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1);
  auto shape = per_sample ? std::vector<int64_t>{N, C} : std::vector<int64_t>{C};
  at::Tensor mean = at::empty(shape, x.options().dtype(ct));
  at::Tensor var = at::empty(shape, x.options().dtype(ct));
  if (mean.numel() == 0) return {mean, var};
  if (x.numel() == 0) {  // statistics of an empty set, as torch's mean / var give them
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {mean, var};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_norm_act_stats_cpu",
                                  [&] { stats_cpu_impl<scalar_t>(x, scale, mode, per_sample, mean, var); });
  return {mean, var};
}

// ---------------------------------------------------------------------------------------------------------------
// apply: out = clamp(act(up(x) * a + b) * gain)
// ---------------------------------------------------------------------------------------------------------------
template <Act A, class scalar_t>
void apply_cpu_impl(const at::Tensor& x, const at::Tensor& m, const at::Tensor& a, const at::Tensor& b, int64_t s,
                    Mode mode,
                    const bias_act::Params<double>& pd, at::Tensor& out, bool cl) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto ps = bias_act::cast_params<opmath_t>(pd);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OH = H * s, OW = W * s;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const opmath_t* mp = m.const_data_ptr<opmath_t>();
  const opmath_t* ap = a.const_data_ptr<opmath_t>();
  const opmath_t* bp = b.const_data_ptr<opmath_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  // The mean is subtracted before scaling (not folded into b) so large means do not cancel in fp32.
  auto f = [&](opmath_t u, opmath_t mv, opmath_t av, opmath_t bv) {
    return static_cast<scalar_t>(bias_act::apply<A, bias_act::Mode::kForward>((u - mv) * av, bv, opmath_t(0), ps));
  };
  const bool bil = mode == Mode::kBilinear && s > 1;
  if (!bil) {
    // One input row -> s output rows: the activation runs once per input element, then is replicated.
    if (!cl) {
      at::parallel_for(0, N * C * H, std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t nc = r / H, h = r % H;
          const opmath_t mv = mp[nc], av = ap[nc], bv = bp[nc];
          const scalar_t* src = xp + r * W;
          scalar_t* dst = op + (nc * OH + h * s) * OW;
          if (s == 1) {
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) dst[w] = f(opmath_t(src[w]), mv, av, bv);
            continue;
          }
          for (int64_t w = 0; w < W; ++w) {
            const scalar_t t = f(opmath_t(src[w]), mv, av, bv);
            for (int64_t k = 0; k < s; ++k) dst[w * s + k] = t;
          }
          for (int64_t k = 1; k < s; ++k) std::memcpy(dst + k * OW, dst, OW * sizeof(scalar_t));
        }
      });
    } else {
      at::parallel_for(0, N * H, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = r / H, h = r % H;
          const opmath_t* mr = mp + n * C;
          const opmath_t* ar = ap + n * C;
          const opmath_t* br = bp + n * C;
          const scalar_t* src = xp + r * W * C;
          scalar_t* dst = op + ((n * OH + h * s) * OW) * C;
          for (int64_t w = 0; w < W; ++w) {
            scalar_t* d0 = dst + w * s * C;
            const scalar_t* sp = src + w * C;
            for (int64_t c = 0; c < C; ++c) d0[c] = f(opmath_t(sp[c]), mr[c], ar[c], br[c]);
            for (int64_t k = 1; k < s; ++k) std::memcpy(d0 + k * C, d0, C * sizeof(scalar_t));
          }
          for (int64_t k = 1; k < s; ++k) std::memcpy(dst + k * OW * C, dst, OW * C * sizeof(scalar_t));
        }
      });
    }
    return;
  }
  const auto lh = make_lin<opmath_t>(H, s), lw = make_lin<opmath_t>(W, s);
  if (!cl) {
    at::parallel_for(0, N * C * OH, std::max<int64_t>(1, 4096 / OW), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t nc = r / OH, oh = r % OH;
        const opmath_t mv = mp[nc], av = ap[nc], bv = bp[nc];
        const auto& y = lh[oh];
        const scalar_t* s0 = xp + (nc * H + y.i0) * W;
        const scalar_t* s1 = xp + (nc * H + y.i1) * W;
        scalar_t* dst = op + r * OW;
        for (int64_t ow = 0; ow < OW; ++ow) {
          const auto& q = lw[ow];
          const opmath_t t0 = q.l0 * opmath_t(s0[q.i0]) + q.l1 * opmath_t(s0[q.i1]);
          const opmath_t t1 = q.l0 * opmath_t(s1[q.i0]) + q.l1 * opmath_t(s1[q.i1]);
          dst[ow] = f(y.l0 * t0 + y.l1 * t1, mv, av, bv);
        }
      }
    });
  } else {
    at::parallel_for(0, N * OH, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / OH, oh = r % OH;
        const opmath_t* mr = mp + n * C;
        const opmath_t* ar = ap + n * C;
        const opmath_t* br = bp + n * C;
        const auto& y = lh[oh];
        const scalar_t* s0 = xp + (n * H + y.i0) * W * C;
        const scalar_t* s1 = xp + (n * H + y.i1) * W * C;
        scalar_t* dst = op + r * OW * C;
        for (int64_t ow = 0; ow < OW; ++ow) {
          const auto& q = lw[ow];
          const scalar_t* p00 = s0 + q.i0 * C;
          const scalar_t* p01 = s0 + q.i1 * C;
          const scalar_t* p10 = s1 + q.i0 * C;
          const scalar_t* p11 = s1 + q.i1 * C;
          scalar_t* d = dst + ow * C;
          for (int64_t c = 0; c < C; ++c) {
            const opmath_t t0 = q.l0 * opmath_t(p00[c]) + q.l1 * opmath_t(p01[c]);
            const opmath_t t1 = q.l0 * opmath_t(p10[c]) + q.l1 * opmath_t(p11[c]);
            d[c] = f(y.l0 * t0 + y.l1 * t1, mr[c], ar[c], br[c]);
          }
        }
      }
    });
  }
}

at::Tensor apply_cpu(const at::Tensor& x_in, const at::Tensor& m, const at::Tensor& a, const at::Tensor& b,
                     int64_t scale,
                     c10::string_view mode_s, c10::string_view act_s, double alpha, double gain,
                     std::optional<double> clamp) {
  constexpr std::string_view op = "upsample_norm_act";
  check_x(op, x_in);
  TORCH_CHECK(scale >= 1, op, ": scale must be an integer >= 1, got ", scale);
  const Mode mode = parse_mode(op, std::string_view(mode_s.data(), mode_s.size()));
  const Act act = parse_act(op, std::string_view(act_s.data(), act_s.size()));
  TORCH_CHECK(!clamp || *clamp >= 0, op, ": clamp must be None or >= 0, got ", clamp ? *clamp : 0.0);
  check_ab(op, x_in, m, "mean");
  check_ab(op, x_in, a, "a");
  check_ab(op, x_in, b, "b");
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2) * scale, x.size(3) * scale}, x.options(), fmt);
  if (out.numel() == 0) return out;
  const at::Tensor mc = m.contiguous(), ac = a.contiguous(), bc = b.contiguous();
  const auto pd = make_params(alpha, gain, clamp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_norm_act_cpu", [&] {
    dispatch_act(act, [&]<Act A>() { apply_cpu_impl<A, scalar_t>(x, mc, ac, bc, scale, mode, pd, out, cl); });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// spade: out = clamp(act((x * a + b) * (1 + gamma) + beta) * gain)
// ---------------------------------------------------------------------------------------------------------------
template <Act A, class scalar_t>
void spade_cpu_impl(const at::Tensor& x, const at::Tensor& gm, const at::Tensor& bt, const at::Tensor& a,
                    const at::Tensor& b, const bias_act::Params<double>& pd, at::Tensor& out, bool cl) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto ps = bias_act::cast_params<opmath_t>(pd);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gp = gm.const_data_ptr<scalar_t>();
  const scalar_t* tp = bt.const_data_ptr<scalar_t>();
  const opmath_t* ap = a.const_data_ptr<opmath_t>();
  const opmath_t* bp = b.const_data_ptr<opmath_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const opmath_t one(1);
  auto f = [&](int64_t i, opmath_t av, opmath_t bv) {
    const opmath_t xn = (opmath_t(xp[i]) - av) * bv;  // (x - mean) * rstd
    return static_cast<scalar_t>(bias_act::apply<A, bias_act::Mode::kForward>(
        xn * (one + opmath_t(gp[i])), opmath_t(tp[i]), opmath_t(0), ps));
  };
  if (!cl) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1)), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const opmath_t av = ap[p], bv = bp[p];
#pragma omp simd
        for (int64_t i = p * HW; i < (p + 1) * HW; ++i) op[i] = f(i, av, bv);
      }
    });
  } else {
    at::parallel_for(0, N * HW, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t n = q / HW;
        const opmath_t* ar = ap + n * C;
        const opmath_t* br = bp + n * C;
        for (int64_t c = 0; c < C; ++c) op[q * C + c] = f(q * C + c, ar[c], br[c]);
      }
    });
  }
}

at::Tensor like(const at::Tensor& t, const at::Tensor& out) {
  if (t.strides() == out.strides()) return t;
  return at::empty_like(out).copy_(t);
}

at::Tensor spade_cpu(const at::Tensor& x_in, const at::Tensor& a, const at::Tensor& b, const at::Tensor& gamma,
                     const at::Tensor& beta, c10::string_view act_s, double alpha, double gain,
                     std::optional<double> clamp) {
  constexpr std::string_view op = "spade_norm_act";
  check_x(op, x_in);
  const Act act = parse_act(op, std::string_view(act_s.data(), act_s.size()));
  TORCH_CHECK(!clamp || *clamp >= 0, op, ": clamp must be None or >= 0, got ", clamp ? *clamp : 0.0);
  check_ab(op, x_in, a, "mean");
  check_ab(op, x_in, b, "rstd");
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"gamma", &gamma}, {"beta", &beta}}) {
    TORCH_CHECK(t->sizes() == x_in.sizes(), op, ": ", name, " must have x's shape ", x_in.sizes(), ", got ",
                t->sizes());
    TORCH_CHECK(t->scalar_type() == x_in.scalar_type(), op, ": ", name, " dtype ", t->scalar_type(),
                " must equal x dtype ", x_in.scalar_type());
    TORCH_CHECK(t->device() == x_in.device(), op, ": ", name, " is on ", t->device(), " but x is on ", x_in.device());
  }
  const bool cl = is_channels_last(x_in);
  at::Tensor out = at::empty(x_in.sizes(), x_in.options(),
                             cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const at::Tensor x = like(x_in, out), gm = like(gamma, out), bt = like(beta, out);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const auto pd = make_params(alpha, gain, clamp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_norm_act_cpu", [&] {
    dispatch_act(act, [&]<Act A>() { spade_cpu_impl<A, scalar_t>(x, gm, bt, ac, bc, pd, out, cl); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("upsample_norm_act_stats", &stats_cpu);
  m.impl("upsample_norm_act", &apply_cpu);
  m.impl("spade_norm_act", &spade_cpu);
}

}  // namespace vkernels::norm_act
