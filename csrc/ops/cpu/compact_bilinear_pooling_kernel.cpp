// compact_bilinear_pooling on CPU: the Gram route, one image at a time per thread.
//
// Forward, per image b: G = X_b Y_b^T (C1 x C2, at::mm into a thread-local buffer, fp32 accumulation; fp64 for
// fp64), then while G is still in cache the signed scatter out[b, (h1[i] + h2[j]) mod D] += s1[i] s2[j] G[i, j],
// row by row in a fixed order. Each output row is written by the one thread that owns image b, so there are no
// atomics and the result is the same on every run. Nothing per location and nothing of size B x C1 x C2 exists.
// Work: 2 HW C1 C2 FLOPs (GEMM) + 2 C1 C2 (scatter) per image; bytes: x, y read once (plus an fp32 copy of
// fp16/bf16 inputs), G (4 C1 C2) stays in L2 for C <= 512 and streams once from memory for larger C.
//
// Backward, per image: dG[i, j] = s1[i] s2[j] grad_out[b, (h1[i] + h2[j]) mod D] (a gather into the thread-local
// buffer), dX_b = dG Y_b, dY_b = dG^T X_b (two GEMMs): 4 HW C1 C2 FLOPs + C1 C2 gathers per image.
//
// When there are fewer images than threads, per-image work would leave threads idle: then G for all images comes
// from one multi-threaded at::bmm, and the scatter splits each image's rows into a fixed number of chunks whose
// partial sums are added in chunk order (deterministic for a given shape and thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/compact_bilinear_pooling.h"
#include "ops/cpu/compact_bilinear_pooling_cpu_common.h"

namespace vkernels::compact_bilinear_pooling {
namespace {

// out[(h1[i] + h2[j]) mod D] += s1[i] s2[j] G[i, j] for rows i in [i0, i1), in row-major order.
template <class acc_t>
void scatter_rows(const acc_t* G, int64_t C2, int64_t i0, int64_t i1, const Hashes<acc_t>& hs, int32_t D,
                  acc_t* out) {
  const int32_t* h2 = hs.h2.data();
  const acc_t* s2 = hs.s2.data();
  for (int64_t i = i0; i < i1; ++i) {
    const acc_t* row = G + i * C2;
    const int32_t hi = hs.h1[i];
    const acc_t si = hs.s1[i];
    for (int64_t j = 0; j < C2; ++j) {
      int32_t d = hi + h2[j];
      d -= d >= D ? D : 0;
      out[d] += si * s2[j] * row[j];
    }
  }
}

// dG[i, j] = s1[i] s2[j] g[(h1[i] + h2[j]) mod D] for rows [i0, i1).
template <class acc_t>
void gather_rows(const acc_t* g, int64_t C2, int64_t i0, int64_t i1, const Hashes<acc_t>& hs, int32_t D,
                 acc_t* dG) {
  const int32_t* h2 = hs.h2.data();
  const acc_t* s2 = hs.s2.data();
  for (int64_t i = i0; i < i1; ++i) {
    acc_t* row = dG + i * C2;
    const int32_t hi = hs.h1[i];
    const acc_t si = hs.s1[i];
    for (int64_t j = 0; j < C2; ++j) {
      int32_t d = hi + h2[j];
      d -= d >= D ? D : 0;
      row[j] = si * s2[j] * g[d];
    }
  }
}

// (B, C, H, W) -> (B, C, HW) in the accumulation dtype; a view for fp32/fp64 NCHW and channels_last inputs
// (channels_last flattens to a transposed matrix, which the GEMMs take as is).
at::Tensor as_matrix(const at::Tensor& x) {
  return x.to(acc_type(x)).flatten(2);
}

bool per_image(int64_t B) { return B >= at::get_num_threads(); }

template <class acc_t>
at::Tensor forward(const at::Tensor& x, const at::Tensor& y, const Hashes<acc_t>& hs, int64_t D) {
  const int64_t B = x.size(0), C1 = x.size(1), C2 = y.size(1);
  const at::Tensor X = as_matrix(x), Y = as_matrix(y);
  at::Tensor out = at::zeros({B, D}, X.options());
  if (B == 0 || C1 == 0 || C2 == 0) return out.to(x.scalar_type());
  acc_t* op = out.mutable_data_ptr<acc_t>();
  if (per_image(B)) {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      at::AutoDispatchBelowADInplaceOrView guard;  // per worker thread: the caller's TLS guard does not reach it
      at::Tensor G = at::empty({C1, C2}, X.options());
      for (int64_t b = b0; b < b1; ++b) {
        at::mm_out(G, X[b], Y[b].t());
        scatter_rows<acc_t>(G.const_data_ptr<acc_t>(), C2, 0, C1, hs, int32_t(D), op + b * D);
      }
    });
  } else {
    const at::Tensor G = at::bmm(X, Y.transpose(1, 2)).contiguous();
    const acc_t* gp = G.const_data_ptr<acc_t>();
    const int64_t nchunk = std::min<int64_t>(C1, (at::get_num_threads() + B - 1) / B);
    at::Tensor part = at::zeros({B, nchunk, D}, X.options());
    acc_t* pp = part.mutable_data_ptr<acc_t>();
    at::parallel_for(0, B * nchunk, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / nchunk, c = t % nchunk;
        scatter_rows<acc_t>(gp + b * C1 * C2, C2, c * C1 / nchunk, (c + 1) * C1 / nchunk, hs, int32_t(D),
                            pp + t * D);
      }
    });
    out = part.sum(1);  // chunk order is fixed: a deterministic reduction of nchunk values per element
  }
  return out.to(x.scalar_type());
}

