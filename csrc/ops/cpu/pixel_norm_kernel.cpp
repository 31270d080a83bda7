// pixel_norm on CPU. x is viewed as (outer, C, inner) in storage order (C = x.shape[dim]); channels_last 4-D input
// with dim=1 is (N*H*W, C, 1) in storage order, so it is read in place.
// Forward: reads x twice (sum of squares, then scale; the second read comes from L1 for rows, L2/L3 for NCHW
//   planes), writes y: ~3 FLOPs per element. Backward: reads x and g twice, writes dx: ~6 FLOPs per element.
//   The floor is a clone of x (one DRAM read of x, one write of y); large NCHW outputs use streaming stores so
//   that writing y does not also read it (see use_streaming_stores).
// Accumulation in opmath (fp32 for fp16/bf16, fp64 for fp64), vectorised with at::vec (fp16/bf16 converted to
// fp32 vectors). Parallel over outer x inner-chunks (inner > 1) or over rows (inner == 1).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "ops/cpu/stream_store.h"

namespace vkernels::pixel_norm {
namespace {

using at::vec::Vectorized;

struct View {
  at::Tensor x, g, out;  // same dense layout
  int64_t outer = 1, C = 1, inner = 1;
};

View make(const at::Tensor* g, const at::Tensor& x, int64_t dim, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat ||
                  x.scalar_type() == at::kDouble,
              "pixel_norm: x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "pixel_norm: x must have at least one dimension");
  TORCH_CHECK(dim >= -x.dim() && dim < x.dim(), "pixel_norm: dim must be in [", -x.dim(), ", ", x.dim() - 1,
              "] for x of rank ", x.dim(), ", got ", dim);
  TORCH_CHECK(eps >= 0 && std::isfinite(eps), "pixel_norm: eps must be a finite number >= 0, got ", eps);
  dim = dim < 0 ? dim + x.dim() : dim;
  if (g) {
    TORCH_CHECK(g->sizes() == x.sizes(), "pixel_norm_backward: grad has shape ", g->sizes(), " but x has shape ",
                x.sizes());
    TORCH_CHECK(g->scalar_type() == x.scalar_type(), "pixel_norm_backward: grad dtype ", g->scalar_type(),
                " must match x dtype ", x.scalar_type());
  }
  View v;
  const bool cl = x.dim() == 4 && dim == 1 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (cl) {
    v.x = x;
    v.out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
    v.outer = x.size(0) * x.size(2) * x.size(3);
    v.C = x.size(1);
    v.inner = 1;
    if (g) v.g = g->contiguous(at::MemoryFormat::ChannelsLast);
  } else {
    v.x = x.contiguous();
    v.out = at::empty_like(v.x, at::MemoryFormat::Contiguous);
    for (int64_t i = 0; i < dim; ++i) v.outer *= x.size(i);
    v.C = x.size(dim);
    for (int64_t i = dim + 1; i < x.dim(); ++i) v.inner *= x.size(i);
    if (g) v.g = g->contiguous();
  }
  return v;
}

// fp32 vectors of a step of scalar_t (one Vectorized<scalar_t>: 8 fp32, 4 fp64, 16 fp16/bf16 = two fp32 vectors).
template <class scalar_t>
struct V {
  using acc_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<acc_t>;
  using sVec = Vectorized<scalar_t>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t>;
  static constexpr int kN = kReduced ? 2 : 1;
  static constexpr int64_t kF = fVec::size();
  static constexpr int64_t kStep = sVec::size();
  static_assert(kStep == kN * kF);
  static void load(const scalar_t* p, fVec* v) {
    if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
#if defined(CPU_CAPABILITY_AVX2)
      // bf16 -> fp32 is a 16-bit shift: widen each half straight from memory (vpmovzxwd m128 + vpslld). The
      // generic convert_to_float loads the 256-bit vector, reloads its low half and extracts the high half:
      // 6 instead of 4 instructions per 16 values, in the sums pass that is a third of the loop.
      const __m128i* q = reinterpret_cast<const __m128i*>(p);
      v[0] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(q)), 16));
      v[1] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(q + 1)), 16));
