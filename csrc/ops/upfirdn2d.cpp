// upfirdn2d schema (defined once here) and the argument checks, output size and filter taps shared by backends.
#include "ops/upfirdn2d.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

namespace vkernels::upfirdn2d {

Problem make(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
             int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip_filter, double gain) {
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat ||
                  x.scalar_type() == at::kDouble,
              "upfirdn2d: x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(f.dim() == 1 || f.dim() == 2, "upfirdn2d: f must be 1-D (separable) or 2-D, got shape ", f.sizes());
  TORCH_CHECK(f.scalar_type() == at::kFloat, "upfirdn2d: f must be float32, got ", f.scalar_type());
  TORCH_CHECK(f.numel() > 0, "upfirdn2d: f must not be empty, got shape ", f.sizes());
  TORCH_CHECK(upx >= 1 && upy >= 1, "upfirdn2d: up must be >= 1, got (", upx, ", ", upy, ")");
  TORCH_CHECK(downx >= 1 && downy >= 1, "upfirdn2d: down must be >= 1, got (", downx, ", ", downy, ")");
  TORCH_CHECK(std::isfinite(gain), "upfirdn2d: gain must be finite, got ", gain);
  Problem p;
  p.N = x.size(0), p.C = x.size(1), p.H = x.size(2), p.W = x.size(3);
  p.upx = upx, p.upy = upy, p.downx = downx, p.downy = downy;
  p.padx0 = padx0, p.padx1 = padx1, p.pady0 = pady0, p.pady1 = pady1;
  p.separable = f.dim() == 1;
  p.fw = f.size(-1);
  p.fh = f.size(0);
  const int64_t upW = p.W * upx + padx0 + padx1, upH = p.H * upy + pady0 + pady1;
  TORCH_CHECK(upW >= p.fw && upH >= p.fh, "upfirdn2d: output size must be >= 1: the upsampled, padded input is ",
              upH, "x", upW, " (H*upy+pady0+pady1 x W*upx+padx0+padx1) but the filter is ", p.fh, "x", p.fw,
              "; check padding");
  p.outW = (upW - p.fw) / downx + 1;
  p.outH = (upH - p.fh) / downy + 1;

  const std::vector<float> t = fir_taps(f, flip_filter, gain);
  // Separable: the same 1-D taps serve both passes (fx then fy).
  if (p.separable) {
    p.taps = t;
    p.taps.insert(p.taps.end(), t.begin(), t.end());
  } else {
    p.taps = t;
  }

  // channels_last in, channels_last out; everything else gives a contiguous output (the rule the fake kernel and
  // the Triton launcher follow too).
  p.channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  p.x = x;
  p.out = at::empty({p.N, p.C, p.outH, p.outW}, x.options().memory_format(
                                                    p.channels_last ? at::MemoryFormat::ChannelsLast
                                                                    : at::MemoryFormat::Contiguous));
  return p;
}

std::vector<float> fir_taps(const at::Tensor& f, bool flip_filter, double gain) {
  // StyleGAN's reference computes f * gain ** (f.ndim / 2) on the float32 filter, then casts to x's dtype; doing the
  // same float32 product keeps fp64 results identical to it. A full flip of a row-major array reverses it.
  const at::Tensor fc = f.detach().to(at::kCPU).contiguous();
  const float* fp = fc.const_data_ptr<float>();
  const float g = static_cast<float>(std::pow(gain, f.dim() / 2.0));
  const int64_t n = fc.numel();
  std::vector<float> taps(n);
  for (int64_t k = 0; k < n; ++k) taps[k] = fp[flip_filter ? k : n - 1 - k] * g;
  return taps;
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // f: float32 filter, 1-D (separable) or 2-D. No gradient w.r.t. f (as StyleGAN); the gradient w.r.t. x is this
  // op again with up/down swapped, padding transformed and the filter flipped, so every order is available.
  m.def("upfirdn2d(Tensor x, Tensor f, int upx, int upy, int downx, int downy, int padx0, int padx1, int pady0, "
        "int pady1, bool flip_filter, float gain) -> Tensor");
}

}  // namespace vkernels::upfirdn2d
