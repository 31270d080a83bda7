// modulated_conv2d on CPU: the modulation/demodulation pass and the post-convolution epilogue.
//
// weight pass, per (n, o): reads weight[o] (I*kh*kw) and styles[n] (I), writes wmod[n, o] (I*kh*kw) and dcoefs[n, o];
//   3 FLOPs per weight element (square-accumulate, two multiplies). Accumulation in opmath (fp64 for fp64).
// epilogue, per element of x (N, O, H, W): reads x (and noise, broadcast over O), writes y (forward) or reads g and x,
//   writes dz (backward); bias_act's per-element math (bias_act_math.h) plus 2 FLOPs for the scale and noise.
//   at::vec for every dtype (fp16/bf16 converted to fp32 in registers, not a scalar loop).
//   Ordinary stores, not streaming ones: outputs this large are freshly mmapped, and the kernel zeroing each page
//   on first touch leaves its lines cached, so there is no read-for-ownership to save (see stream_store.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <type_traits>

#include "ops/bias_act.h"

namespace vkernels::modulated_conv2d {
namespace {

using at::vec::Vectorized;
namespace ba = vkernels::bias_act;

bool is_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// ------------------------------------------------------------------------------------------------------------------
// modulation + demodulation coefficients
// ------------------------------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> weight_op(const at::Tensor& weight, const at::Tensor& styles, bool demodulate,
                                             bool fused) {
  TORCH_CHECK(is_float(weight.scalar_type()), "modulated_conv2d: weight must be a floating tensor, got ",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() == 4, "modulated_conv2d: weight must have shape (out_channels, in_channels, kh, kw), got ",
              weight.sizes());
  TORCH_CHECK(styles.dim() == 2 && styles.size(1) == weight.size(1),
              "modulated_conv2d: styles must have shape (N, in_channels=", weight.size(1), "), got ", styles.sizes());
  TORCH_CHECK(styles.scalar_type() == weight.scalar_type(), "modulated_conv2d: styles dtype ", styles.scalar_type(),
              " must match weight dtype ", weight.scalar_type());
  const int64_t N = styles.size(0), O = weight.size(0), I = weight.size(1), K = weight.size(2) * weight.size(3);
  at::Tensor w = weight.contiguous(), s = styles.contiguous();
  at::Tensor wmod = fused ? at::empty({N, O, I, weight.size(2), weight.size(3)}, w.options()) : at::empty({0}, w.options());
  at::Tensor dco = demodulate ? at::empty({N, O}, w.options()) : at::empty({0}, w.options());
  if (N * O == 0 || (!fused && !demodulate)) return {wmod, dco};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "modulated_conv2d_weight_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    scalar_t* mp = fused ? wmod.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* dp = demodulate ? dco.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, I * K));
    at::parallel_for(0, N * O, grain, [&](int64_t begin, int64_t end) {
      for (int64_t no = begin; no < end; ++no) {
        const int64_t n = no / O, o = no % O;
        const scalar_t* wo = wp + o * I * K;
        const scalar_t* sn = sp + n * I;
        acc_t d = acc_t(1);
        if (demodulate) {
          acc_t acc = 0;
          for (int64_t i = 0; i < I; ++i) {
            const acc_t si = acc_t(sn[i]);
            acc_t a = 0;
            for (int64_t k = 0; k < K; ++k) {
              const acc_t v = acc_t(wo[i * K + k]);
              a += v * v;
            }
            acc += a * si * si;
          }
          d = acc_t(1) / std::sqrt(acc + acc_t(1e-8));
          dp[no] = static_cast<scalar_t>(d);
        }
        if (fused) {
          scalar_t* mo = mp + no * I * K;
          for (int64_t i = 0; i < I; ++i) {
            const acc_t sd = acc_t(sn[i]) * d;
            for (int64_t k = 0; k < K; ++k) mo[i * K + k] = static_cast<scalar_t>(acc_t(wo[i * K + k]) * sd);
          }
        }
      }
    });
  });
  return {wmod, dco};
}

// ------------------------------------------------------------------------------------------------------------------
// epilogue
// ------------------------------------------------------------------------------------------------------------------
struct Epi {
  at::Tensor x, g, d, noise, b, out;
  int64_t N = 0, O = 0, HW = 0, noise_nstride = 0;
  double ns = 1.0;
  ba::Act act = ba::Act::kLinear;
  ba::Params<double> params{};
  bool backward = false;
};