template <class acc_t>
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& y,
                                            const Hashes<acc_t>& hs, int64_t D) {
  const int64_t B = x.size(0), C1 = x.size(1), C2 = y.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor X = as_matrix(x), Y = as_matrix(y);
  const at::Tensor g = grad_out.to(acc_type(x)).contiguous();
  // Every element is written by a GEMM below unless a size is 0 (then the gradients are zeros): no zero fill,
  // which on CPU would touch the 4 B HW (C1 + C2) bytes of fresh memory twice.
  const bool empty = B == 0 || C1 == 0 || C2 == 0 || H * W == 0;
  auto alloc = [&](int64_t C) {
    return empty ? at::zeros({B, C, H * W}, X.options()) : at::empty({B, C, H * W}, X.options());
  };
  at::Tensor dX = alloc(C1), dY = alloc(C2);
  if (!empty) {
    const acc_t* gp = g.const_data_ptr<acc_t>();
    if (per_image(B)) {
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        at::AutoDispatchBelowADInplaceOrView guard;
        at::Tensor dG = at::empty({C1, C2}, X.options());
        for (int64_t b = b0; b < b1; ++b) {
          gather_rows<acc_t>(gp + b * D, C2, 0, C1, hs, int32_t(D), dG.mutable_data_ptr<acc_t>());
          at::Tensor dXb = dX[b], dYb = dY[b];
          at::mm_out(dXb, dG, Y[b]);
          at::mm_out(dYb, dG.t(), X[b]);
        }
      });
    } else {
      at::Tensor dG = at::empty({B, C1, C2}, X.options());
      acc_t* dp = dG.mutable_data_ptr<acc_t>();
      at::parallel_for(0, B * C1, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / C1, i = r % C1;
          gather_rows<acc_t>(gp + b * D, C2, i, i + 1, hs, int32_t(D), dp + b * C1 * C2);
        }
      });
      at::bmm_out(dX, dG, Y);
      at::bmm_out(dY, dG.transpose(1, 2), X);
    }
  }
  return {dX.view({B, C1, H, W}).to(x.scalar_type()), dY.view({B, C2, H, W}).to(x.scalar_type())};
}

at::Tensor compact_bilinear_pooling_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h1,
                                        const at::Tensor& s1, const at::Tensor& h2, const at::Tensor& s2,
                                        int64_t output_dim) {
  at::AutoDispatchBelowADInplaceOrView guard;  // the GEMMs are internal, never differentiated
  check_inputs("compact_bilinear_pooling", x, y, h1, s1, h2, s2, output_dim);
  return with_hashes(x, h1, s1, h2, s2, [&](const auto& hs) { return forward(x, y, hs, output_dim); });
}

std::tuple<at::Tensor, at::Tensor> compact_bilinear_pooling_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& y, const at::Tensor& h1, const at::Tensor& s1,
    const at::Tensor& h2, const at::Tensor& s2) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const char* op = "compact_bilinear_pooling_backward";
  const int64_t D = check_backward_inputs(op, grad_out, x, y, h1, s1, h2, s2);
  return with_hashes(x, h1, s1, h2, s2, [&](const auto& hs) { return backward(grad_out, x, y, hs, D); });
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("compact_bilinear_pooling", &compact_bilinear_pooling_cpu);
  m.impl("compact_bilinear_pooling_backward", &compact_bilinear_pooling_backward_cpu);
}

}  // namespace vkernels::compact_bilinear_pooling
