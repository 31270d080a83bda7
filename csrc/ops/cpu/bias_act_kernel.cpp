// bias_act on CPU: one pass over the tensor in storage order, vectorised with at::vec (AVX2 when built for it),
// fp16/bf16 computed in fp32. Memory-bound: reads v (and g in backward), writes out; the bias is broadcast from
// a register (channel-outer layouts) or read as a contiguous row (channels-last: dim innermost in memory).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "ops/bias_act.h"

namespace vkernels::bias_act {
namespace {

using at::vec::Vectorized;

template <Act A, Mode M, class scalar_t>
struct Loop {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  using sVec = Vectorized<scalar_t>;
  static constexpr bool kHasGrad = M != Mode::kForward;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, opmath_t>;

  const scalar_t* v;
  const scalar_t* g;
  scalar_t* out;
  Params<opmath_t> ps;
  Params<fVec> pv;

  void scalar(int64_t i, opmath_t bias) const {
    opmath_t gi = kHasGrad ? opmath_t(g[i]) : opmath_t(0);
    out[i] = static_cast<scalar_t>(apply<A, M>(opmath_t(v[i]), bias, gi, ps));
  }

  // Elements [i, i1), bias either a constant (bias_row == nullptr) or bias_row[k] for element i + k.
  void run(int64_t i, int64_t i1, opmath_t bias, const scalar_t* bias_row) const {
    const int64_t i0 = i;
    if constexpr (!kReduced) {
      const fVec bc(bias);
      for (; i + fVec::size() <= i1; i += fVec::size()) {
        fVec bv = bias_row ? fVec::loadu(bias_row + (i - i0)) : bc;
        fVec gv = kHasGrad ? fVec::loadu(g + i) : fVec(0);
        apply<A, M>(fVec::loadu(v + i), bv, gv, pv).store(out + i);
      }
    } else {
      const fVec bc(bias);
      for (; i + sVec::size() <= i1; i += sVec::size()) {
        auto [v0, v1] = at::vec::convert_to_float<scalar_t>(sVec::loadu(v + i));
        fVec b0 = bc, b1 = bc, g0(0), g1(0);
        if (bias_row) std::tie(b0, b1) = at::vec::convert_to_float<scalar_t>(sVec::loadu(bias_row + (i - i0)));
        if constexpr (kHasGrad) std::tie(g0, g1) = at::vec::convert_to_float<scalar_t>(sVec::loadu(g + i));
        at::vec::convert_from_float<scalar_t>(apply<A, M>(v0, b0, g0, pv), apply<A, M>(v1, b1, g1, pv))
            .store(out + i);
      }
    }
    for (; i < i1; ++i) scalar(i, bias_row ? opmath_t(bias_row[i - i0]) : bias);
  }
};

template <class scalar_t>
struct Launch {
  const Problem& p;

  template <Act A, Mode M>
  void operator()() const {
    using L = Loop<A, M, scalar_t>;
    using opmath_t = typename L::opmath_t;
    const auto ps = cast_params<opmath_t>(p.params);
    const L loop{p.v.const_data_ptr<scalar_t>(), p.g.defined() ? p.g.const_data_ptr<scalar_t>() : nullptr,
                 p.out.mutable_data_ptr<scalar_t>(), ps, cast_params<typename L::fVec>(ps)};
    const scalar_t* b = p.b.defined() ? p.b.const_data_ptr<scalar_t>() : nullptr;
    const int64_t cs = p.cs, C = p.C;
    at::parallel_for(0, p.numel, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      if (!b) {
        loop.run(begin, end, opmath_t(0), nullptr);
      } else if (cs == 1) {  // channel is the innermost storage dim: walk rows of C biases
        int64_t c = begin % C;
        for (int64_t i = begin; i < end; c = 0) {
          const int64_t n = std::min(end - i, C - c);
          loop.run(i, i + n, opmath_t(0), b + c);
          i += n;
        }
      } else {  // runs of cs elements share one channel
        for (int64_t i = begin; i < end;) {
          const int64_t q = i / cs, stop = std::min(end, (q + 1) * cs);
          loop.run(i, stop, opmath_t(b[q % C]), nullptr);
          i = stop;
        }
      }
    });
  }
};

void run(const Problem& p) {
  if (p.numel == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.out.scalar_type(), "bias_act_cpu",
                                  [&] { dispatch(p.act, p.mode, Launch<scalar_t>{p}); });
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("bias_act", &forward_op<run>);
  m.impl("bias_act_grad", &grad_op<run>);
}

}  // namespace vkernels::bias_act
