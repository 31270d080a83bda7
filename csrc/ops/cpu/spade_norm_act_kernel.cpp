// spade_norm_act on CPU: the apply pass and the fused training forward (schemas: ops/spade_norm_act.cpp; the backward
// is in spade_norm_act_backward_kernel.cpp; V, Epi and the shifted statistics shared with
// upsample_norm_act are in norm_act_cpu_common.h).
// fp16/bf16 computed in fp32 (loaded / stored through at::vec conversions), fp64 in fp64. M = N*C*H*W elements.
//  - spade: reads x, gamma, beta, writes out (4 tensors of M elements) in one vector pass; ~5 FLOPs + act each.
//  - training forward (spade_train_cpu, NCHW): statistics and apply per statistics group in one parallel region, the
//    group re-read from L2 / L3: DRAM traffic 4 * M * 4 bytes (x, gamma, beta, out) instead of 5.
// Layouts: NCHW (and any non-channels_last strides, read through a contiguous copy): parallel over planes;
// channels_last: parallel over rows of pixels, vectors run along C, which is contiguous in x and out.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "ops/cpu/norm_act_cpu_common.h"
#include "ops/upsample_norm_act.h"

namespace vkernels::norm_act {
namespace {

using bias_act::Act;

// ---------------------------------------------------------------------------------------------------------------
// spade: out = clamp(act((x - mean) * rstd * (1 + gamma) + beta) * gain), one vector pass over x, gamma, beta
// ---------------------------------------------------------------------------------------------------------------
// Elements [i0, i1) (contiguous in storage) of out = clamp(act((x - mean) * rstd * (1 + gamma) + beta) * gain),
// mean / rstd broadcast (av, bv; cm == nullptr) or per-element rows cm / cr (channels_last).
template <Act A, class scalar_t>
void spade_elems(const Epi<A, scalar_t>& f, const scalar_t* xp, const scalar_t* gp, const scalar_t* tp, scalar_t* op,
                 int64_t i0, int64_t i1, at::opmath_type<scalar_t> av, at::opmath_type<scalar_t> bv,
                 const at::opmath_type<scalar_t>* cm, const at::opmath_type<scalar_t>* cr) {
  using T = V<scalar_t>;
  using opmath_t = typename T::opmath_t;
  using fVec = typename T::fVec;
  constexpr int kN = T::kN;
  constexpr int64_t kStep = T::kStep;
  const fVec avc(av), bvc(bv), onev(1), zerov(0);
  int64_t i = i0;
  for (; i + kStep <= i1; i += kStep) {
    const auto xv = T::load(xp + i), gv = T::load(gp + i), tv = T::load(tp + i);
    typename T::Pack mv, rv;
    if (cm) {
      mv = T::loadf(cm + (i - i0));
      rv = T::loadf(cr + (i - i0));
    } else {
      for (int k = 0; k < kN; ++k) mv.v[k] = avc, rv.v[k] = bvc;
    }
    fVec z[kN];
    for (int k = 0; k < kN; ++k) z[k] = f((xv.v[k] - mv.v[k]) * rv.v[k], zerov, onev + gv.v[k], tv.v[k]);
    T::pack(z).store(op + i);
  }
  for (; i < i1; ++i) {
    const opmath_t mv = cm ? cm[i - i0] : av, rv = cm ? cr[i - i0] : bv;
    op[i] = f((opmath_t(xp[i]) - mv) * rv, opmath_t(0), opmath_t(1) + opmath_t(gp[i]), opmath_t(tp[i]));
  }
}

template <Act A, class scalar_t>
void spade_cpu_impl(const at::Tensor& x, const at::Tensor& gamma_c, const at::Tensor& beta_c, const at::Tensor& a,
                    const at::Tensor& b, const bias_act::Params<double>& params, at::Tensor& out, bool cl) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Epi<A, scalar_t> f(params);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gp = gamma_c.const_data_ptr<scalar_t>();
  const scalar_t* tp = beta_c.const_data_ptr<scalar_t>();
  const opmath_t* ap = a.const_data_ptr<opmath_t>();
  const opmath_t* bp = b.const_data_ptr<opmath_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  if (!cl) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1)), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        spade_elems<A, scalar_t>(f, xp, gp, tp, op, p * HW, (p + 1) * HW, ap[p], bp[p], nullptr, nullptr);
    });
  } else {
    at::parallel_for(0, N * HW, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t n = q / HW;
        spade_elems<A, scalar_t>(f, xp, gp, tp, op, q * C, (q + 1) * C, 0, 0, ap + n * C, bp + n * C);
      }
    });
  }
}

