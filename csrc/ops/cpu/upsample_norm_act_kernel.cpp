// upsample_norm_act on CPU (see ops/upsample_norm_act.h for the split into stats + apply; the vector helpers and the
// shifted statistics it shares with spade_norm_act are in norm_act_cpu_common.h).
// fp16/bf16 computed in fp32 (loaded / stored through at::vec conversions), fp64 in fp64.
// Per element of the output (s = scale, M = N*C*H*W input elements, 4 = sizeof(fp32)):
//  - stats: one pass, sums of (u - shift) and (u - shift)^2, shift = the group's first value (keeps the one-pass
//    formula free of cancellation when |mean| >> std); NCHW: fp32 vector block sums (4 chains, <= 256 values)
//    folded into fp64 (shifted_sums), channels_last: fp64. Nearest: nearest upsampling by an integer factor
//    repeats every input value s*s times, so the statistics are those of x itself: reads x once (M*4 bytes).
//    Bilinear NCHW: from x alone through the Gram form of the interpolation (BilStats): reads x once, ~8 FLOPs
//    per input element, no upsampled value is formed. Bilinear channels_last: blended per output pixel.
//    channels_last: per-channel partial sums per (sample, block of rows), combined in a fixed order (deterministic
//    for any thread count).
//  - apply: reads x once, writes the s*s*M outputs once, vectorised with at::vec; nearest evaluates the activation
//    once per input element (1 FMA + act per input) and for s == 2 interleaves each result vector with itself and
//    stores it to both output rows from registers; bilinear interpolates each input row horizontally once, then
//    every output row is one vector pass (2 mul + 1 add blend, FMA + act per output); s == 2 NCHW normalises x
//    before interpolating and writes both output rows of an input row pair in one loop (mul + FMA + act per output).
// The per-element activation / gain / clamp is bias_act's (ops/bias_act_math.h, bias_act::apply, instantiated on
// scalars for the tails and on at::vec vectors for the body, as bias_act's own CPU loop does).
// Layouts: NCHW (and any non-channels_last strides, read through a contiguous copy): parallel over planes / input
// rows; channels_last: parallel over rows of pixels, vectors run along C, which is contiguous in x and out.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/cpu/norm_act_cpu_common.h"
#include "ops/upsample_norm_act.h"

namespace vkernels::norm_act {
namespace {

using at::vec::Vectorized;
using bias_act::Act;

// Horizontal linear interpolation of one input row (W values) into OW = W * s opmath values. For s == 2 the interior
// is vectorised: even outputs blend x[k-1], x[k], odd ones x[k], x[k+1], with the same (constant) weights make_lin
// gives, interleaved into place.
template <class scalar_t>
struct HRow {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  const Lin<opmath_t>* lw;
  int64_t W, OW, s;
  std::vector<opmath_t> xb;  // the row in opmath (fp16/bf16 only)

  HRow(const std::vector<Lin<opmath_t>>& l, int64_t w, int64_t s_)
      : lw(l.data()), W(w), OW(w * s_), s(s_), xb(V<scalar_t>::kReduced ? w : 0) {}

  void operator()(const scalar_t* src, opmath_t* dst) {
    const opmath_t* x;
    if constexpr (V<scalar_t>::kReduced) {
      V<scalar_t>::to_opmath(src, xb.data(), W);
      x = xb.data();
    } else {
      x = src;
    }
    int64_t ow = 0;
    constexpr int64_t F = fVec::size();
    if (s == 2 && W >= F + 2) {
      for (; ow < 2; ++ow) dst[ow] = lw[ow].l0 * x[lw[ow].i0] + lw[ow].l1 * x[lw[ow].i1];
      const fVec e0(lw[2].l0), e1(lw[2].l1), o0(lw[1].l0), o1(lw[1].l1);
      int64_t k = 1;
      for (; k + F <= W - 1; k += F) {
        const fVec xm = fVec::loadu(x + k - 1), x0 = fVec::loadu(x + k), xp = fVec::loadu(x + k + 1);
        auto [lo, hi] = at::vec::interleave2(e0 * xm + e1 * x0, o0 * x0 + o1 * xp);
        lo.store(dst + 2 * k);
        hi.store(dst + 2 * k + F);
      }
      ow = 2 * k;
    }
    for (; ow < OW; ++ow) dst[ow] = lw[ow].l0 * x[lw[ow].i0] + lw[ow].l1 * x[lw[ow].i1];
  }
};

// Two horizontally interpolated input rows, keyed by a global row id; consecutive output rows of a plane share
// their input rows, so every input row is interpolated about once (s == 2: output rows 2k+1, 2k+2 both come from
// input rows k, k+1).
template <class scalar_t>
struct RowPair {
  using opmath_t = at::opmath_type<scalar_t>;
  HRow<scalar_t> h;
  std::vector<opmath_t> buf;
  int64_t key[2] = {-1, -1};

  RowPair(const std::vector<Lin<opmath_t>>& lw, int64_t W, int64_t s) : h(lw, W, s), buf(2 * W * s) {}