Epi make(const at::Tensor* g, const at::Tensor& x, const std::optional<at::Tensor>& dcoefs,
         const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& noise_strength,
         const std::optional<at::Tensor>& b, c10::string_view act, double alpha, double gain,
         std::optional<double> clamp) {
  TORCH_CHECK(is_float(x.scalar_type()), "modulated_conv2d: x must be float16, bfloat16, float32 or float64, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() == 4, "modulated_conv2d: x must have shape (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(!clamp || *clamp >= 0, "modulated_conv2d: clamp must be None or >= 0, got ", clamp ? *clamp : 0.0);
  Epi e;
  e.N = x.size(0);
  e.O = x.size(1);
  e.HW = x.size(2) * x.size(3);
  e.x = x.contiguous();
  e.out = at::empty_like(e.x);
  // Reuse bias_act's activation names and checks (one list of activations for the library).
  ba::Problem probe = ba::make_forward(at::empty({0}, x.options()), std::nullopt, 1,
                                       std::string_view(act.data(), act.size()), alpha, gain, clamp);
  e.act = probe.act;
  e.params = probe.params;
  if (g) {
    TORCH_CHECK(g->sizes() == x.sizes() && g->scalar_type() == x.scalar_type(),
                "modulated_conv2d_epilogue_backward: grad (", g->sizes(), ", ", g->scalar_type(),
                ") must match x (", x.sizes(), ", ", x.scalar_type(), ")");
    e.g = g->contiguous();
    e.backward = true;
  }
  if (dcoefs && dcoefs->defined()) {
    TORCH_CHECK(dcoefs->dim() == 2 && dcoefs->size(0) == e.N && dcoefs->size(1) == e.O,
                "modulated_conv2d: dcoefs must have shape (", e.N, ", ", e.O, "), got ", dcoefs->sizes());
    TORCH_CHECK(dcoefs->scalar_type() == x.scalar_type(), "modulated_conv2d: dcoefs dtype ", dcoefs->scalar_type(),
                " must match x dtype ", x.scalar_type());
    e.d = dcoefs->contiguous();
  }
  if (noise && noise->defined()) {
    TORCH_CHECK(noise->dim() == 4 && (noise->size(0) == e.N || noise->size(0) == 1) && noise->size(1) == 1 &&
                    noise->size(2) == x.size(2) && noise->size(3) == x.size(3),
                "modulated_conv2d: noise must have shape (", e.N, " or 1, 1, ", x.size(2), ", ", x.size(3),
                "), got ", noise->sizes());
    TORCH_CHECK(noise->scalar_type() == x.scalar_type(), "modulated_conv2d: noise dtype ", noise->scalar_type(),
                " must match x dtype ", x.scalar_type());
    e.noise = noise->contiguous();
    e.noise_nstride = noise->size(0) == 1 ? 0 : e.HW;
    if (noise_strength && noise_strength->defined()) {
      TORCH_CHECK(noise_strength->numel() == 1, "modulated_conv2d: noise_strength must have one element, got shape ",
                  noise_strength->sizes());
      e.ns = noise_strength->item<double>();
    }
  }
  if (b && b->defined()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == e.O, "modulated_conv2d: bias must have shape (", e.O, ",), got ",
                b->sizes());
    TORCH_CHECK(b->scalar_type() == x.scalar_type(), "modulated_conv2d: bias dtype ", b->scalar_type(),
                " must match x dtype ", x.scalar_type());
    e.b = b->contiguous();
  }
  return e;
}

template <class scalar_t>
struct EpiLaunch {
  const Epi& e;

  template <ba::Act A, ba::Mode M>
  void operator()() const {
    if constexpr (M != ba::Mode::kForward && M != ba::Mode::kGrad1X) {
      TORCH_CHECK(false, "modulated_conv2d: internal error (mode)");
    } else {
      using acc_t = at::opmath_type<scalar_t>;
      using fVec = Vectorized<acc_t>;
      using sVec = Vectorized<scalar_t>;
      constexpr bool kGrad = M == ba::Mode::kGrad1X;
      // fp16/bf16: one step is 16 values, converted to two fp32 vectors in registers.
      constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t>;
      constexpr int kN = kReduced ? 2 : 1;
      constexpr int64_t kF = fVec::size(), kStep = sVec::size();
      static_assert(kStep == kN * kF);
      const auto ps = ba::cast_params<acc_t>(e.params);
      const auto pv = ba::cast_params<fVec>(ps);
      const scalar_t* x = e.x.const_data_ptr<scalar_t>();
      const scalar_t* g = kGrad ? e.g.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* d = e.d.defined() ? e.d.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* nz = e.noise.defined() ? e.noise.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* b = e.b.defined() ? e.b.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* out = e.out.mutable_data_ptr<scalar_t>();
      const int64_t HW = e.HW, O = e.O, nstride = e.noise_nstride;
      const acc_t ns = acc_t(e.ns);
      auto load = [](const scalar_t* p, fVec* v) {
        if constexpr (kReduced) {
          std::tie(v[0], v[1]) = at::vec::convert_to_float<scalar_t>(sVec::loadu(p));
        } else {
          v[0] = fVec::loadu(p);
        }
      };
      auto pack = [](const fVec* v) -> sVec {
        if constexpr (kReduced) {
          return at::vec::convert_from_float<scalar_t>(v[0], v[1]);
        } else {
          return v[0];
        }
      };
      const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, HW));
      at::parallel_for(0, e.N * O, grain, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const int64_t n = p / O, o = p % O;
          const acc_t dv = d ? acc_t(d[p]) : acc_t(1), bv = b ? acc_t(b[o]) : acc_t(0);
          const scalar_t* xp = x + p * HW;
          const scalar_t* gp = kGrad ? g + p * HW : nullptr;
          const scalar_t* np = nz ? nz + n * nstride : nullptr;
          scalar_t* op = out + p * HW;
          const fVec dvv(dv), bvv(bv), nsv(ns);
          int64_t i = 0;
          for (; i + kStep <= HW; i += kStep) {
            fVec v[kN], nv[kN], gv[kN], y[kN];
            load(xp + i, v);
            if (np) load(np + i, nv);
            if constexpr (kGrad) load(gp + i, gv);
            for (int k = 0; k < kN; ++k) {
              v[k] = v[k] * dvv;
              if (np) v[k] = v[k] + nv[k] * nsv;
              y[k] = ba::apply<A, M>(v[k], bvv, kGrad ? gv[k] : fVec(0), pv);
            }
            pack(y).store(op + i);
          }
          for (; i < HW; ++i) {
            acc_t v = acc_t(xp[i]) * dv;
            if (np) v += acc_t(np[i]) * ns;
            const acc_t gv = kGrad ? acc_t(gp[i]) : acc_t(0);
            op[i] = static_cast<scalar_t>(ba::apply<A, M>(v, bv, gv, ps));
          }
        }
      });
    }
  }
};