#else
      std::tie(v[0], v[1]) = at::vec::convert_to_float<scalar_t>(sVec::loadu(p));
#endif
    } else if constexpr (kReduced) {
      std::tie(v[0], v[1]) = at::vec::convert_to_float<scalar_t>(sVec::loadu(p));
    } else {
      v[0] = fVec::loadu(p);
    }
  }
#if defined(CPU_CAPABILITY_AVX2)
  // fp32 -> bf16, round to nearest even by an integer add (bias 0x7fff plus the kept lsb), without the NaN fix-up
  // of at::vec's cvtfp32_bf16 (a compare and a blend per 8 values, 4 of the scale loop's 27 instructions per 16
  // values). Exact here: every NaN this kernel produces is an input NaN (widened from bf16, so its low 16 bits are
  // zero; quieting sets bit 22) or the default NaN 0xffc00000, and x86 arithmetic only propagates those payloads;
  // with zero low bits the add cannot carry out of the mantissa, so a NaN stays a NaN of the same sign.
  static __m256i bf16_pack(__m256 a, __m256 b) {
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    const auto round = [&](__m256 f) {
      const __m256i i = _mm256_castps_si256(f);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(i, 16), one);
      return _mm256_srli_epi32(_mm256_add_epi32(i, _mm256_add_epi32(lsb, bias)), 16);
    };
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(round(a), round(b)), 0xd8);
  }
#endif
  static void store(scalar_t* p, const fVec* v) {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_pack(v[0], v[1]));
      return;
    }
#endif
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p);
    } else {
      v[0].store(p);
    }
  }
  // Non-temporal store of one step to a 32-byte aligned p (ops/cpu/stream_store.h).
  static void stream(scalar_t* p, const fVec* v) {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), bf16_pack(v[0], v[1]));
      return;
    }
#endif
    if constexpr (kReduced) {
      cpu::stream_store(p, at::vec::convert_from_float<scalar_t>(v[0], v[1]));
    } else {
      cpu::stream_store(p, v[0]);
    }
  }
  static void fence() { cpu::stream_fence(); }
};

// Streaming (non-temporal) stores when x and the output together exceed the last-level cache (see
// ops/cpu/stream_store.h). Measured at 8x512x32x32 fp32 (16 MB in + 16 MB out, 32 MB L3), one thread: 1.53x -> 1.37x
// of a clone.
// run: the length of the contiguous runs written (C for rows, inner for NCHW planes); every run must start 32-byte
// aligned for the vector streaming stores.
bool use_streaming_stores(const View& v, size_t elem, int64_t run) {
  const int64_t bytes = v.out.numel() * int64_t(elem);
  return cpu::streaming_pays(2 * bytes) && (run * int64_t(elem)) % 32 == 0 && cpu::aligned32(v.out.const_data_ptr());
}

