// pixel_norm on CPU. x is viewed as (outer, C, inner) in storage order (C = x.shape[dim]); channels_last 4-D input
// with dim=1 is (N*H*W, C, 1) in storage order, so it is read in place.
// Forward: reads x twice (sum of squares, then scale; the second read of a C-row is usually cache-hot), writes y:
//   ~3 FLOPs per element. Backward: reads x and g twice, writes dx: ~6 FLOPs per element.
// Accumulation in opmath (fp32 for fp16/bf16, fp64 for fp64). Parallel over outer x inner-chunks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace vkernels::pixel_norm {
namespace {

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

template <class scalar_t, bool kBackward>
void run(const View& v, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = v.x.const_data_ptr<scalar_t>();
  const scalar_t* g = kBackward ? v.g.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = v.out.mutable_data_ptr<scalar_t>();
  const int64_t C = v.C, inner = v.inner;
  const acc_t inv_c = acc_t(1) / acc_t(C), e = acc_t(eps);
  // Work items: (outer row, chunk of inner columns); chunks keep the per-column accumulators in L1.
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (inner + kChunk - 1) / kChunk;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, C * std::min(inner, kChunk)));
  at::parallel_for(0, v.outer * chunks, grain, [&](int64_t begin, int64_t end) {
    acc_t ss[kChunk], gx[kChunk];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t o = item / chunks, j0 = (item % chunks) * kChunk, nj = std::min(kChunk, inner - j0);
      const int64_t base = o * C * inner + j0;
      std::fill(ss, ss + nj, acc_t(0));
      std::fill(gx, gx + nj, acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* xr = x + base + c * inner;
        for (int64_t j = 0; j < nj; ++j) {
          const acc_t xv = acc_t(xr[j]);
          ss[j] += xv * xv;
          if constexpr (kBackward) gx[j] += acc_t(g[base + c * inner + j]) * xv;
        }
      }
      for (int64_t j = 0; j < nj; ++j) {
        const acc_t r = acc_t(1) / std::sqrt(ss[j] * inv_c + e);
        ss[j] = r;
        if constexpr (kBackward) gx[j] = gx[j] * inv_c * r * r * r;
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = base + c * inner;
        for (int64_t j = 0; j < nj; ++j) {
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