  const opmath_t* get(int64_t k, const scalar_t* src, int64_t keep) {
    for (int j = 0; j < 2; ++j)
      if (key[j] == k) return buf.data() + j * h.OW;
    const int j = key[0] == keep ? 1 : 0;
    h(src, buf.data() + j * h.OW);
    key[j] = k;
    return buf.data() + j * h.OW;
  }
};

// Bilinear statistics without forming the upsampled values. Separable linear interpolation is u = A_h X A_w^T
// (A: make_lin's table as a matrix, every output row blending two neighbouring inputs), so with d = x - shift
// (the weights sum to 1: up(x) - shift = up(x - shift)):
//   sum(u - shift)   = ch^T D cw                                    (ch, cw: column sums of A_h, A_w)
//   sum((u-shift)^2) = sum_{i,i'} Gh[i][i'] d_i^T Gw d_i'           (G = A^T A, tridiagonal)
// i.e. per input element one 3-tap product g = Gw d_i and two FMAs (d_i . g weighted by Gh's diagonal, d_{i-1} . g
// by twice Gh's off-diagonal) instead of s*s blended values each summed and squared. G is positive definite (s = 2:
// eigenvalues of Gw in [0.5, 2], condition <= 16), so the quadratic form does not cancel. Reads x once; ~8 FLOPs per
// input element (vs ~6 per output = 24 per input for s = 2 through the blended rows).
template <class scalar_t>
struct BilStats {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  static constexpr int64_t F = fVec::size();
  int64_t H, W, Wp;
  std::vector<opmath_t> cw, gd, gl, gr;  // per input column (zero past W): column sum, Gram diagonal, left, right
  std::vector<opmath_t> ch, hd, ho;      // per input row: column sum, Gram diagonal, 2 * Gram to the previous row
  std::vector<opmath_t> buf;             // three zero-padded rows of d: current, previous, zeros

  // Column sums, diagonal and superdiagonal of A^T A, accumulated in fp64 from the compute-type weights.
  static void gram(int64_t in, int64_t s, std::vector<double>& c, std::vector<double>& d, std::vector<double>& o) {
    c.assign(in, 0.0), d.assign(in, 0.0), o.assign(in, 0.0);
    for (const auto& q : make_lin<opmath_t>(in, s)) {
      const double l0 = double(q.l0), l1 = double(q.l1);
      if (q.i0 == q.i1) {
        c[q.i0] += l0 + l1;
        d[q.i0] += (l0 + l1) * (l0 + l1);
      } else {
        c[q.i0] += l0, c[q.i1] += l1;
        d[q.i0] += l0 * l0, d[q.i1] += l1 * l1;
        o[q.i0] += l0 * l1;
      }
    }
  }

  BilStats(int64_t h, int64_t w, int64_t s) : H(h), W(w), Wp((w + F - 1) / F * F) {
    std::vector<double> c, d, o;
    gram(W, s, c, d, o);
    cw.assign(Wp, 0), gd.assign(Wp, 0), gl.assign(Wp, 0), gr.assign(Wp, 0);
    for (int64_t j = 0; j < W; ++j) {
      cw[j] = opmath_t(c[j]), gd[j] = opmath_t(d[j]), gr[j] = opmath_t(o[j]);
      gl[j] = j > 0 ? opmath_t(o[j - 1]) : opmath_t(0);
    }
    gram(H, s, c, d, o);
    ch.resize(H), hd.resize(H), ho.resize(H);
    for (int64_t i = 0; i < H; ++i) {
      ch[i] = opmath_t(c[i]), hd[i] = opmath_t(d[i]);
      ho[i] = i > 0 ? opmath_t(2 * o[i - 1]) : opmath_t(0);
    }
    buf.assign(3 * (Wp + 2), opmath_t(0));
  }