// rstd = 1 / sqrt(var + eps) in opmath: the same roundings as torch.rsqrt(var + eps) on an opmath tensor (a
// correctly rounded add, sqrt and divide), so the fused training op gives the two-op path's bits.
template <class opmath_t>
opmath_t rstd_of(opmath_t var, double eps) {
  return opmath_t(1) / std::sqrt(var + static_cast<opmath_t>(eps));
}

// Training forward (statistics of x itself) for NCHW, one parallel region: every work item is one statistics group
// (batch norm: channel c, its N planes; instance norm: one plane), whose sums are taken and which is then normalised
// right away, while the group is still in L2 (a 8x256x64x64 fp32 channel is 128 KiB) or at worst in L3. So x is
// read from DRAM once instead of twice: per element 4 reads (x, its cached re-read, gamma, beta) + 1 write, DRAM
// traffic x + gamma + beta + out instead of 2x + gamma + beta + out. The apply walks the group's planes in reverse
// order of the statistics pass (the last-read planes are the likeliest to be cached when a group exceeds L2).
// Statistics are the same sums in the same order as stats_cpu_impl's and rstd is torch.rsqrt's rounding, so the
// result has the bits of the two-op path (upsample_norm_act_stats, rsqrt, spade_norm_act) for any thread count.
template <Act A, class scalar_t>
void spade_train_cpu_impl(const at::Tensor& x, const at::Tensor& gamma_c, const at::Tensor& beta_c, bool per_sample,
                          double eps, const bias_act::Params<double>& params, at::Tensor& out, at::Tensor& mean,
                          at::Tensor& var, at::Tensor& rstd) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Epi<A, scalar_t> f(params);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gp = gamma_c.const_data_ptr<scalar_t>();
  const scalar_t* tp = beta_c.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  auto* mp = mean.mutable_data_ptr<opmath_t>();
  auto* vp = var.mutable_data_ptr<opmath_t>();
  auto* rp = rstd.mutable_data_ptr<opmath_t>();
  const int64_t groups = per_sample ? N * C : C, n_per = per_sample ? 1 : N;
  const double count = static_cast<double>(n_per * HW);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<opmath_t> row(V<scalar_t>::kReduced ? std::min(kSumChunk, HW) : 0);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t c = g % C, nb = per_sample ? g / C : 0;
      const opmath_t sh = opmath_t(xp[(nb * C + c) * HW]);
      Acc a;
      for (int64_t n = nb; n < nb + n_per; ++n) plane_sums<scalar_t>(xp + (n * C + c) * HW, HW, sh, a, row);
      finish_stats(a, double(sh), count, mp[g], vp[g]);
      const opmath_t m = mp[g], r = rp[g] = rstd_of(vp[g], eps);
      for (int64_t n = nb + n_per - 1; n >= nb; --n) {
        const int64_t i0 = (n * C + c) * HW;
        spade_elems<A, scalar_t>(f, xp, gp, tp, op, i0, i0 + HW, m, r, nullptr, nullptr);
      }
    }
  });
}

at::Tensor like(const at::Tensor& t, const at::Tensor& out) {
  if (t.strides() == out.strides()) return t;
  return at::empty_like(out).copy_(t);
}

// The checks spade_norm_act and spade_norm_act_train share; returns the activation.
Act check_spade(std::string_view op, const at::Tensor& x_in, const at::Tensor& gamma, const at::Tensor& beta,
                c10::string_view act_s, std::optional<double> clamp) {
  check_x(op, x_in);
  const Act act = parse_act(op, std::string_view(act_s.data(), act_s.size()));
  TORCH_CHECK(!clamp || *clamp >= 0, op, ": clamp must be None or >= 0, got ", clamp ? *clamp : 0.0);
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"gamma", &gamma}, {"beta", &beta}}) {
    TORCH_CHECK(t->sizes() == x_in.sizes(), op, ": ", name, " must have x's shape ", x_in.sizes(), ", got ",
                t->sizes());
    TORCH_CHECK(t->scalar_type() == x_in.scalar_type(), op, ": ", name, " dtype ", t->scalar_type(),
                " must equal x dtype ", x_in.scalar_type());
    TORCH_CHECK(t->device() == x_in.device(), op, ": ", name, " is on ", t->device(), " but x is on ", x_in.device());
  }
  return act;
}

