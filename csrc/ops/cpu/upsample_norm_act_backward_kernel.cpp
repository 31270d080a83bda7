// Backward of upsample_norm_act / upsample_norm_act_stats on CPU: the ops upsample_norm_act_backward and
// upsample_norm_act_stats_backward (first order; the ops' own gradients are the differentiable composites in
// vkernels/ops/upsample_norm_act.py; spade_norm_act's backward is spade_norm_act_backward_kernel.cpp). Nothing of
// output size is materialised: the upsampled values u = up(x) are recomputed from x row by row, dz and the adjoint
// of the upsampling are applied on the fly into a per-plane (NCHW) or per-sample (channels_last) accumulator of
// input size.
// Per upsampled element (s = scale, M = N*C*H*W input elements, E = s*s*M, b = sizeof(dtype)):
//  - upsample_norm_act_backward: reads dy (E*b) and x (M*b), writes dx (M*b), one pass. dz = dy * gain *
//    act'(z) (bias_act's kGrad1X math, z recomputed from u) ~ 6 FLOPs + act', two fp64 sums (dz, dz * (u - m)) for
//    db / da, then the adjoint: nearest adds dz into its source pixel (1 add), bilinear into its 4 sources (~8 FLOPs).
//  - upsample_norm_act_stats_backward: du = gmean / K + 2 gvar / K * (u - mean) is affine in u, so for nearest the
//    adjoint is closed form per input pixel (dx = s^2 * du(x): reads x, writes dx, 3 FLOPs per input element);
//    bilinear recomputes u and applies the adjoint stencil as above (no dy read).
// Reductions run in fp64 per element in a fixed order (one thread owns a plane or a sample), so results are
// deterministic for any thread count. Layouts: NCHW (other strides go through a contiguous copy) parallel over
// planes; channels_last parallel over samples with per-channel accumulators.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/cpu/norm_act_cpu_common.h"
#include "ops/upsample_norm_act.h"

