// filtered_lrelu schema (defined once here: the forward op and the masked linear op its gradients use) and the
// argument checks, geometry and taps shared by backends.
#include "ops/filtered_lrelu.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "ops/upfirdn2d.h"

namespace vkernels::filtered_lrelu {

Problem make(const at::Tensor& x, const at::Tensor& fa, const at::Tensor& fb, int64_t up, int64_t down, int64_t px0,
             int64_t px1, int64_t py0, int64_t py1, double gain_a, double gain_b, bool flip_filter, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, ": x must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat ||
                  x.scalar_type() == at::kDouble,
              name, ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  for (auto [f, fname] : {std::pair<const at::Tensor&, const char*>{fa, "fu"}, {fb, "fd"}}) {
    TORCH_CHECK(f.dim() == 1 || f.dim() == 2, name, ": ", fname, " must be 1-D (separable) or 2-D, got shape ",
                f.sizes());
    TORCH_CHECK(f.scalar_type() == at::kFloat, name, ": ", fname, " must be float32, got ", f.scalar_type());
    TORCH_CHECK(f.numel() > 0, name, ": ", fname, " must not be empty");
  }
  TORCH_CHECK(up >= 1, name, ": up must be >= 1, got ", up);
  TORCH_CHECK(down >= 1, name, ": down must be >= 1, got ", down);
  Problem p;
  p.N = x.size(0), p.C = x.size(1);
  p.sep_a = fa.dim() == 1, p.sep_b = fb.dim() == 1;
  auto axis = [&](int64_t Z, int64_t P0, int64_t P1, int64_t A, int64_t B) {
    Axis a;
    a.Z = Z, a.U = up, a.P0 = P0, a.A = A, a.D = down, a.B = B;
    const int64_t mid = Z * up + P0 + P1 - A + 1;  // mid samples the padding allows
    a.O = mid >= B ? (mid - B) / down + 1 : 0;
    TORCH_CHECK(a.O >= 1, name, ": output size must be >= 1, but the upsampled, padded, up-filtered input has ", mid,
                " samples along an axis and the down filter has ", B, " taps; check padding (negative values crop)");
    a.M = (a.O - 1) * down + B;
    return a;
  };
  p.ax = axis(x.size(3), px0, px1, fa.size(-1), fb.size(-1));
  p.ay = axis(x.size(2), py0, py1, fa.size(0), fb.size(0));
  p.wa = upfirdn2d::fir_taps(fa, flip_filter, gain_a);
  p.wb = upfirdn2d::fir_taps(fb, flip_filter, gain_b);
  p.channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  p.x = x;
  p.out = at::empty({p.N, p.C, p.ay.O, p.ax.O},
                    x.options().memory_format(p.channels_last ? at::MemoryFormat::ChannelsLast
                                                              : at::MemoryFormat::Contiguous));
  return p;
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // Returns (y, mask): mask is uint8 (N, C, Mh, ceil(Mw / 4)), 2 bits per used mid sample (see filtered_lrelu.h),
  // or an empty tensor when write_mask is false. fu/fd: float32, 1-D (separable) or 2-D. No gradient w.r.t. them.
  m.def("filtered_lrelu(Tensor x, Tensor fu, Tensor fd, Tensor? b, int up, int down, int px0, int px1, int py0, "
        "int py1, float gain, float slope, float? clamp, bool flip_filter, bool write_mask) -> (Tensor, Tensor)");
  // The linear map dz -> fb-downfiltered(mask factor * fa-upfiltered(dz)); gradients of filtered_lrelu of every order.
  m.def("filtered_lrelu_masked(Tensor z, Tensor fa, Tensor fb, Tensor mask, int mask_w, int sx, int sy, int up, "
        "int down, int px0, int px1, int py0, int py1, float gain_a, float gain_b, float gain, float slope, "
        "bool flip_filter) -> Tensor");
}

}  // namespace vkernels::filtered_lrelu