  // Adds the shifted sums of one plane's upsampled values to a.
  void plane(const scalar_t* p, opmath_t shift, Acc& a) {
    const int64_t L = Wp + 2;
    opmath_t* rows[2] = {buf.data(), buf.data() + L};
    const opmath_t* zero = buf.data() + 2 * L;
    const fVec sh(shift);
    fVec A1[4], A2[4];
    auto reset = [&] {
      for (int k = 0; k < 4; ++k) A1[k] = fVec(0), A2[k] = fVec(0);
    };
    auto fold = [&] {
      alignas(64) opmath_t b1[F], b2[F];
      ((A1[0] + A1[1]) + (A1[2] + A1[3])).store(b1);
      ((A2[0] + A2[1]) + (A2[2] + A2[3])).store(b2);
      for (int64_t l = 0; l < F; ++l) a.s1 += double(b1[l]), a.s2 += double(b2[l]);
      reset();
    };
    reset();
    // fp32 partial sums of <= kTerms vector terms per accumulator before folding into fp64 (terms are O(var)).
    constexpr int64_t kTerms = std::is_same_v<opmath_t, float> ? 32 : 1024;
    int64_t terms = 0;
    for (int64_t i = 0; i < H; ++i) {
      opmath_t* cur = rows[i & 1] + 1;
      const opmath_t* prev = i > 0 ? rows[(i - 1) & 1] + 1 : zero + 1;
      const scalar_t* src = p + i * W;
      int64_t j = 0;
      if constexpr (V<scalar_t>::kReduced) {
        V<scalar_t>::to_opmath(src, cur, W);
        for (; j + F <= W; j += F) (fVec::loadu(cur + j) - sh).store(cur + j);
        for (; j < W; ++j) cur[j] -= shift;
      } else {
        for (; j + F <= W; j += F) (fVec::loadu(src + j) - sh).store(cur + j);
        for (; j < W; ++j) cur[j] = src[j] - shift;
      }
      const fVec chv(ch[i]), hdv(hd[i]), hov(ho[i]);
      int k = 0;
      for (j = 0; j < Wp; j += F, k = (k + 1) & 3) {
        const fVec d = fVec::loadu(cur + j);
        const fVec g = at::vec::fmadd(fVec::loadu(gr.data() + j), fVec::loadu(cur + j + 1),
                                      at::vec::fmadd(fVec::loadu(gl.data() + j), fVec::loadu(cur + j - 1),
                                                     fVec::loadu(gd.data() + j) * d));
        const fVec e = at::vec::fmadd(hov, fVec::loadu(prev + j), hdv * d);
        A2[k] = at::vec::fmadd(e, g, A2[k]);
        A1[k] = at::vec::fmadd(chv, fVec::loadu(cw.data() + j) * d, A1[k]);
      }
      terms += Wp / F;
      if (terms >= 4 * kTerms || i == H - 1) {
        fold();
        terms = 0;
      }
    }
  }
};

template <class scalar_t>
void stats_cpu_impl(const at::Tensor& x, int64_t s, Mode mode, bool per_sample, bool cl, at::Tensor& mean,
                    at::Tensor& var) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const bool bil = mode == Mode::kBilinear && s > 1;
  const int64_t OH = bil ? H * s : H, OW = bil ? W * s : W;
  const auto lh = make_lin<opmath_t>(H, s), lw = make_lin<opmath_t>(W, s);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  auto* mp = mean.mutable_data_ptr<opmath_t>();
  auto* vp = var.mutable_data_ptr<opmath_t>();
  const int64_t groups = per_sample ? N * C : C;
  const int64_t n_per = per_sample ? 1 : N;
  const double count = static_cast<double>(n_per * OH * OW);
  auto finish = [&](int64_t g, const Acc& a) {
    const int64_t c = g % C, nb = per_sample ? g / C : 0;
    const double shift = double(opmath_t(cl ? xp[nb * H * W * C + c] : xp[(nb * C + c) * H * W]));
    finish_stats(a, shift, count, mp[g], vp[g]);
  };
  if (!cl) {
    // NCHW: parallel over groups; a group is n_per contiguous planes.
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      std::optional<BilStats<scalar_t>> bs;
      std::vector<opmath_t> row(V<scalar_t>::kReduced && !bil ? std::min(kSumChunk, H * W) : 0);
      if (bil) bs.emplace(H, W, s);
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t c = g % C, nb = per_sample ? g / C : 0;
        const opmath_t sh = opmath_t(xp[(nb * C + c) * H * W]);
        Acc a;
        for (int64_t n = nb; n < nb + n_per; ++n) {
          const int64_t plane = n * C + c;
          const scalar_t* p = xp + plane * H * W;
          if (!bil) {  // nearest: the statistics of x itself
            plane_sums<scalar_t>(p, H * W, sh, a, row);
            continue;
          }
          bs->plane(p, sh, a);
        }
        finish(g, a);
      }
    });
    return;
  }
  // channels_last: channel innermost. Work items are (sample, block of output rows) with per-channel partial sums,
  // combined in a fixed order afterwards (deterministic for any thread count).
  constexpr int64_t kRows = 8;
  const int64_t blocks = (OH + kRows - 1) / kRows, items = N * blocks;
  std::vector<double> part(items * 2 * C);
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::vector<opmath_t> u(C);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / blocks, oh0 = (it % blocks) * kRows, oh1 = std::min(OH, oh0 + kRows);
      const scalar_t* xs = xp + n * H * W * C;
      const scalar_t* sh = xp + (per_sample ? n : 0) * H * W * C;  // shift row: pixel (0, 0) of the group
      double* s1 = part.data() + it * 2 * C;
      double* s2 = s1 + C;
      std::fill(s1, s1 + 2 * C, 0.0);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        for (int64_t ow = 0; ow < OW; ++ow) {
          if (!bil) {
            const scalar_t* px = xs + (oh * W + ow) * C;
            for (int64_t c = 0; c < C; ++c) u[c] = opmath_t(px[c]);
          } else {
            const auto& y = lh[oh];
            const auto& q = lw[ow];
            const scalar_t* p00 = xs + (y.i0 * W + q.i0) * C;
            const scalar_t* p01 = xs + (y.i0 * W + q.i1) * C;
            const scalar_t* p10 = xs + (y.i1 * W + q.i0) * C;
            const scalar_t* p11 = xs + (y.i1 * W + q.i1) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const opmath_t t0 = q.l0 * opmath_t(p00[c]) + q.l1 * opmath_t(p01[c]);
              const opmath_t t1 = q.l0 * opmath_t(p10[c]) + q.l1 * opmath_t(p11[c]);
              u[c] = y.l0 * t0 + y.l1 * t1;
            }
          }
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const double d = double(u[c]) - double(opmath_t(sh[c]));
            s1[c] += d;
            s2[c] += d * d;
          }
        }
      }
    }
  });
  at::parallel_for(0, groups, 64, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t c = g % C;
      const int64_t nb = per_sample ? g / C : 0;
      Acc a;
      for (int64_t n = nb; n < nb + n_per; ++n)
        for (int64_t b = 0; b < blocks; ++b) {
          const double* p = part.data() + (n * blocks + b) * 2 * C;
          a.s1 += p[c];
          a.s2 += p[C + c];
        }
      finish(g, a);
    }
  });
}