// The loops below take plain pointer and size parameters and are templated on the store kind (kNt) instead of
// reading them through a [&] lambda's captures: vector stores are may_alias, so with captured references the
// compiler reloaded x, out, C and the streaming flag from memory after every store (seen in the disassembly: 16
// instructions per 8 fp32 outputs in the NCHW scale loop, 38 per 16 bf16, of which 7-8 were such reloads and a
// flag test; now 6 (7 streaming) and 23 with the bf16 load/store below).
template <class scalar_t, bool kBackward, bool kNt>
void rows_block(const scalar_t* __restrict x, const scalar_t* __restrict g, scalar_t* __restrict out, int64_t begin,
                int64_t end, int64_t C, at::opmath_type<scalar_t> inv_c, at::opmath_type<scalar_t> e) {
  using T = V<scalar_t>;
  using acc_t = typename T::acc_t;
  using fVec = typename T::fVec;
  constexpr int kN = T::kN;
  constexpr int64_t kStep = T::kStep;
  for (int64_t o = begin; o < end; ++o) {
    const scalar_t* xr = x + o * C;
    const scalar_t* gr = kBackward ? g + o * C : nullptr;
    scalar_t* yr = out + o * C;
    fVec ssv[kN], gxv[kN], ssw[kN], gxw[kN];
    for (int k = 0; k < kN; ++k) ssv[k] = fVec(0), gxv[k] = fVec(0), ssw[k] = fVec(0), gxw[k] = fVec(0);
    int64_t c = 0;
    // Two accumulator chains per fp32 vector: one fma chain per row was latency-bound at C = 512.
    for (; c + 2 * kStep <= C; c += 2 * kStep) {
      fVec xv[kN], gv[kN], xw[kN], gw[kN];
      T::load(xr + c, xv);
      T::load(xr + c + kStep, xw);
      if constexpr (kBackward) T::load(gr + c, gv), T::load(gr + c + kStep, gw);
      for (int k = 0; k < kN; ++k) {
        ssv[k] = at::vec::fmadd(xv[k], xv[k], ssv[k]);
        ssw[k] = at::vec::fmadd(xw[k], xw[k], ssw[k]);
        if constexpr (kBackward) {
          gxv[k] = at::vec::fmadd(gv[k], xv[k], gxv[k]);
          gxw[k] = at::vec::fmadd(gw[k], xw[k], gxw[k]);
        }
      }
    }
    for (; c + kStep <= C; c += kStep) {
      fVec xv[kN], gv[kN];
      T::load(xr + c, xv);
      if constexpr (kBackward) T::load(gr + c, gv);
      for (int k = 0; k < kN; ++k) {
        ssv[k] = at::vec::fmadd(xv[k], xv[k], ssv[k]);
        if constexpr (kBackward) gxv[k] = at::vec::fmadd(gv[k], xv[k], gxv[k]);
      }
    }
    for (int k = 0; k < kN; ++k) ssv[k] = ssv[k] + ssw[k], gxv[k] = gxv[k] + gxw[k];
    acc_t ss = 0, gx = 0;
    for (int k = 0; k < kN; ++k) {
      ss += at::vec::vec_reduce_all<acc_t>([](fVec a, fVec b) { return a + b; }, ssv[k]);
      if constexpr (kBackward) gx += at::vec::vec_reduce_all<acc_t>([](fVec a, fVec b) { return a + b; }, gxv[k]);
    }
    for (; c < C; ++c) {
      const acc_t xv = acc_t(xr[c]);
      ss += xv * xv;
      if constexpr (kBackward) gx += acc_t(gr[c]) * xv;
    }
    const acc_t r = acc_t(1) / std::sqrt(ss * inv_c + e);
    const acc_t q = kBackward ? gx * inv_c * r * r * r : acc_t(0);
    const fVec rv(r), qv(q);
    c = 0;
    for (; c + kStep <= C; c += kStep) {
      fVec xv[kN], gv[kN], yv[kN];
      T::load(xr + c, xv);
      if constexpr (kBackward) T::load(gr + c, gv);
      for (int k = 0; k < kN; ++k) yv[k] = kBackward ? gv[k] * rv - xv[k] * qv : xv[k] * rv;
      if constexpr (kNt)
        T::stream(yr + c, yv);
      else
        T::store(yr + c, yv);
    }
    for (; c < C; ++c) {
      const acc_t xv = acc_t(xr[c]);
      yr[c] = static_cast<scalar_t>(kBackward ? acc_t(gr[c]) * r - xv * q : xv * r);
    }
  }
  if constexpr (kNt) T::fence();  // streaming stores are weakly ordered: publish them before the region ends
}

template <class scalar_t, bool kBackward>
constexpr int64_t max_chunk() {  // per accumulator array: 16 KB forward, 8 KB (x2 arrays) backward; fit L1
  return (kBackward ? 8192 : 16384) / int64_t(sizeof(at::opmath_type<scalar_t>));
}

