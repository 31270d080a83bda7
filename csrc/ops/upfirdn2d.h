// upfirdn2d: what the schema file shares with the backends (argument checks, output size, filter taps, layout).
//
// Semantics (StyleGAN2/3 torch_utils/ops/upfirdn2d.py, `_upfirdn2d_ref`): per (n, c) plane, insert up-1 zeros
// after every input pixel, pad (negative = crop), correlate with the filter flipped (or not, with flip_filter),
// keep every down-th pixel, scale by gain. Written as one sum, for taps w[i][j] (f flipped unless flip_filter):
//   out[oy][ox] = sum_{i<fh, j<fw} w[i][j] * X(oy*downy + i - pady0, ox*downx + j - padx0)
//   X(u, v) = x[u / upy][v / upx] when upy | u, upx | v and the index is inside x, else 0.
// A 1-D f is separable: w[i][j] = fy[i] * fx[j] with fx = fy = f, applied as two 1-D passes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace vkernels::upfirdn2d {

struct Problem {
  at::Tensor x;    // input (N, C, H, W), any strides
  at::Tensor out;  // (N, C, outH, outW): channels_last when x is channels_last-dense, else contiguous
  int64_t N = 0, C = 0, H = 0, W = 0, outH = 0, outW = 0;
  int64_t upx = 1, upy = 1, downx = 1, downy = 1, padx0 = 0, padx1 = 0, pady0 = 0, pady1 = 0;
  int64_t fh = 1, fw = 1;
  bool separable = false;    // f was 1-D: taps = fx (fw values) then fy (fh values)
  bool channels_last = false;
  // Correlation taps with flip and gain applied exactly as StyleGAN's reference rounds them: in float32,
  // f * float(gain ** (f.ndim / 2)). 2-D: fh*fw row-major w[i][j]; separable: fx[0..fw) then fy[0..fh).
  std::vector<float> taps;
};

Problem make(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
             int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip_filter, double gain);

// Correlation taps of a float32 1-D or 2-D filter, rounded as StyleGAN's reference rounds them: in float32,
// f * float(gain ** (f.ndim / 2)), flipped (every axis) unless flip_filter; row-major. Shared with filtered_lrelu.
std::vector<float> fir_taps(const at::Tensor& f, bool flip_filter, double gain);

// Floor division and modulo for a possibly negative numerator and a positive divisor.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

}  // namespace vkernels::upfirdn2d