// 5-D trilinear statistics: one task per group, the upsampled values of each output row formed (Up3, 8 taps) into
// an opmath row and added to the group's shifted sums (shift: the group's first input value). Reads x through the
// strides of x (contiguous or channels_last_3d); fixed order per group, deterministic.
template <class scalar_t>
void stats3d_trilinear(const at::Tensor& x, int64_t s, bool per_sample, at::Tensor& mean, at::Tensor& var) {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  const int64_t N = x.size(0), C = x.size(1), D = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t OD = D * s, OH = H * s, OW = W * s, sn = x.stride(0), sc = x.stride(1);
  const Up3<scalar_t> up(D, H, W, s, true, x.stride(2), x.stride(3), x.stride(4));
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  auto* mp = mean.mutable_data_ptr<opmath_t>();
  auto* vp = var.mutable_data_ptr<opmath_t>();
  const int64_t groups = per_sample ? N * C : C, n_per = per_sample ? 1 : N;
  const double count = static_cast<double>(n_per * OD * OH * OW);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<opmath_t> u(OW);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t c = g % C, nb = per_sample ? g / C : 0;
      const opmath_t sh = opmath_t(xp[nb * sn + c * sc]);
      Acc a;
      for (int64_t n = nb; n < nb + n_per; ++n) {
        const scalar_t* p = xp + n * sn + c * sc;
        for (int64_t od = 0; od < OD; ++od)
          for (int64_t oh = 0; oh < OH; ++oh) {
            for (int64_t ow = 0; ow < OW; ++ow) u[ow] = up(p, od, oh, ow);
            const opmath_t* q = u.data();
            shifted_sums<opmath_t>(OW, sh, [&](int64_t i) { return fVec::loadu(q + i); },
                                   [&](int64_t i) { return q[i]; }, a);
          }
      }
      finish_stats(a, double(sh), count, mp[g], vp[g]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> stats_cpu(const at::Tensor& x_in, int64_t scale, c10::string_view mode_s,
                                             bool per_sample) {
  constexpr std::string_view op = "upsample_norm_act_stats";
  check_x45(op, x_in);
  TORCH_CHECK(scale >= 1, op, ": scale must be an integer >= 1, got ", scale);
  const Mode mode = parse_mode_for(op, std::string_view(mode_s.data(), mode_s.size()), x_in.dim());
  const auto ct = compute_type(x_in.scalar_type());
  const int64_t N = x_in.size(0), C = x_in.size(1);
  auto shape = per_sample ? std::vector<int64_t>{N, C} : std::vector<int64_t>{C};
  at::Tensor mean = at::empty(shape, x_in.options().dtype(ct));
  at::Tensor var = at::empty(shape, x_in.options().dtype(ct));
  if (mean.numel() == 0) return {mean, var};
  if (x_in.numel() == 0) {  // statistics of an empty set, as torch's mean / var give them
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {mean, var};
  }
  if (x_in.dim() == 5) {
    const bool cl = is_channels_last_3d(x_in);
    const at::Tensor x = x_in.contiguous(cl ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous);
    if (mode == Mode::kBilinear && scale > 1) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_norm_act_stats3d_cpu",
                                      [&] { stats3d_trilinear<scalar_t>(x, scale, per_sample, mean, var); });
    } else {  // nearest: the statistics of x itself, through the 4-D pass on the (N, C, D*H, W) view
      stats_into(merge_dh(x), 1, Mode::kNearest, per_sample, cl, mean, var);
    }
    return {mean, var};
  }
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  stats_into(x, scale, mode, per_sample, cl, mean, var);
  return {mean, var};
}

// ---------------------------------------------------------------------------------------------------------------
// apply: out = clamp(act(up(x) * a + b) * gain)
// ---------------------------------------------------------------------------------------------------------------
// What every apply path reads: the input, the per-(n, c) mean / a / b (opmath), the output and the epilogue.
template <Act A, class scalar_t>
struct ApplyArgs {
  const scalar_t* x;
  const at::opmath_type<scalar_t>* mean;
  const at::opmath_type<scalar_t>* a;
  const at::opmath_type<scalar_t>* b;
  scalar_t* out;
  int64_t N, C, H, W, s;
  Epi<A, scalar_t> f;
};

// Vector epilogue of kStep values u (opmath) with per-channel constants (broadcast or rows).
template <Act A, class scalar_t>
inline void epilogue_step(const Epi<A, scalar_t>& f, const typename V<scalar_t>::fVec* u,
                          const typename V<scalar_t>::fVec* mv, const typename V<scalar_t>::fVec* av,
                          const typename V<scalar_t>::fVec* bv, typename V<scalar_t>::fVec* y) {
  for (int k = 0; k < V<scalar_t>::kN; ++k) y[k] = f(u[k], mv[k], av[k], bv[k]);
}