namespace vkernels::norm_act {
namespace {

using bias_act::Act;

// dz of upsample_norm_act for upsampled value u of group g (= n * C + c); accumulates db and da.
template <Act A, class opmath_t>
struct ApplyGrad {
  static constexpr bool kHasDy = true;
  const opmath_t *m, *a, *b;
  bias_act::Params<opmath_t> ps;
  opmath_t dz(int64_t g, opmath_t u, opmath_t dy, double& r1, double& r2) const {
    const opmath_t xc = u - m[g];
    const opmath_t d = bias_act::apply<A, bias_act::Mode::kGrad1X>(xc * a[g], b[g], dy, ps);
    r1 += double(d);
    r2 += double(d) * double(xc);
    return d;
  }
  opmath_t post(int64_t g) const { return a[g]; }  // dx = A^T (dz * a), a constant per plane
  // dz of a row of n upsampled values u (opmath) with dy (scalar_t) on at::vec vectors; the two sums accumulate
  // per lane in opmath over blocks of at most kBlock steps, folded into r1, r2 (fp64) lane by lane after each
  // block: an order fixed by n alone, so deterministic for any thread count.
  template <class scalar_t>
  void row(int64_t g, const opmath_t* u, const scalar_t* dy, opmath_t* dz, int64_t n, double& r1,
           double& r2) const {
    using IO = VecIO<scalar_t>;
    using fVec = typename IO::fVec;
    constexpr int kN = IO::kN;
    constexpr int64_t kStep = IO::kStep, kF = IO::kF, kBlock = 256;
    const auto pv = bias_act::cast_params<fVec>(ps);
    const fVec mv(m[g]), av(a[g]), bv(b[g]);
    opmath_t lanes[kN * kF];
    int64_t i = 0;
    while (i + kStep <= n) {
      fVec a1[kN], a2[kN];
      for (int k = 0; k < kN; ++k) a1[k] = fVec(0), a2[k] = fVec(0);
      const int64_t end = std::min(n - kStep, i + (kBlock - 1) * kStep);
      for (; i <= end; i += kStep) {
        fVec dv[kN];
        IO::load(dy + i, dv);
        for (int k = 0; k < kN; ++k) {
          const fVec xc = fVec::loadu(u + i + k * kF) - mv;
          const fVec d = bias_act::apply<A, bias_act::Mode::kGrad1X>(xc * av, bv, dv[k], pv);
          d.store(dz + i + k * kF);
          a1[k] = a1[k] + d;
          a2[k] = at::vec::fmadd(d, xc, a2[k]);
        }
      }
      for (int k = 0; k < kN; ++k) a1[k].store(lanes + k * kF);
      for (int64_t l = 0; l < kN * kF; ++l) r1 += double(lanes[l]);
      for (int k = 0; k < kN; ++k) a2[k].store(lanes + k * kF);
      for (int64_t l = 0; l < kN * kF; ++l) r2 += double(lanes[l]);
    }
    for (; i < n; ++i) dz[i] = this->dz(g, u[i], opmath_t(dy[i]), r1, r2);
  }
};

// du of upsample_norm_act_stats: gmean / K + 2 gvar / K * (u - mean) per group (c1 = gmean / K, c2 = 2 gvar / K).
template <class opmath_t>
struct StatsGrad {
  static constexpr bool kHasDy = false;
  const opmath_t *c1, *c2, *m;
  opmath_t mult;  // s^2 for nearest (closed form: the adjoint of repeating a pixel s^2 times)
  opmath_t dz(int64_t g, opmath_t u, opmath_t, double&, double&) const { return c1[g] + c2[g] * (u - m[g]); }
  opmath_t post(int64_t) const { return mult; }
  template <class scalar_t>
  void row(int64_t g, const opmath_t* u, const scalar_t*, opmath_t* dz, int64_t n, double&, double&) const {
    for (int64_t i = 0; i < n; ++i) dz[i] = c1[g] + c2[g] * (u[i] - m[g]);  // u - m first: no cancellation
  }
};

// What both layouts' adjoint passes read (see adjoint_impl).
template <class scalar_t>
struct AdjointArgs {
  const scalar_t* x;
  const scalar_t* dy;  // nullptr when the row functor takes no dy
  scalar_t* dx;        // nullptr: statistics only
  int64_t N, C, H, W, s;
  bool bil;
  std::vector<Lin<at::opmath_type<scalar_t>>> lh, lw;
};

// NCHW: one task per plane, output rows in order, the plane's dx accumulated in an opmath buffer.
template <class scalar_t, class G>
void adjoint_nchw(const AdjointArgs<scalar_t>& args, const G& gr, double* r1, double* r2) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = args.N, C = args.C, H = args.H, W = args.W, s = args.s, OH = H * s, OW = W * s;
  const bool bil = args.bil;
  const scalar_t* xp = args.x;
  const scalar_t* dyp = args.dy;
  scalar_t* dxp = args.dx;
  const auto& lh = args.lh;
  const auto& lw = args.lw;
  at::parallel_for(0, N * C, 1, [&](int64_t g0, int64_t g1) {
    std::vector<opmath_t> acc(dxp ? H * W : 0), u(OW), dz(OW), hadj(bil ? W : 0), hr(bil ? 2 * OW : 0);
    int64_t key[2] = {-1, -1};
    // Horizontally interpolated input row h of the plane (two cached: consecutive output rows share them).
    auto hrow = [&](const scalar_t* plane, int64_t h, int64_t keep) -> const opmath_t* {
      for (int j = 0; j < 2; ++j)
        if (key[j] == h) return hr.data() + j * OW;
      const int j = key[0] == keep ? 1 : 0;
      opmath_t* d = hr.data() + j * OW;
      const scalar_t* r = plane + h * W;
      for (int64_t ow = 0; ow < OW; ++ow) d[ow] = lw[ow].l0 * opmath_t(r[lw[ow].i0]) + lw[ow].l1 * opmath_t(r[lw[ow].i1]);
      key[j] = h;
      return d;
    };
    for (int64_t g = g0; g < g1; ++g) {
      const scalar_t* plane = xp + g * H * W;
      const scalar_t* dyg = G::kHasDy ? dyp + g * OH * OW : nullptr;
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      key[0] = key[1] = -1;
      double s1 = 0, s2 = 0;
      for (int64_t oh = 0; oh < OH; ++oh) {
        const Lin<opmath_t>& y = lh[oh];
        if (!bil) {
          const scalar_t* r = plane + (oh / s) * W;
          if (s == 1) {
            for (int64_t ow = 0; ow < OW; ++ow) u[ow] = opmath_t(r[ow]);
          } else if (s == 2) {
            for (int64_t w = 0; w < W; ++w) u[2 * w] = u[2 * w + 1] = opmath_t(r[w]);
          } else {
            for (int64_t ow = 0; ow < OW; ++ow) u[ow] = opmath_t(r[ow / s]);
          }
        } else {
          const opmath_t* h0 = hrow(plane, y.i0, y.i1);
          const opmath_t* h1 = hrow(plane, y.i1, y.i0);
          for (int64_t ow = 0; ow < OW; ++ow) u[ow] = y.l0 * h0[ow] + y.l1 * h1[ow];
        }
        gr.template row<scalar_t>(g, u.data(), G::kHasDy ? dyg + oh * OW : nullptr, dz.data(), OW, s1, s2);
        if (!dxp) continue;
        if (!bil) {
          opmath_t* ar = acc.data() + (oh / s) * W;
          if (s == 1) {
            for (int64_t ow = 0; ow < OW; ++ow) ar[ow] += dz[ow];
          } else if (s == 2) {
            for (int64_t w = 0; w < W; ++w) ar[w] += dz[2 * w] + dz[2 * w + 1];
          } else {
            for (int64_t ow = 0; ow < OW; ++ow) ar[ow / s] += dz[ow];
          }
        } else {
          std::fill(hadj.begin(), hadj.end(), opmath_t(0));
          for (int64_t ow = 0; ow < OW; ++ow) {
            hadj[lw[ow].i0] += lw[ow].l0 * dz[ow];
            hadj[lw[ow].i1] += lw[ow].l1 * dz[ow];
          }
          opmath_t* a0 = acc.data() + y.i0 * W;
          opmath_t* a1 = acc.data() + y.i1 * W;
          for (int64_t w = 0; w < W; ++w) a0[w] += y.l0 * hadj[w];
          for (int64_t w = 0; w < W; ++w) a1[w] += y.l1 * hadj[w];
        }
      }
      if (r1) r1[g] = s1, r2[g] = s2;
      if (dxp) {
        const opmath_t p = gr.post(g);
        scalar_t* d = dxp + g * H * W;
        for (int64_t i = 0; i < H * W; ++i) d[i] = static_cast<scalar_t>(acc[i] * p);
      }
    }
  });
}

// channels_last: tasks are (sample, block of hb input rows), C contiguous. A task owns dx rows [h0, h1) and
// visits every output row whose taps reach them (bilinear: also the rows next to the block, recomputing their dz),
// adding only the taps that land in its rows, in output-row order as a whole-sample pass would (so dx does not
// depend on the blocking). The sums count the output rows [h0 s, h1 s) only, per-channel fp64 per block, summed
// over blocks in block order afterwards (deterministic for any thread count; the block size depends on the
// shape only).
template <class scalar_t, class G>
void adjoint_cl(const AdjointArgs<scalar_t>& args, const G& gr, double* r1, double* r2) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = args.N, C = args.C, H = args.H, W = args.W, s = args.s, OH = H * s, OW = W * s;
  const bool bil = args.bil;
  const scalar_t* xp = args.x;
  const scalar_t* dyp = args.dy;
  scalar_t* dxp = args.dx;
  const auto& lh = args.lh;
  const auto& lw = args.lw;
  const int64_t hb = std::max<int64_t>(1, 4096 / std::max<int64_t>(W * s * s, 1));
  const int64_t nb = (H + hb - 1) / hb;
  std::vector<double> part(r1 ? 2 * N * nb * C : 0);
  at::parallel_for(0, N * nb, 1, [&](int64_t t0, int64_t t1) {
    std::vector<opmath_t> acc(dxp ? hb * W * C : 0), u(C), dz(C);
    std::vector<double> s1(C), s2(C);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nb, h0 = (t % nb) * hb, h1 = std::min(H, h0 + hb);
      const scalar_t* xs = xp + n * H * W * C;
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      std::fill(s1.begin(), s1.end(), 0.0);
      std::fill(s2.begin(), s2.end(), 0.0);
      const int64_t lo = bil ? std::max<int64_t>(0, (h0 - 1) * s) : h0 * s;
      const int64_t hi = bil ? std::min(OH, (h1 + 1) * s) : h1 * s;
      for (int64_t oh = lo; oh < hi; ++oh) {
        const Lin<opmath_t>& y = lh[oh];
        const bool own = oh >= h0 * s && oh < h1 * s;
        const bool t0in = y.i0 >= h0 && y.i0 < h1, t1in = y.i1 >= h0 && y.i1 < h1;
        if (bil && !own && !t0in && !t1in) continue;
        double dummy1 = 0, dummy2 = 0;
        for (int64_t ow = 0; ow < OW; ++ow) {
          const Lin<opmath_t>& q = lw[ow];
          if (!bil) {
            const scalar_t* p00 = xs + ((oh / s) * W + ow / s) * C;
            for (int64_t c = 0; c < C; ++c) u[c] = opmath_t(p00[c]);
          } else {
            const scalar_t* p00 = xs + (y.i0 * W + q.i0) * C;
            const scalar_t* p01 = xs + (y.i0 * W + q.i1) * C;
            const scalar_t* p10 = xs + (y.i1 * W + q.i0) * C;
            const scalar_t* p11 = xs + (y.i1 * W + q.i1) * C;
            for (int64_t c = 0; c < C; ++c) {
              const opmath_t a0 = q.l0 * opmath_t(p00[c]) + q.l1 * opmath_t(p01[c]);
              const opmath_t a1 = q.l0 * opmath_t(p10[c]) + q.l1 * opmath_t(p11[c]);
              u[c] = y.l0 * a0 + y.l1 * a1;
            }
          }
          const scalar_t* dyr = G::kHasDy ? dyp + ((n * OH + oh) * OW + ow) * C : nullptr;
          if (own) {
            for (int64_t c = 0; c < C; ++c)
              dz[c] = gr.dz(n * C + c, u[c], G::kHasDy ? opmath_t(dyr[c]) : opmath_t(0), s1[c], s2[c]);
          } else {
            for (int64_t c = 0; c < C; ++c)
              dz[c] = gr.dz(n * C + c, u[c], G::kHasDy ? opmath_t(dyr[c]) : opmath_t(0), dummy1, dummy2);
          }
          if (!dxp) continue;
          if (!bil) {
            opmath_t* ar = acc.data() + ((oh / s - h0) * W + ow / s) * C;
            for (int64_t c = 0; c < C; ++c) ar[c] += dz[c];
          } else {
            const std::array<std::tuple<bool, int64_t, opmath_t>, 4> taps = {
                {{t0in, (y.i0 - h0) * W + q.i0, y.l0 * q.l0}, {t0in, (y.i0 - h0) * W + q.i1, y.l0 * q.l1},
                 {t1in, (y.i1 - h0) * W + q.i0, y.l1 * q.l0}, {t1in, (y.i1 - h0) * W + q.i1, y.l1 * q.l1}}};
            for (const auto& [in, pix, wt] : taps) {
              if (!in) continue;
              opmath_t* ar = acc.data() + pix * C;
              for (int64_t c = 0; c < C; ++c) ar[c] += wt * dz[c];
            }
          }
        }
      }
      if (r1) {
        double* p = part.data() + 2 * t * C;
        for (int64_t c = 0; c < C; ++c) p[c] = s1[c], p[C + c] = s2[c];
      }
      if (dxp) {
        scalar_t* d = dxp + (n * H + h0) * W * C;
        for (int64_t i = 0; i < (h1 - h0) * W; ++i)
          for (int64_t c = 0; c < C; ++c) d[i * C + c] = static_cast<scalar_t>(acc[i * C + c] * gr.post(n * C + c));
      }
    }
  });
  if (r1) sum_blocks(part, N, nb, C, r1, r2);
}