// NCHW work items [begin, end): item = (outer row o, chunk of cw inner columns).
template <class scalar_t, bool kBackward, bool kNt>
void planes_block(const scalar_t* __restrict x, const scalar_t* __restrict g, scalar_t* __restrict out,
                  int64_t begin, int64_t end, int64_t C, int64_t inner, int64_t chunks, int64_t cw,
                  at::opmath_type<scalar_t> inv_c, at::opmath_type<scalar_t> e) {
  using T = V<scalar_t>;
  using acc_t = typename T::acc_t;
  using fVec = typename T::fVec;
  constexpr int kN = T::kN;
  constexpr int64_t kF = T::kF, kStep = T::kStep;
  constexpr int64_t kMaxChunk = max_chunk<scalar_t, kBackward>();
  alignas(64) acc_t ss[kMaxChunk];
  alignas(64) acc_t gx[kBackward ? kMaxChunk : 1];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t o = item / chunks, j0 = (item % chunks) * cw, nj = std::min(cw, inner - j0);
    const int64_t base = o * C * inner + j0;
    const int64_t nv = nj - nj % kStep;  // vector part of the chunk
    std::fill(ss, ss + nj, acc_t(0));
    if constexpr (kBackward) std::fill(gx, gx + nj, acc_t(0));
    int64_t c = 0;
    if constexpr (!kBackward) {
      for (; c + 2 <= C; c += 2) {
        const scalar_t* xr = x + base + c * inner;
        for (int64_t j = 0; j < nv; j += kStep) {
          fVec xv[kN], xw[kN];
          T::load(xr + j, xv);
          T::load(xr + inner + j, xw);
          for (int k = 0; k < kN; ++k) {
            const int64_t jj = j + k * kF;
            at::vec::fmadd(xw[k], xw[k], at::vec::fmadd(xv[k], xv[k], fVec::loadu(ss + jj))).store(ss + jj);
          }
        }
        for (int64_t j = nv; j < nj; ++j) {
          const acc_t a = acc_t(xr[j]), b = acc_t(xr[inner + j]);
          ss[j] = ss[j] + a * a + b * b;
        }
      }
    }
    for (; c < C; ++c) {
      const scalar_t* xr = x + base + c * inner;
      const scalar_t* gr = kBackward ? g + base + c * inner : nullptr;
      for (int64_t j = 0; j < nv; j += kStep) {
        fVec xv[kN], gv[kN];
        T::load(xr + j, xv);
        if constexpr (kBackward) T::load(gr + j, gv);
        for (int k = 0; k < kN; ++k) {
          const int64_t jj = j + k * kF;
          at::vec::fmadd(xv[k], xv[k], fVec::loadu(ss + jj)).store(ss + jj);
          if constexpr (kBackward) at::vec::fmadd(gv[k], xv[k], fVec::loadu(gx + jj)).store(gx + jj);
        }
      }
      for (int64_t j = nv; j < nj; ++j) {
        const acc_t xv = acc_t(xr[j]);
        ss[j] += xv * xv;
        if constexpr (kBackward) gx[j] += acc_t(gr[j]) * xv;
      }
    }
    for (int64_t j = 0; j < nj; ++j) {
      const acc_t r = acc_t(1) / std::sqrt(ss[j] * inv_c + e);
      ss[j] = r;
      if constexpr (kBackward) gx[j] = gx[j] * inv_c * r * r * r;
    }
    for (c = 0; c < C; ++c) {
      const int64_t off = base + c * inner;
      const scalar_t* xr = x + off;
      const scalar_t* gr = kBackward ? g + off : nullptr;
      scalar_t* yr = out + off;
      for (int64_t j = 0; j < nv; j += kStep) {
        fVec xv[kN], gv[kN], yv[kN];
        T::load(xr + j, xv);
        if constexpr (kBackward) T::load(gr + j, gv);
        for (int k = 0; k < kN; ++k) {
          const fVec rv = fVec::loadu(ss + j + k * kF);
          if constexpr (kBackward)
            yv[k] = gv[k] * rv - xv[k] * fVec::loadu(gx + j + k * kF);
          else
            yv[k] = xv[k] * rv;
        }
        if constexpr (kNt)  // aligned: the run length, chunk width and output base are multiples of 32 bytes
          T::stream(yr + j, yv);
        else
          T::store(yr + j, yv);
      }
      for (int64_t j = nv; j < nj; ++j) {
        const acc_t xv = acc_t(xr[j]);
        if constexpr (kBackward)
          yr[j] = static_cast<scalar_t>(acc_t(gr[j]) * ss[j] - xv * gx[j]);
        else
          yr[j] = static_cast<scalar_t>(xv * ss[j]);
      }
    }
  }
  if constexpr (kNt) T::fence();
}

