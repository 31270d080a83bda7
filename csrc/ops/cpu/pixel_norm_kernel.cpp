// pixel_norm on CPU. x is viewed as (outer, C, inner) in storage order (C = x.shape[dim]); channels_last 4-D input
// with dim=1 is (N*H*W, C, 1) in storage order, so it is read in place.
// Forward: reads x twice (sum of squares, then scale; the second read of a C-row is usually cache-hot), writes y:
//   ~3 FLOPs per element. Backward: reads x and g twice, writes dx: ~6 FLOPs per element.
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
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

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
    if constexpr (kReduced) {
      std::tie(v[0], v[1]) = at::vec::convert_to_float<scalar_t>(sVec::loadu(p));
    } else {
      v[0] = fVec::loadu(p);
    }
  }
  static void store(scalar_t* p, const fVec* v) {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p);
    } else {
      v[0].store(p);
    }
  }
};

template <class scalar_t, bool kBackward>
void run(const View& v, double eps) {
  using T = V<scalar_t>;
  using acc_t = typename T::acc_t;
  using fVec = typename T::fVec;
  constexpr int kN = T::kN;
  constexpr int64_t kF = T::kF, kStep = T::kStep;
  const scalar_t* x = v.x.const_data_ptr<scalar_t>();
  const scalar_t* g = kBackward ? v.g.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = v.out.mutable_data_ptr<scalar_t>();
  const int64_t C = v.C, inner = v.inner;
  const acc_t inv_c = acc_t(1) / acc_t(C), e = acc_t(eps);
  if (inner == 1) {
    // Rows of C contiguous values (channels_last, dim last, latents): vector sum of squares along the row, then
    // one vector scale pass over the (L1-hot) row. Small tensors (a 32x512 latent) run on one thread: the grain
    // covers GRAIN_SIZE elements.
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, C));
    at::parallel_for(0, v.outer, grain, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        const scalar_t* xr = x + o * C;
        const scalar_t* gr = kBackward ? g + o * C : nullptr;
        scalar_t* yr = out + o * C;
        fVec ssv[kN], gxv[kN];
        for (int k = 0; k < kN; ++k) ssv[k] = fVec(0), gxv[k] = fVec(0);
        int64_t c = 0;
        for (; c + kStep <= C; c += kStep) {
          fVec xv[kN], gv[kN];
          T::load(xr + c, xv);
          if constexpr (kBackward) T::load(gr + c, gv);
          for (int k = 0; k < kN; ++k) {
            ssv[k] = at::vec::fmadd(xv[k], xv[k], ssv[k]);
            if constexpr (kBackward) gxv[k] = at::vec::fmadd(gv[k], xv[k], gxv[k]);
          }
        }
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
          T::store(yr + c, yv);
        }
        for (; c < C; ++c) {
          const acc_t xv = acc_t(xr[c]);
          yr[c] = static_cast<scalar_t>(kBackward ? acc_t(gr[c]) * r - xv * q : xv * r);
        }
      }
    });
    return;
  }
  // Spatial dims innermost (NCHW, dim=1): work items are (outer row, chunk of inner columns); per-column
  // accumulators for a chunk stay in L1 while the C rows of the chunk stream through once for the sums and once
  // (cache-hot for moderate C * chunk) for the scale.
  constexpr int64_t kChunk = 256;
  static_assert(kChunk % kStep == 0);
  const int64_t chunks = (inner + kChunk - 1) / kChunk;
  const int64_t grain =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, C * std::min(inner, kChunk)));
  at::parallel_for(0, v.outer * chunks, grain, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t ss[kChunk], gx[kChunk];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t o = item / chunks, j0 = (item % chunks) * kChunk, nj = std::min(kChunk, inner - j0);
      const int64_t base = o * C * inner + j0;
      const int64_t nv = nj - nj % kStep;  // vector part of the chunk
      std::fill(ss, ss + nj, acc_t(0));
      std::fill(gx, gx + nj, acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
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
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = base + c * inner;
        for (int64_t j = 0; j < nv; j += kStep) {
          fVec xv[kN], gv[kN], yv[kN];
          T::load(x + off + j, xv);
          if constexpr (kBackward) T::load(g + off + j, gv);
          for (int k = 0; k < kN; ++k) {
            const fVec rv = fVec::loadu(ss + j + k * kF);
            if constexpr (kBackward)
              yv[k] = gv[k] * rv - xv[k] * fVec::loadu(gx + j + k * kF);
            else
              yv[k] = xv[k] * rv;
          }
          T::store(out + off + j, yv);
        }
        for (int64_t j = nv; j < nj; ++j) {
          const acc_t xv = acc_t(x[off + j]);
          if constexpr (kBackward)
            out[off + j] = static_cast<scalar_t>(acc_t(g[off + j]) * ss[j] - xv * gx[j]);
          else
            out[off + j] = static_cast<scalar_t>(xv * ss[j]);
        }
      }
    }
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