// dx = post * A^T dz(up(x), dy) for the upsampling A (nearest or bilinear by s; s == 1 is the identity), with the
// per-group sums of G written to r1, r2 (N * C doubles each, may be null when G has none).
template <class scalar_t, class G>
void adjoint_impl(const at::Tensor& x, const at::Tensor* dy, int64_t s, bool bil, bool cl, const G& gr,
                  at::Tensor* dx, double* r1, double* r2) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t H = x.size(2), W = x.size(3);
  const AdjointArgs<scalar_t> args{x.const_data_ptr<scalar_t>(), G::kHasDy ? dy->const_data_ptr<scalar_t>() : nullptr,
                                   dx ? dx->mutable_data_ptr<scalar_t>() : nullptr, x.size(0), x.size(1), H, W, s, bil,
                                   make_lin<opmath_t>(H, s), make_lin<opmath_t>(W, s)};
  cl ? adjoint_cl(args, gr, r1, r2) : adjoint_nchw(args, gr, r1, r2);
}

// 5-D x: dx = post * A^T dz(up(x), dy) for nearest (tri false; s == 1 is the identity) or trilinear upsampling by s
// along D, H, W, with G's per-(n, c) sums into r1, r2 (may be null). One task per (n, c) plane: every output of the
// plane in order, u recomputed from x (Up3), dz scattered into the plane's opmath accumulator (nearest: its source;
// trilinear: its 8 taps), dx written once. Any strides (contiguous or channels_last_3d); deterministic.
template <class scalar_t, class G>
void adjoint3d(const at::Tensor& x, const at::Tensor* dy, int64_t s, bool tri, const G& gr, at::Tensor* dx, double* r1,
               double* r2) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), D = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t OD = D * s, OH = H * s, OW = W * s;
  const Up3<scalar_t> up(D, H, W, s, tri, x.stride(2), x.stride(3), x.stride(4));
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* dyp = G::kHasDy ? dy->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* dxp = dx ? dx->mutable_data_ptr<scalar_t>() : nullptr;
  const auto xs = x.strides();
  const std::vector<int64_t> ys = G::kHasDy ? dy->strides().vec() : std::vector<int64_t>(5, 0);
  const std::vector<int64_t> os = dx ? dx->strides().vec() : std::vector<int64_t>(5, 0);
  at::parallel_for(0, N * C, 1, [&](int64_t g0, int64_t g1) {
    std::vector<opmath_t> acc(dxp ? D * H * W : 0);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n = g / C, c = g % C;
      const scalar_t* p = xp + n * xs[0] + c * xs[1];
      const scalar_t* dyg = G::kHasDy ? dyp + n * ys[0] + c * ys[1] : nullptr;
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      double s1 = 0, s2 = 0;
      for (int64_t od = 0; od < OD; ++od)
        for (int64_t oh = 0; oh < OH; ++oh)
          for (int64_t ow = 0; ow < OW; ++ow) {
            const opmath_t dyv = G::kHasDy ? opmath_t(dyg[od * ys[2] + oh * ys[3] + ow * ys[4]]) : opmath_t(0);
            const opmath_t d = gr.dz(g, up(p, od, oh, ow), dyv, s1, s2);
            if (!dxp) continue;
            if (!tri) {
              acc[((od / s) * H + oh / s) * W + ow / s] += d;
              continue;
            }
            const Lin<opmath_t>&z = up.ld[od], &y = up.lh[oh], &q = up.lw[ow];
            for (const auto& [zi, zl] : {std::pair{z.i0, z.l0}, std::pair{z.i1, z.l1}})
              for (const auto& [yi, yl] : {std::pair{y.i0, y.l0}, std::pair{y.i1, y.l1}}) {
                opmath_t* ar = acc.data() + (zi * H + yi) * W;
                const opmath_t zyd = zl * yl * d;
                ar[q.i0] += q.l0 * zyd;
                ar[q.i1] += q.l1 * zyd;
              }
          }
      if (r1) r1[g] = s1, r2[g] = s2;
      if (dxp) {
        const opmath_t post = gr.post(g);
        scalar_t* dxg = dxp + n * os[0] + c * os[1];
        for (int64_t d = 0; d < D; ++d)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t w = 0; w < W; ++w)
              dxg[d * os[2] + h * os[3] + w * os[4]] = static_cast<scalar_t>(acc[(d * H + h) * W + w] * post);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> apply_backward_cpu(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& m, const at::Tensor& a, const at::Tensor& b,
    int64_t scale, c10::string_view mode_s, c10::string_view act_s, double alpha, double gain,
    std::optional<double> clamp, std::array<bool, 4> mask) {
  constexpr std::string_view op = "upsample_norm_act_backward";
  const auto [mode, act] = check_apply_args(op, x_in, m, a, b, scale, mode_s, act_s, clamp);
  const bool vol = x_in.dim() == 5;
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(vol ? 3 : 2), W = x_in.size(vol ? 4 : 3);
  if (vol) {
    check_dy(op, dy_in, x_in, {N, C, x_in.size(2) * scale, H * scale, W * scale});
  } else {
    check_dy(op, dy_in, x_in, {N, C, H * scale, W * scale});
  }
  const bool cl = vol ? is_channels_last_3d(x_in) : is_channels_last(x_in);
  const auto fmt = vol ? (cl ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous) : fmt_of(cl);
  const at::Tensor x = x_in.contiguous(fmt), dy = dy_in.contiguous(fmt);
  const auto ct = compute_type(x.scalar_type());
  at::Tensor dx = mask[0] ? at::empty(x.sizes(), x.options(), fmt) : empty0(x);
  const bool red = mask[1] || mask[2] || mask[3];
  at::Tensor s1 = at::zeros({N, C}, x.options().dtype(at::kDouble)), s2 = at::zeros_like(s1);
  if (x.numel() > 0 && (mask[0] || red)) {
    const at::Tensor mean_c = m.contiguous(), ac = a.contiguous(), bc = b.contiguous();
    const auto params = make_params(alpha, gain, clamp);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_norm_act_backward_cpu", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      dispatch_act(act, [&]<Act A>() {
        const ApplyGrad<A, opmath_t> gr{mean_c.const_data_ptr<opmath_t>(), ac.const_data_ptr<opmath_t>(),
                                        bc.const_data_ptr<opmath_t>(), bias_act::cast_params<opmath_t>(params)};
        if (vol) {
          adjoint3d<scalar_t>(x, &dy, scale, mode == Mode::kBilinear && scale > 1, gr, mask[0] ? &dx : nullptr,
                              s1.mutable_data_ptr<double>(), s2.mutable_data_ptr<double>());
          return;
        }
        adjoint_impl<scalar_t>(x, &dy, scale, mode == Mode::kBilinear && scale > 1, cl, gr, mask[0] ? &dx : nullptr,
                               s1.mutable_data_ptr<double>(), s2.mutable_data_ptr<double>());
      });
    });
  }
  at::Tensor db = s1.to(ct);
  at::Tensor dm = mask[1] ? -(s1 * a.to(at::kDouble)).to(ct) : empty0(db);
  at::Tensor da = mask[2] ? s2.to(ct) : empty0(db);
  return {dx, dm, da, mask[3] ? db : empty0(db)};
}