// Nearest (or no) upsampling, NCHW.
template <Act A, class scalar_t>
void apply_nearest_nchw(const ApplyArgs<A, scalar_t>& g) {
  using T = V<scalar_t>;
  using opmath_t = typename T::opmath_t;
  using fVec = typename T::fVec;
  constexpr int kN = T::kN;
  constexpr int64_t kStep = T::kStep;
  const Epi<A, scalar_t> f = g.f;
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W, s = g.s, OH = g.H * g.s, OW = g.W * g.s;
  const scalar_t* xp = g.x;
  const opmath_t* mp = g.mean;
  const opmath_t* ap = g.a;
  const opmath_t* bp = g.b;
  scalar_t* op = g.out;
  // One input row -> s output rows: the activation runs once per input element; for s == 2 each result vector
  // is interleaved with itself and stored to both output rows from registers.
  at::parallel_for(0, N * C * H, std::max<int64_t>(1, 4096 / std::max<int64_t>(W * s * s, 1)),
                   [&](int64_t r0, int64_t r1) {
    std::vector<scalar_t> tmp(s > 2 ? W : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t nc = r / H, h = r % H;
      const opmath_t mv = mp[nc], av = ap[nc], bv = bp[nc];
      fVec mvv[kN], avv[kN], bvv[kN];
      for (int k = 0; k < kN; ++k) mvv[k] = fVec(mv), avv[k] = fVec(av), bvv[k] = fVec(bv);
      const scalar_t* src = xp + r * W;
      scalar_t* dst = op + (nc * OH + h * s) * OW;
      int64_t w = 0;
      if (s == 1) {
        for (; w + kStep <= W; w += kStep) {
          fVec y[kN];
          epilogue_step(f, T::load(src + w).v, mvv, avv, bvv, y);
          T::pack(y).store(dst + w);
        }
        for (; w < W; ++w) dst[w] = f(opmath_t(src[w]), mv, av, bv);
      } else if (s == 2) {
        for (; w + kStep <= W; w += kStep) {
          fVec y[kN], z[2 * kN];
          epilogue_step(f, T::load(src + w).v, mvv, avv, bvv, y);
          for (int k = 0; k < kN; ++k) std::tie(z[2 * k], z[2 * k + 1]) = at::vec::interleave2(y[k], y[k]);
          for (int k = 0; k < 2; ++k) {
            const auto sv = T::pack(z + k * kN);
            sv.store(dst + 2 * w + k * kStep);
            sv.store(dst + OW + 2 * w + k * kStep);
          }
        }
        for (; w < W; ++w) {
          const scalar_t t = f(opmath_t(src[w]), mv, av, bv);
          dst[2 * w] = dst[2 * w + 1] = dst[OW + 2 * w] = dst[OW + 2 * w + 1] = t;
        }
      } else {
        for (; w + kStep <= W; w += kStep) {
          fVec y[kN];
          epilogue_step(f, T::load(src + w).v, mvv, avv, bvv, y);
          T::pack(y).store(tmp.data() + w);
        }
        for (; w < W; ++w) tmp[w] = f(opmath_t(src[w]), mv, av, bv);
        for (int64_t i = 0; i < W; ++i)
          for (int64_t k = 0; k < s; ++k) dst[i * s + k] = tmp[i];
        for (int64_t k = 1; k < s; ++k) std::memcpy(dst + k * OW, dst, OW * sizeof(scalar_t));
      }
    }
  });
}

// Nearest (or no) upsampling, channels_last.
template <Act A, class scalar_t>
void apply_nearest_cl(const ApplyArgs<A, scalar_t>& g) {
  using T = V<scalar_t>;
  using opmath_t = typename T::opmath_t;
  using fVec = typename T::fVec;
  constexpr int kN = T::kN;
  constexpr int64_t kStep = T::kStep;
  const Epi<A, scalar_t> f = g.f;
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W, s = g.s, OH = g.H * g.s, OW = g.W * g.s;
  const scalar_t* xp = g.x;
  const opmath_t* mp = g.mean;
  const opmath_t* ap = g.a;
  const opmath_t* bp = g.b;
  scalar_t* op = g.out;
  // channels_last: each pixel's C values are one vector run, stored to its s*s output pixels.
  at::parallel_for(0, N * H, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / H, h = r % H;
      const opmath_t* mr = mp + n * C;
      const opmath_t* ar = ap + n * C;
      const opmath_t* br = bp + n * C;
      const scalar_t* src = xp + r * W * C;
      scalar_t* dst = op + ((n * OH + h * s) * OW) * C;
      for (int64_t w = 0; w < W; ++w) {
        const scalar_t* sp = src + w * C;
        scalar_t* d0 = dst + w * s * C;
        int64_t c = 0;
        for (; c + kStep <= C; c += kStep) {
          fVec y[kN];
          epilogue_step(f, T::load(sp + c).v, T::loadf(mr + c).v, T::loadf(ar + c).v, T::loadf(br + c).v, y);
          const auto sv = T::pack(y);
          for (int64_t dy = 0; dy < s; ++dy)
            for (int64_t dx = 0; dx < s; ++dx) sv.store(d0 + (dy * OW + dx) * C + c);
        }
        for (; c < C; ++c) {
          const scalar_t t = f(opmath_t(sp[c]), mr[c], ar[c], br[c]);
          for (int64_t dy = 0; dy < s; ++dy)
            for (int64_t dx = 0; dx < s; ++dx) d0[(dy * OW + dx) * C + c] = t;
        }
      }
    }
  });
}