at::Tensor epilogue(const at::Tensor& x, const std::optional<at::Tensor>& dcoefs,
                    const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& noise_strength,
                    const std::optional<at::Tensor>& b, c10::string_view act, double alpha, double gain,
                    std::optional<double> clamp) {
  Epi e = make(nullptr, x, dcoefs, noise, noise_strength, b, act, alpha, gain, clamp);
  if (x.numel() == 0) return e.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "modulated_conv2d_epilogue_cpu",
                                  [&] { ba::dispatch(e.act, ba::Mode::kForward, EpiLaunch<scalar_t>{e}); });
  return e.out;
}

at::Tensor epilogue_backward(const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& dcoefs,
                             const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& noise_strength,
                             const std::optional<at::Tensor>& b, c10::string_view act, double alpha, double gain,
                             std::optional<double> clamp) {
  Epi e = make(&grad, x, dcoefs, noise, noise_strength, b, act, alpha, gain, clamp);
  if (x.numel() == 0) return e.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "modulated_conv2d_epilogue_bwd_cpu",
                                  [&] { ba::dispatch(e.act, ba::Mode::kGrad1X, EpiLaunch<scalar_t>{e}); });
  return e.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("modulated_conv2d_weight", &weight_op);
  m.impl("modulated_conv2d_epilogue", &epilogue);
  m.impl("modulated_conv2d_epilogue_backward", &epilogue_backward);
}

}  // namespace vkernels::modulated_conv2d