template <class scalar_t, bool kBackward>
void run(const View& v, double eps) {
  using T = V<scalar_t>;
  using acc_t = typename T::acc_t;
  constexpr int64_t kStep = T::kStep;
  const scalar_t* x = v.x.const_data_ptr<scalar_t>();
  const scalar_t* g = kBackward ? v.g.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = v.out.mutable_data_ptr<scalar_t>();
  const int64_t C = v.C, inner = v.inner, outer = v.outer;
  const acc_t inv_c = acc_t(1) / acc_t(C), e = acc_t(eps);
  if (inner == 1) {
    // Rows of C contiguous values (channels_last, dim last, latents): vector sum of squares along the row, then
    // one vector scale pass over the (L1-hot) row. Small tensors (a 32x512 latent) run inline on the calling
    // thread: parallel_for does not enter the thread pool when the range is within one grain of GRAIN_SIZE
    // elements.
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, C));
    if (use_streaming_stores(v, sizeof(scalar_t), C))
      at::parallel_for(0, outer, grain, [=](int64_t b, int64_t en) {
        rows_block<scalar_t, kBackward, true>(x, g, out, b, en, C, inv_c, e);
      });
    else
      at::parallel_for(0, outer, grain, [=](int64_t b, int64_t en) {
        rows_block<scalar_t, kBackward, false>(x, g, out, b, en, C, inv_c, e);
      });
    return;
  }
  // Spatial dims innermost (NCHW, dim=1). Work items are (outer row, chunk of inner columns) with chunks as wide as
  // an L1-resident accumulator array allows (whole 32x32 and 64x64 planes), because the cost here is DRAM access
  // pattern, not arithmetic: the sums pass then reads each outer row's C x chunk block as long sequential runs the
  // hardware prefetchers follow (narrower chunks, even ones that keep the block L2-resident for the scale pass, were
  // slower: commit 95c1d5e). The scale pass re-reads the block from L2/L3. The sums pass folds two channel rows
  // into each load/fma/store of the accumulators to halve that L1 round trip. Chunks are narrowed only to give every
  // thread work when outer is small.
  constexpr int64_t kMaxChunk = max_chunk<scalar_t, kBackward>();
  static_assert(kMaxChunk % kStep == 0);
  const int64_t threads = at::get_num_threads();
  int64_t chunks = (inner + kMaxChunk - 1) / kMaxChunk;
  if (outer * chunks < threads)  // split planes (no narrower than 8 steps) so that every thread gets a chunk
    chunks = std::max(chunks, std::min(inner / (8 * kStep), (threads + outer - 1) / outer));
  int64_t cw = (inner + chunks - 1) / chunks;
  cw = std::min(kMaxChunk, (cw + kStep - 1) / kStep * kStep);
  chunks = (inner + cw - 1) / cw;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, C * std::min(inner, cw)));
  if (use_streaming_stores(v, sizeof(scalar_t), inner))
    at::parallel_for(0, outer * chunks, grain, [=](int64_t b, int64_t en) {
      planes_block<scalar_t, kBackward, true>(x, g, out, b, en, C, inner, chunks, cw, inv_c, e);
    });
  else
    at::parallel_for(0, outer * chunks, grain, [=](int64_t b, int64_t en) {
      planes_block<scalar_t, kBackward, false>(x, g, out, b, en, C, inner, chunks, cw, inv_c, e);
    });
}

at::Tensor forward(const at::Tensor& x, int64_t dim, double eps) {
  View v = make(nullptr, x, dim, eps);
  if (x.numel() == 0) return v.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_norm_cpu",
                                  [&] { run<scalar_t, false>(v, eps); });
  return v.out;
}

at::Tensor backward(const at::Tensor& grad, const at::Tensor& x, int64_t dim, double eps) {
  View v = make(&grad, x, dim, eps);
  if (x.numel() == 0) return v.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_norm_backward_cpu",
                                  [&] { run<scalar_t, true>(v, eps); });
  return v.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("pixel_norm", &forward);
  m.impl("pixel_norm_backward", &backward);
}

}  // namespace vkernels::pixel_norm