// Bilinear upsampling by 2, NCHW.
template <Act A, class scalar_t>
void apply_bilinear2_nchw(const ApplyArgs<A, scalar_t>& g) {
  using T = V<scalar_t>;
  using opmath_t = typename T::opmath_t;
  using fVec = typename T::fVec;
  constexpr int kN = T::kN;
  constexpr int64_t kF = T::kF, kStep = T::kStep;
  const Epi<A, scalar_t> f = g.f;
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W, OH = g.H * g.s, OW = g.W * g.s;
  const scalar_t* xp = g.x;
  const opmath_t* mp = g.mean;
  const opmath_t* ap = g.a;
  const opmath_t* bp = g.b;
  scalar_t* op = g.out;
  // s == 2: output rows 2k+1, 2k+2 both blend input rows k, k+1 with the constant weights (3/4, 1/4), (1/4, 3/4)
  // (make_lin's, exact in binary); columns likewise. The affine is applied to x before interpolating (the weights
  // sum to 1: (up(x) - m) * a = up((x - m) * a)): 2 FLOPs per input instead of per output. Each input row is
  // normalised (t), interpolated horizontally once (h, 2 mul + 2 FMA + interleave per input vector), and both
  // output rows it shares with the previous input row are emitted in one loop from the same loads (mul + FMA +
  // the activation per output). Rows 0 and OH-1 are the edge rows' h itself.
  const int64_t Wr = (W + kF - 1) / kF * kF;
  at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / (OH * OW)), [&](int64_t p0, int64_t p1) {
    std::vector<opmath_t> t(Wr + 2), hb(2 * 2 * Wr);
    const fVec q1(opmath_t(0.25)), q3(opmath_t(0.75)), zv(0);
    for (int64_t p = p0; p < p1; ++p) {
      const opmath_t mv = mp[p], av = ap[p], bv = bp[p];
      const fVec mvv(mv), avv(av), bvv(bv);
      const scalar_t* src = xp + p * H * W;
      scalar_t* dst = op + p * OH * OW;
      auto hrow = [&](int64_t k, opmath_t* h) {
        const scalar_t* r = src + k * W;
        opmath_t* tt = t.data() + 1;
        int64_t j = 0;
        for (; j + kStep <= W; j += kStep) {
          const auto v = T::load(r + j);
          for (int q = 0; q < kN; ++q) ((v.v[q] - mvv) * avv).store(tt + j + q * kF);
        }
        for (; j < W; ++j) tt[j] = (opmath_t(r[j]) - mv) * av;
        tt[-1] = tt[0], tt[W] = tt[W - 1];  // edge columns blend with themselves (make_lin clamps)
        for (j = 0; j + kF <= W; j += kF) {
          const fVec xm = fVec::loadu(tt + j - 1), x0 = fVec::loadu(tt + j), xq = fVec::loadu(tt + j + 1);
          auto [lo, hi] = at::vec::interleave2(at::vec::fmadd(q3, x0, q1 * xm), at::vec::fmadd(q1, xq, q3 * x0));
          lo.store(h + 2 * j);
          hi.store(h + 2 * j + kF);
        }
        for (; j < W; ++j) {
          h[2 * j] = opmath_t(0.75) * tt[j] + opmath_t(0.25) * tt[j - 1];
          h[2 * j + 1] = opmath_t(0.25) * tt[j + 1] + opmath_t(0.75) * tt[j];
        }
        h[0] = tt[0];
      };
      auto epi = [&](const fVec& u) { return bias_act::apply<A, bias_act::Mode::kForward>(u, bvv, zv, f.pv); };
      auto epis = [&](opmath_t u) {
        return static_cast<scalar_t>(bias_act::apply<A, bias_act::Mode::kForward>(u, bv, opmath_t(0), f.ps));
      };
      auto emit1 = [&](const opmath_t* h, scalar_t* d) {
        int64_t o = 0;
        for (; o + kStep <= OW; o += kStep) {
          fVec z[kN];
          for (int q = 0; q < kN; ++q) z[q] = epi(fVec::loadu(h + o + q * kF));
          T::pack(z).store(d + o);
        }
        for (; o < OW; ++o) d[o] = epis(h[o]);
      };
      auto emit2 = [&](const opmath_t* h0, const opmath_t* h1, scalar_t* d) {
        int64_t o = 0;
        for (; o + kStep <= OW; o += kStep) {
          fVec z0[kN], z1[kN];
          for (int q = 0; q < kN; ++q) {
            const fVec a0 = fVec::loadu(h0 + o + q * kF), a1 = fVec::loadu(h1 + o + q * kF);
            z0[q] = epi(at::vec::fmadd(q1, a1, q3 * a0));
            z1[q] = epi(at::vec::fmadd(q3, a1, q1 * a0));
          }
          T::pack(z0).store(d + o);
          T::pack(z1).store(d + OW + o);
        }
        for (; o < OW; ++o) {
          d[o] = epis(opmath_t(0.75) * h0[o] + opmath_t(0.25) * h1[o]);
          d[OW + o] = epis(opmath_t(0.25) * h0[o] + opmath_t(0.75) * h1[o]);
        }
      };
      opmath_t* hr[2] = {hb.data(), hb.data() + 2 * Wr};
      hrow(0, hr[0]);
      emit1(hr[0], dst);
      for (int64_t k = 1; k < H; ++k) {
        hrow(k, hr[k & 1]);
        emit2(hr[(k - 1) & 1], hr[k & 1], dst + (2 * k - 1) * OW);
      }
      emit1(hr[(H - 1) & 1], dst + (OH - 1) * OW);
    }
  });
}

