// bias_act on CUDA: a grid-stride elementwise kernel, 16-byte vector loads/stores when every pointer allows them,
// fp16/bf16 computed in fp32. Per element it reads v (and g in backward) and writes out: 2 (3) x sizeof(T) bytes;
// the bias is gathered per element from a C-length array that stays in L1/L2.
//
// 9 acts x 5 modes x 4 index/vector variants are instantiated per dtype; each dtype is its own translation unit
// (bias_act_kernel_<dtype>.cu) so the build compiles them in parallel.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "ops/bias_act.h"

namespace vkernels::bias_act {
namespace cuda_detail {

constexpr int kThreads = 256;

template <class scalar_t, int N>
struct alignas(sizeof(scalar_t) * N) Pack {
  scalar_t v[N];
};

template <Act A, Mode M, class scalar_t, class index_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    bias_act_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ v, const scalar_t* __restrict__ g,
                    const scalar_t* __restrict__ b, index_t numel, index_t cs, index_t C, Params<double> pd) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  constexpr bool kHasGrad = M != Mode::kForward;
  const Params<opmath_t> p = cast_params<opmath_t>(pd);
  const index_t stride = index_t(gridDim.x) * kThreads * VEC;
  for (index_t i = (index_t(blockIdx.x) * kThreads + threadIdx.x) * VEC; i < numel; i += stride) {
    if (i + VEC <= numel) {
      P vv = *reinterpret_cast<const P*>(v + i), gg, r;
      if constexpr (kHasGrad) gg = *reinterpret_cast<const P*>(g + i);
      // One division per vector: walk (channel, offset-in-run) forward instead of dividing per element.
      index_t c = 0, off = 0;
      if (b) {
        const index_t q = i / cs;
        off = i - q * cs;
        c = q % C;
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        opmath_t bias = b ? opmath_t(b[c]) : opmath_t(0);
        opmath_t gk = kHasGrad ? opmath_t(gg.v[k]) : opmath_t(0);
        r.v[k] = static_cast<scalar_t>(apply<A, M>(opmath_t(vv.v[k]), bias, gk, p));
        if (++off == cs) {
          off = 0;
          if (++c == C) c = 0;
        }
      }
      *reinterpret_cast<P*>(out + i) = r;
    } else {
      for (index_t j = i; j < numel; ++j) {
        opmath_t bias = b ? opmath_t(b[(j / cs) % C]) : opmath_t(0);
        opmath_t gj = kHasGrad ? opmath_t(g[j]) : opmath_t(0);
        out[j] = static_cast<scalar_t>(apply<A, M>(opmath_t(v[j]), bias, gj, p));
      }
    }
  }
}

inline bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <class scalar_t>
struct Launch {
  const Problem& p;

  template <Act A, Mode M, class index_t, int VEC>
  void go() const {
    const int64_t work = (p.numel + VEC - 1) / VEC;
    const int64_t blocks = std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t(1) << 20);
    auto stream = c10::cuda::getCurrentCUDAStream();
    bias_act_kernel<A, M, scalar_t, index_t, VEC><<<unsigned(blocks), kThreads, 0, stream>>>(
        p.out.mutable_data_ptr<scalar_t>(), p.v.const_data_ptr<scalar_t>(),
        p.g.defined() ? p.g.const_data_ptr<scalar_t>() : nullptr,
        p.b.defined() ? p.b.const_data_ptr<scalar_t>() : nullptr, index_t(p.numel), index_t(p.cs), index_t(p.C),
        p.params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <Act A, Mode M>
  void operator()() const {
    constexpr int kVec = 16 / sizeof(scalar_t);
    bool vec_ok = aligned(p.out.const_data_ptr(), 16) && aligned(p.v.const_data_ptr(), 16) &&
                  (!p.g.defined() || aligned(p.g.const_data_ptr(), 16));
    // int32 indexing is cheaper; the grid-stride index can run one stride past numel, so leave that headroom.
    bool small = p.numel + int64_t(kThreads) * kVec * (int64_t(1) << 20) < std::numeric_limits<int32_t>::max();
    if (vec_ok && small) return go<A, M, int32_t, kVec>();
    if (vec_ok) return go<A, M, int64_t, kVec>();
    if (small) return go<A, M, int32_t, 1>();
    go<A, M, int64_t, 1>();
  }
};

}  // namespace cuda_detail

// Runs Problem p (dtype scalar_t) on the current stream; instantiated once per dtype in bias_act_kernel_<dtype>.cu.
template <class scalar_t>
void run_cuda(const Problem& p) {
  dispatch(p.act, p.mode, cuda_detail::Launch<scalar_t>{p});
}

}  // namespace vkernels::bias_act