at::Tensor spade_cpu(const at::Tensor& x_in, const at::Tensor& a, const at::Tensor& b, const at::Tensor& gamma,
                     const at::Tensor& beta, c10::string_view act_s, double alpha, double gain,
                     std::optional<double> clamp) {
  constexpr std::string_view op = "spade_norm_act";
  const Act act = check_spade(op, x_in, gamma, beta, act_s, clamp);
  check_ab(op, x_in, a, "mean");
  check_ab(op, x_in, b, "rstd");
  const bool cl = is_channels_last(x_in);
  at::Tensor out =
      at::empty(x_in.sizes(), x_in.options(), cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const at::Tensor x = like(x_in, out), gamma_c = like(gamma, out), beta_c = like(beta, out);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const auto params = make_params(alpha, gain, clamp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_norm_act_cpu", [&] {
    dispatch_act(act, [&]<Act A>() { spade_cpu_impl<A, scalar_t>(x, gamma_c, beta_c, ac, bc, params, out, cl); });
  });
  return out;
}

// The fused path needs enough groups to keep every thread busy (a group is one work item); with fewer (a few
// channels of large planes) the two-op passes, parallel over planes / pixels, balance better. channels_last: two
// passes as well (its statistics are per-row partial sums, combined after all rows are read).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spade_train_cpu(
    const at::Tensor& x_in, const at::Tensor& gamma, const at::Tensor& beta, bool per_sample, double eps,
    c10::string_view act_s, double alpha, double gain, std::optional<double> clamp) {
  constexpr std::string_view op = "spade_norm_act_train";
  const Act act = check_spade(op, x_in, gamma, beta, act_s, clamp);
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  const auto ct = compute_type(x_in.scalar_type());
  const int64_t N = x_in.size(0), C = x_in.size(1);
  auto shape = per_sample ? std::vector<int64_t>{N, C} : std::vector<int64_t>{C};
  at::Tensor mean = at::empty(shape, x_in.options().dtype(ct));
  at::Tensor var = at::empty(shape, x_in.options().dtype(ct));
  at::Tensor rstd = at::empty(shape, x_in.options().dtype(ct));
  const bool cl = is_channels_last(x_in);
  at::Tensor out =
      at::empty(x_in.sizes(), x_in.options(), cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (mean.numel() == 0) return {out, mean, var, rstd};
  if (x_in.numel() == 0) {  // statistics of an empty set, as torch's mean / var / rsqrt give them
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    rstd.fill_(std::numeric_limits<double>::quiet_NaN());
    return {out, mean, var, rstd};
  }
  const at::Tensor x = like(x_in, out), gamma_c = like(gamma, out), beta_c = like(beta, out);
  const auto params = make_params(alpha, gain, clamp);
  const int64_t groups = per_sample ? N * C : C;
  const bool fused = !cl && groups >= 4 * int64_t(at::get_num_threads());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_norm_act_train_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    if (fused) {
      dispatch_act(act, [&]<Act A>() {
        spade_train_cpu_impl<A, scalar_t>(x, gamma_c, beta_c, per_sample, eps, params, out, mean, var, rstd);
      });
      return;
    }
    stats_into(x, 1, Mode::kNearest, per_sample, cl, mean, var);
    const opmath_t* vp = var.const_data_ptr<opmath_t>();
    opmath_t* rp = rstd.mutable_data_ptr<opmath_t>();
    for (int64_t g = 0; g < mean.numel(); ++g) rp[g] = rstd_of(vp[g], eps);
    const at::Tensor m2 = mean.expand({N, C}).contiguous(), r2 = rstd.expand({N, C}).contiguous();
    dispatch_act(act, [&]<Act A>() { spade_cpu_impl<A, scalar_t>(x, gamma_c, beta_c, m2, r2, params, out, cl); });
  });
  return {out, mean, var, rstd};
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("spade_norm_act", &spade_cpu);
  m.impl("spade_norm_act_train", &spade_train_cpu);
}

}  // namespace vkernels::norm_act