// Bilinear upsampling by any s > 1, NCHW.
template <Act A, class scalar_t>
void apply_bilinear_nchw(const ApplyArgs<A, scalar_t>& g,
                         const std::vector<Lin<at::opmath_type<scalar_t>>>& lh,
                         const std::vector<Lin<at::opmath_type<scalar_t>>>& lw) {
  using T = V<scalar_t>;
  using opmath_t = typename T::opmath_t;
  using fVec = typename T::fVec;
  constexpr int kN = T::kN;
  constexpr int64_t kF = T::kF, kStep = T::kStep;
  const Epi<A, scalar_t> f = g.f;
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W, s = g.s, OH = g.H * g.s, OW = g.W * g.s;
  const scalar_t* xp = g.x;
  const opmath_t* mp = g.mean;
  const opmath_t* ap = g.a;
  const opmath_t* bp = g.b;
  scalar_t* op = g.out;
  // Output rows of a plane in order; each input row is horizontally interpolated once (RowPair), then every
  // output row is a vertical blend of two such rows + the epilogue, one vector pass.
  at::parallel_for(0, N * C * OH, std::max<int64_t>(1, 4096 / OW), [&](int64_t r0, int64_t r1) {
    RowPair<scalar_t> rp(lw, W, s);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t nc = r / OH, oh = r % OH;
      const opmath_t mv = mp[nc], av = ap[nc], bv = bp[nc];
      fVec mvv[kN], avv[kN], bvv[kN];
      for (int k = 0; k < kN; ++k) mvv[k] = fVec(mv), avv[k] = fVec(av), bvv[k] = fVec(bv);
      const auto& y = lh[oh];
      const scalar_t* plane = xp + nc * H * W;
      const opmath_t* h0 = rp.get(nc * H + y.i0, plane + y.i0 * W, nc * H + y.i1);
      const opmath_t* h1 = rp.get(nc * H + y.i1, plane + y.i1 * W, nc * H + y.i0);
      scalar_t* dst = op + r * OW;
      const fVec l0(y.l0), l1(y.l1);
      int64_t ow = 0;
      for (; ow + kStep <= OW; ow += kStep) {
        fVec u[kN], z[kN];
        for (int k = 0; k < kN; ++k)
          u[k] = l0 * fVec::loadu(h0 + ow + k * kF) + l1 * fVec::loadu(h1 + ow + k * kF);
        epilogue_step(f, u, mvv, avv, bvv, z);
        T::pack(z).store(dst + ow);
      }
      for (; ow < OW; ++ow) dst[ow] = f(y.l0 * h0[ow] + y.l1 * h1[ow], mv, av, bv);
    }
  });
}

// Bilinear upsampling by any s > 1, channels_last.
template <Act A, class scalar_t>
void apply_bilinear_cl(const ApplyArgs<A, scalar_t>& g,
                       const std::vector<Lin<at::opmath_type<scalar_t>>>& lh,
                       const std::vector<Lin<at::opmath_type<scalar_t>>>& lw) {
  using T = V<scalar_t>;
  using opmath_t = typename T::opmath_t;
  using fVec = typename T::fVec;
  constexpr int kN = T::kN;
  constexpr int64_t kStep = T::kStep;
  const Epi<A, scalar_t> f = g.f;
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W, OH = g.H * g.s, OW = g.W * g.s;
  const scalar_t* xp = g.x;
  const opmath_t* mp = g.mean;
  const opmath_t* ap = g.a;
  const opmath_t* bp = g.b;
  scalar_t* op = g.out;
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
      const fVec yl0(y.l0), yl1(y.l1);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const auto& q = lw[ow];
        const fVec ql0(q.l0), ql1(q.l1);
        const scalar_t* p00 = s0 + q.i0 * C;
        const scalar_t* p01 = s0 + q.i1 * C;
        const scalar_t* p10 = s1 + q.i0 * C;
        const scalar_t* p11 = s1 + q.i1 * C;
        scalar_t* d = dst + ow * C;
        int64_t c = 0;
        for (; c + kStep <= C; c += kStep) {
          const auto a00 = T::load(p00 + c), a01 = T::load(p01 + c), a10 = T::load(p10 + c), a11 = T::load(p11 + c);
          fVec u[kN], z[kN];
          for (int k = 0; k < kN; ++k)
            u[k] = yl0 * (ql0 * a00.v[k] + ql1 * a01.v[k]) + yl1 * (ql0 * a10.v[k] + ql1 * a11.v[k]);
          epilogue_step(f, u, T::loadf(mr + c).v, T::loadf(ar + c).v, T::loadf(br + c).v, z);
          T::pack(z).store(d + c);
        }
        for (; c < C; ++c) {
          const opmath_t t0 = q.l0 * opmath_t(p00[c]) + q.l1 * opmath_t(p01[c]);
          const opmath_t t1 = q.l0 * opmath_t(p10[c]) + q.l1 * opmath_t(p11[c]);
          d[c] = f(y.l0 * t0 + y.l1 * t1, mr[c], ar[c], br[c]);
        }
      }
    }
  });
}