at::Tensor stats_backward_cpu(const at::Tensor& gmean, const at::Tensor& gvar, const at::Tensor& x_in,
                              const at::Tensor& mean, int64_t scale, c10::string_view mode_s, bool per_sample) {
  constexpr std::string_view op = "upsample_norm_act_stats_backward";
  check_x45(op, x_in);
  TORCH_CHECK(scale >= 1, op, ": scale must be an integer >= 1, got ", scale);
  const Mode mode = parse_mode_for(op, std::string_view(mode_s.data(), mode_s.size()), x_in.dim());
  const bool vol = x_in.dim() == 5;
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(vol ? 3 : 2), W = x_in.size(vol ? 4 : 3);
  const auto ct = compute_type(x_in.scalar_type());
  const std::vector<int64_t> shape = per_sample ? std::vector<int64_t>{N, C} : std::vector<int64_t>{C};
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"gmean", &gmean}, {"gvar", &gvar},
                         {"mean", &mean}}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ", at::IntArrayRef(shape),
                " (per_sample=", per_sample, "), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == ct, op, ": ", name, " must be ", ct, " for x of dtype ", x_in.scalar_type(),
                ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == x_in.device(), op, ": ", name, " is on ", t->device(), " but x is on ",
                x_in.device());
  }
  const bool cl = vol ? is_channels_last_3d(x_in) : is_channels_last(x_in);
  const auto fmt = vol ? (cl ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous) : fmt_of(cl);
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor dx = at::empty(x.sizes(), x.options(), fmt);
  if (x.numel() == 0) return dx;
  const double K = vol ? double((per_sample ? 1 : N) * x.size(2) * H * W * scale * scale * scale)
                       : double((per_sample ? 1 : N) * H * W * scale * scale);
  const at::Tensor c1 = (gmean / K).expand({N, C}).contiguous();
  const at::Tensor c2 = (gvar * (2.0 / K)).expand({N, C}).contiguous();
  const at::Tensor mean_c = mean.expand({N, C}).contiguous();
  const bool bil = mode == Mode::kBilinear && scale > 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_norm_act_stats_backward_cpu",
                                  [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    if (vol) {  // nearest: s^3 times the pixel's own du (run as scale 1)
      const StatsGrad<opmath_t> gr{c1.const_data_ptr<opmath_t>(), c2.const_data_ptr<opmath_t>(),
                                   mean_c.const_data_ptr<opmath_t>(), bil ? opmath_t(1) : opmath_t(scale * scale * scale)};
      adjoint3d<scalar_t>(x, nullptr, bil ? scale : 1, bil, gr, &dx, nullptr, nullptr);
      return;
    }
    const StatsGrad<opmath_t> gr{c1.const_data_ptr<opmath_t>(), c2.const_data_ptr<opmath_t>(),
                                 mean_c.const_data_ptr<opmath_t>(), bil ? opmath_t(1) : opmath_t(scale * scale)};
    adjoint_impl<scalar_t>(x, nullptr, bil ? scale : 1, bil, cl, gr, &dx, nullptr, nullptr);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("upsample_norm_act_backward", &apply_backward_cpu);
  m.impl("upsample_norm_act_stats_backward", &stats_backward_cpu);
}

}  // namespace vkernels::norm_act
