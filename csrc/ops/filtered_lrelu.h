// filtered_lrelu: what the schema file shares with the backends (argument checks, geometry, taps, the mask format).
//
// Semantics (StyleGAN3 torch_utils/ops/filtered_lrelu.py, `_filtered_lrelu_ref`), per (n, c) plane and axis:
//   mid[m] = sum_j wa[j] * Zu(m + j)          Zu = x + b, zero-inserted by `up`, padded (negative crops)
//   a[m]   = act(mid[m])                      clamp(lrelu(mid, slope) * gain, -clamp, clamp)
//   y[o]   = sum_k wb[k] * a[o * down + k]    "valid" correlation with the down filter, then decimation
// wa = fu (flipped unless flip_filter) * up**2 (applied as gain ** (ndim / 2) per pass, as upfirdn2d does), wb = fd.
// Only the mid samples some y needs are ever formed (Mh x Mw = ((outH-1)*down + fdh) x ((outW-1)*down + fdw)),
// a tile at a time, never the whole upsampled tensor.
//
// Backward keeps 2 bits per mid sample (the mask, 4 per byte, row-major per plane, rows padded to whole bytes):
//   code 0 = no gradient (clamped, or never computed), 1 = positive side (factor gain), 2 = negative (gain*slope).
// The "masked" op is the same pipeline with act replaced by a[m] = mid[m] * factor(mask[m + s]) (0 off the mask):
// a linear map whose transpose is the masked op again (filters swapped and flipped, up/down swapped), which is
// both the gradient of filtered_lrelu (StyleGAN3's scheme) and every higher-order gradient.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace vkernels::filtered_lrelu {

struct Axis {
  int64_t Z = 0;     // input length
  int64_t U = 1;     // up factor
  int64_t P0 = 0;    // padding before (on the upsampled grid); negative crops
  int64_t A = 1;     // taps of the first (up) filter along this axis
  int64_t D = 1;     // down factor
  int64_t B = 1;     // taps of the second (down) filter along this axis
  int64_t O = 0;     // output length
  int64_t M = 0;     // mid samples used: (O - 1) * D + B
};

struct Problem {
  at::Tensor x;                 // input (N, C, H, W), any strides
  at::Tensor out;               // channels_last when x is channels_last-dense, else contiguous
  std::optional<at::Tensor> b;  // bias (C,), forward op only
  at::Tensor mask;              // uint8 (N, C, mask_h, ceil(mask_w / 4)); written (forward) or read (masked op)
  bool masked = false;          // false: lrelu + clamp (and write `mask` when defined); true: read `mask`
  bool write_mask = false;
  int64_t N = 0, C = 0;
  Axis ax, ay;
  bool sep_a = false, sep_b = false;  // 1-D (separable) filters
  std::vector<float> wa, wb;          // correlation taps (row-major 2-D, or the 1-D taps used on both axes)
  double gain = 1, slope = 0.2, clamp = -1;  // clamp < 0: none
  int64_t mask_w = 0, mask_h = 0, sx = 0, sy = 0;  // mask read at (m_y + sy, m_x + sx) in the masked op
  bool channels_last = false;
};

// Mask bytes per mask row.
inline int64_t mask_row_bytes(int64_t mask_w) { return (mask_w + 3) / 4; }

Problem make(const at::Tensor& x, const at::Tensor& fa, const at::Tensor& fb, int64_t up, int64_t down, int64_t px0,
             int64_t px1, int64_t py0, int64_t py1, double gain_a, double gain_b, bool flip_filter, const char* name);

}  // namespace vkernels::filtered_lrelu