// One pass over x: every path evaluates the epilogue once per output (nearest: once per input) with u = up(x).
template <Act A, class scalar_t>
void apply_cpu_impl(const at::Tensor& x, const at::Tensor& m, const at::Tensor& a, const at::Tensor& b, int64_t s,
                    Mode mode, const bias_act::Params<double>& params, at::Tensor& out, bool cl) {
  using opmath_t = at::opmath_type<scalar_t>;
  const ApplyArgs<A, scalar_t> g{x.const_data_ptr<scalar_t>(),    m.const_data_ptr<opmath_t>(),
                                 a.const_data_ptr<opmath_t>(),    b.const_data_ptr<opmath_t>(),
                                 out.mutable_data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2), x.size(3), s,
                                 Epi<A, scalar_t>(params)};
  if (mode != Mode::kBilinear || s == 1) return cl ? apply_nearest_cl(g) : apply_nearest_nchw(g);
  if (!cl && s == 2) return apply_bilinear2_nchw(g);
  const auto lh = make_lin<opmath_t>(g.H, s), lw = make_lin<opmath_t>(g.W, s);
  cl ? apply_bilinear_cl(g, lh, lw) : apply_bilinear_nchw(g, lh, lw);
}

// 5-D x (nearest or trilinear by s along D, H, W): the epilogue once per output on u = up(x) (Up3), scalar.
// Contiguous: parallel over output rows (n, c, od, oh); channels_last_3d: over output rows of pixels (n, od, oh),
// C innermost in x and out.
template <Act A, class scalar_t>
void apply3d_impl(const at::Tensor& x, const at::Tensor& m, const at::Tensor& a, const at::Tensor& b, int64_t s,
                  bool tri, const bias_act::Params<double>& params, at::Tensor& out, bool cl) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Epi<A, scalar_t> f(params);
  const int64_t N = x.size(0), C = x.size(1), D = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t OD = D * s, OH = H * s, OW = W * s, sn = x.stride(0), sc = x.stride(1);
  const Up3<scalar_t> up(D, H, W, s, tri, x.stride(2), x.stride(3), x.stride(4));
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const opmath_t* mp = m.const_data_ptr<opmath_t>();
  const opmath_t* ap = a.const_data_ptr<opmath_t>();
  const opmath_t* bp = b.const_data_ptr<opmath_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  if (!cl) {
    at::parallel_for(0, N * C * OD * OH, std::max<int64_t>(1, 4096 / OW), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t oh = r % OH, od = (r / OH) % OD, nc = r / (OH * OD);
        const scalar_t* p = xp + (nc / C) * sn + (nc % C) * sc;
        const opmath_t mv = mp[nc], av = ap[nc], bv = bp[nc];
        scalar_t* d = op + r * OW;
        for (int64_t ow = 0; ow < OW; ++ow) d[ow] = f(up(p, od, oh, ow), mv, av, bv);
      }
    });
    return;
  }
  at::parallel_for(0, N * OD * OH, std::max<int64_t>(1, 4096 / (OW * C)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t oh = r % OH, od = (r / OH) % OD, n = r / (OH * OD);
      const opmath_t* mr = mp + n * C;
      const opmath_t* ar = ap + n * C;
      const opmath_t* br = bp + n * C;
      scalar_t* d = op + r * OW * C;
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t c = 0; c < C; ++c) d[ow * C + c] = f(up(xp + n * sn + c, od, oh, ow), mr[c], ar[c], br[c]);
    }
  });
}

at::Tensor apply_cpu(const at::Tensor& x_in, const at::Tensor& m, const at::Tensor& a, const at::Tensor& b,
                     int64_t scale,
                     c10::string_view mode_s, c10::string_view act_s, double alpha, double gain,
                     std::optional<double> clamp) {
  const auto [mode, act] = check_apply_args("upsample_norm_act", x_in, m, a, b, scale, mode_s, act_s, clamp);
  if (x_in.dim() == 5) {
    const bool cl = is_channels_last_3d(x_in);
    const auto fmt = cl ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
    const at::Tensor x = x_in.contiguous(fmt);
    at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2) * scale, x.size(3) * scale, x.size(4) * scale},
                               x.options(), fmt);
    if (out.numel() == 0) return out;
    const at::Tensor mean_c = m.contiguous(), ac = a.contiguous(), bc = b.contiguous();
    const auto params = make_params(alpha, gain, clamp);
    const bool tri = mode == Mode::kBilinear && scale > 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_norm_act3d_cpu", [&] {
      dispatch_act(act, [&]<Act A>() { apply3d_impl<A, scalar_t>(x, mean_c, ac, bc, scale, tri, params, out, cl); });
    });
    return out;
  }
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2) * scale, x.size(3) * scale}, x.options(), fmt);
  if (out.numel() == 0) return out;
  const at::Tensor mean_c = m.contiguous(), ac = a.contiguous(), bc = b.contiguous();
  const auto params = make_params(alpha, gain, clamp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_norm_act_cpu", [&] {
    dispatch_act(act, [&]<Act A>() { apply_cpu_impl<A, scalar_t>(x, mean_c, ac, bc, scale, mode, params, out, cl); });
  });
  return out;
}

}  // namespace

void stats_into(const at::Tensor& x, int64_t s, Mode mode, bool per_sample, bool cl, at::Tensor& mean,
                at::Tensor& var) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_norm_act_stats_cpu",
                                  [&] { stats_cpu_impl<scalar_t>(x, s, mode, per_sample, cl, mean, var); });
}

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("upsample_norm_act_stats", &stats_cpu);
  m.impl("upsample_norm_act", &apply_cpu);
}

}  // namespace vkernels::norm_act
