// spade_norm_act_backward on CPU (first order; the op's own gradient is the differentiable composite in
// vkernels/ops/spade_norm_act.py): reads dy, x, gamma, beta, writes dx, dgamma, dbeta (7 tensors of M = N*C*H*W
// elements), ~10 FLOPs + act' per element, two fp64 sums per (n, c). Reductions run in a fixed order (one thread owns
// a plane or a block of a sample), so results are deterministic for any thread count. Layouts: NCHW (other strides
// go through a contiguous copy) parallel over planes; channels_last parallel over (sample, pixel block) tasks.
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
#include <utility>
#include <vector>

#include "ops/cpu/norm_act_cpu_common.h"
#include "ops/upsample_norm_act.h"

namespace vkernels::norm_act {
namespace {

using bias_act::Act;

// spade: z = (x - m) * r * (1 + gamma) + beta; dz = dy * gain * act'(z); dx = dz * (1 + gamma) * r,
// dgamma = dz * xn, dbeta = dz; dm = -r * sum(dz * (1 + gamma)), dr = sum(dz * (1 + gamma) * (x - m)).
// The element math runs on at::vec vectors (scalar tail: the same bias_act::apply on scalars); the two sums
// accumulate in opmath over blocks of at most kBlock values per lane / channel and are folded into fp64 after
// each block, in an order fixed by the shape alone (deterministic for any thread count).
template <Act A, class scalar_t>
void spade_backward_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& gamma_c, const at::Tensor& beta_c,
                         const at::Tensor& m, const at::Tensor& r, const bias_act::Params<double>& params, bool cl,
                         scalar_t* dxp, scalar_t* dgp, scalar_t* dbp, double* s1, double* s2) {
  using opmath_t = at::opmath_type<scalar_t>;
  using IO = VecIO<scalar_t>;
  using fVec = typename IO::fVec;
  constexpr int kN = IO::kN;
  constexpr int64_t kStep = IO::kStep, kF = IO::kF, kBlock = 256;
  const auto ps = bias_act::cast_params<opmath_t>(params);
  const auto pv = bias_act::cast_params<fVec>(ps);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gp = gamma_c.const_data_ptr<scalar_t>();
  const scalar_t* tp = beta_c.const_data_ptr<scalar_t>();
  const opmath_t* mp = m.const_data_ptr<opmath_t>();
  const opmath_t* rp = r.const_data_ptr<opmath_t>();
  // kStep elements from offset i with per-lane mean / rstd mv, rv; accumulates dxn and dxn * xc into a1, a2.
  auto vstep = [&](int64_t i, const fVec* mv, const fVec* rv, fVec* a1, fVec* a2) {
    fVec xv[kN], gv[kN], tv[kN], dv[kN], ox[kN], og[kN], ob[kN];
    IO::load(xp + i, xv), IO::load(gp + i, gv), IO::load(tp + i, tv), IO::load(dyp + i, dv);
    for (int k = 0; k < kN; ++k) {
      const fVec xc = xv[k] - mv[k], xn = xc * rv[k], g1 = fVec(1) + gv[k];
      const fVec dz = bias_act::apply<A, bias_act::Mode::kGrad1X>(xn * g1, tv[k], dv[k], pv);
      const fVec dxn = dz * g1;
      ox[k] = dxn * rv[k], og[k] = dz * xn, ob[k] = dz;
      a1[k] = a1[k] + dxn;
      a2[k] = at::vec::fmadd(dxn, xc, a2[k]);
    }
    if (dxp) IO::store(dxp + i, ox);
    if (dgp) IO::store(dgp + i, og);
    if (dbp) IO::store(dbp + i, ob);
  };
  auto one = [&](int64_t i, opmath_t mg, opmath_t rg, opmath_t& a1, opmath_t& a2) {
    const opmath_t xc = opmath_t(xp[i]) - mg, xn = xc * rg, g1 = opmath_t(1) + opmath_t(gp[i]);
    const opmath_t dz = bias_act::apply<A, bias_act::Mode::kGrad1X>(xn * g1, opmath_t(tp[i]), opmath_t(dyp[i]), ps);
    const opmath_t dxn = dz * g1;
    if (dxp) dxp[i] = static_cast<scalar_t>(dxn * rg);
    if (dgp) dgp[i] = static_cast<scalar_t>(dz * xn);
    if (dbp) dbp[i] = static_cast<scalar_t>(dz);
    a1 += dxn;
    a2 += dxn * xc;
  };
  if (!cl) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, 4096 / std::max<int64_t>(HW, 1)), [&](int64_t g0, int64_t g1) {
      opmath_t lanes[kN * kF];
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t base = g * HW;
        fVec mv[kN], rv[kN];
        for (int k = 0; k < kN; ++k) mv[k] = fVec(mp[g]), rv[k] = fVec(rp[g]);
        double d1 = 0, d2 = 0;
        auto fold = [&](const fVec* v, double& d) {
          for (int k = 0; k < kN; ++k) v[k].store(lanes + k * kF);
          for (int64_t l = 0; l < kN * kF; ++l) d += double(lanes[l]);
        };
        int64_t i = 0;
        while (i + kStep <= HW) {
          fVec a1[kN], a2[kN];
          for (int k = 0; k < kN; ++k) a1[k] = fVec(0), a2[k] = fVec(0);
          const int64_t end = std::min(HW - kStep, i + (kBlock - 1) * kStep);
          for (; i <= end; i += kStep) vstep(base + i, mv, rv, a1, a2);
          fold(a1, d1), fold(a2, d2);
        }
        opmath_t t1 = 0, t2 = 0;
        for (; i < HW; ++i) one(base + i, mp[g], rp[g], t1, t2);
        s1[g] = d1 + double(t1), s2[g] = d2 + double(t2);
      }
    });
    return;
  }
  // channels_last: tasks are (sample, block of kBlock pixels); vectors run along C. Each block's per-channel sums
  // (opmath) go to its own fp64 slot, summed over blocks in block order afterwards.
  const int64_t nb = (HW + kBlock - 1) / kBlock;
  std::vector<double> part(2 * N * nb * C);
  at::parallel_for(0, N * nb, 1, [&](int64_t t0, int64_t t1) {
    std::vector<opmath_t> a1(C), a2(C);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nb, q0 = (t % nb) * kBlock, q1 = std::min(HW, q0 + kBlock);
      const opmath_t* mn = mp + n * C;
      const opmath_t* rn = rp + n * C;
      std::fill(a1.begin(), a1.end(), opmath_t(0));
      std::fill(a2.begin(), a2.end(), opmath_t(0));
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t base = (n * HW + q) * C;
        int64_t c = 0;
        for (; c + kStep <= C; c += kStep) {
          fVec mv[kN], rv[kN], v1[kN], v2[kN];
          IO::loadf(mn + c, mv), IO::loadf(rn + c, rv), IO::loadf(a1.data() + c, v1), IO::loadf(a2.data() + c, v2);
          vstep(base + c, mv, rv, v1, v2);
          for (int k = 0; k < kN; ++k) v1[k].store(a1.data() + c + k * kF), v2[k].store(a2.data() + c + k * kF);
        }
        for (; c < C; ++c) one(base + c, mn[c], rn[c], a1[c], a2[c]);
      }
      double* p = part.data() + 2 * t * C;
      for (int64_t c = 0; c < C; ++c) p[c] = double(a1[c]), p[C + c] = double(a2[c]);
    }
  });
  sum_blocks(part, N, nb, C, s1, s2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> spade_backward_cpu(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& m, const at::Tensor& r,
    const at::Tensor& gamma, const at::Tensor& beta, c10::string_view act_s, double alpha, double gain,
    std::optional<double> clamp, std::array<bool, 5> mask) {
  constexpr std::string_view op = "spade_norm_act_backward";
  check_x(op, x_in);
  const Act act = parse_act(op, std::string_view(act_s.data(), act_s.size()));
  TORCH_CHECK(!clamp || *clamp >= 0, op, ": clamp must be None or >= 0, got ", clamp ? *clamp : 0.0);
  check_ab(op, x_in, m, "mean");
  check_ab(op, x_in, r, "rstd");
  check_dy(op, dy_in, x_in, x_in.sizes());
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"gamma", &gamma}, {"beta", &beta}}) {
    TORCH_CHECK(t->sizes() == x_in.sizes(), op, ": ", name, " must have x's shape ", x_in.sizes(), ", got ",
                t->sizes());
    TORCH_CHECK(t->scalar_type() == x_in.scalar_type(), op, ": ", name, " dtype ", t->scalar_type(),
                " must equal x dtype ", x_in.scalar_type());
    TORCH_CHECK(t->device() == x_in.device(), op, ": ", name, " is on ", t->device(), " but x is on ", x_in.device());
  }
  const bool cl = is_channels_last(x_in);
  const auto f = fmt_of(cl);
  const at::Tensor x = x_in.contiguous(f), dy = dy_in.contiguous(f);
  const at::Tensor gamma_c = gamma.contiguous(f), beta_c = beta.contiguous(f);
  auto full = [&](bool need) { return need ? at::empty(x.sizes(), x.options(), f) : empty0(x); };
  at::Tensor dx = full(mask[0]), dg = full(mask[3]), dbt = full(mask[4]);
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor s1 = at::zeros({N, C}, x.options().dtype(at::kDouble)), s2 = at::zeros_like(s1);
  if (x.numel() > 0) {
    const at::Tensor mean_c = m.contiguous(), rstd_c = r.contiguous();
    const auto params = make_params(alpha, gain, clamp);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_norm_act_backward_cpu", [&] {
      dispatch_act(act, [&]<Act A>() {
        spade_backward_impl<A, scalar_t>(dy, x, gamma_c, beta_c, mean_c, rstd_c, params, cl,
                                         mask[0] ? dx.mutable_data_ptr<scalar_t>() : nullptr,
                                         mask[3] ? dg.mutable_data_ptr<scalar_t>() : nullptr,
                                         mask[4] ? dbt.mutable_data_ptr<scalar_t>() : nullptr,
                                         s1.mutable_data_ptr<double>(), s2.mutable_data_ptr<double>());
      });
    });
  }
  const auto ct = compute_type(x.scalar_type());
  at::Tensor dm = mask[1] ? -(s1 * r.to(at::kDouble)).to(ct) : at::empty({0}, m.options());
  at::Tensor dr = mask[2] ? s2.to(ct) : at::empty({0}, m.options());
  return {dx, dm, dr, dg, dbt};
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) { m.impl("spade_norm_act_backward", &spade_backward_cpu); }

}  // namespace vkernels::norm_act
