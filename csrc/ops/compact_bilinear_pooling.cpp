// compact_bilinear_pooling schema (forward and backward, defined once here) and the argument checks shared by
// backends.
//
// Sum-pooled Tensor Sketch (Gao et al., CVPR 2016) through the Gram route: with G_b = X_b Y_b^T (C1 x C2, X_b the
// (C1, HW) matrix of image b), out[b, (h1[i] + h2[j]) mod D] += s1[i] s2[j] G_b[i, j]. This equals the sum over
// locations of irfft(rfft(CS1(x_l)) * rfft(CS2(y_l)), n=D), because the count sketches are linear and the circular
// convolution of CS1(a) and CS2(b) is the count sketch of a (x) b under the hash (h1[i] + h2[j]) mod D.
#include "ops/compact_bilinear_pooling.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace vkernels::compact_bilinear_pooling {
namespace {

bool is_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

void check_hash(const char* op, const at::Tensor& h, const char* hname, const at::Tensor& s, const char* sname,
                int64_t C, int64_t D, const at::Tensor& x) {
  TORCH_CHECK(h.scalar_type() == at::kLong, op, ": ", hname, " must be int64, got ", h.scalar_type());
  TORCH_CHECK(h.dim() == 1 && h.size(0) == C, op, ": ", hname, " must have shape [", C, "], got ", h.sizes());
  TORCH_CHECK(s.dim() == 1 && s.size(0) == C, op, ": ", sname, " must have shape [", C, "], got ", s.sizes());
  TORCH_CHECK(!s.is_complex() && s.scalar_type() != at::kBool, op, ": ", sname,
              " must be a real tensor of +1/-1, got ", s.scalar_type());
  TORCH_CHECK(h.device() == x.device() && s.device() == x.device(), op, ": ", hname, " and ", sname,
              " must be on x's device ", x.device(), ", got ", h.device(), " and ", s.device());
  if (x.device().is_cpu() && C > 0) {
    const at::Tensor hc = h.contiguous();
    const int64_t* hp = hc.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < C; ++i)
      TORCH_CHECK(hp[i] >= 0 && hp[i] < D, op, ": ", hname, "[", i, "] = ", hp[i], " is outside [0, output_dim = ",
                  D, ")");
    const at::Tensor sc = s.to(at::kDouble).contiguous();
    const double* sp = sc.const_data_ptr<double>();
    for (int64_t i = 0; i < C; ++i)
      TORCH_CHECK(sp[i] == 1.0 || sp[i] == -1.0, op, ": ", sname, "[", i, "] = ", sp[i], " is not +1 or -1");
  }
}

}  // namespace

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& y, const at::Tensor& h1,
                  const at::Tensor& s1, const at::Tensor& h2, const at::Tensor& s2, int64_t output_dim) {
  TORCH_CHECK(is_float(x.scalar_type()), op, ": x must be float16, bfloat16, float32 or float64, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [B, C1, H, W], got ", x.sizes());
  TORCH_CHECK(y.dim() == 4, op, ": y must have shape [B, C2, H, W], got ", y.sizes());
  TORCH_CHECK(y.size(0) == x.size(0) && y.size(2) == x.size(2) && y.size(3) == x.size(3), op,
              ": y must have x's batch and spatial sizes (B, H, W) = (", x.size(0), ", ", x.size(2), ", ", x.size(3),
              "), got y.shape ", y.sizes());
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), op, ": y must have x's dtype ", x.scalar_type(), ", got ",
              y.scalar_type());
  TORCH_CHECK(y.device() == x.device(), op, ": y is on ", y.device(), " but x is on ", x.device());
  TORCH_CHECK(output_dim >= 1, op, ": output_dim must be >= 1, got ", output_dim);
  TORCH_CHECK(output_dim <= (int64_t(1) << 30) && x.size(1) * y.size(1) < (int64_t(1) << 31), op,
              ": output_dim and C1 * C2 must fit int32 indexing, got output_dim ", output_dim, ", C1 * C2 = ",
              x.size(1) * y.size(1));
  check_hash(op, h1, "h1", s1, "s1", x.size(1), output_dim, x);
  check_hash(op, h2, "h2", s2, "s2", y.size(1), output_dim, x);
}

int64_t check_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& y,
                              const at::Tensor& h1, const at::Tensor& s1, const at::Tensor& h2,
                              const at::Tensor& s2) {
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == x.size(0), op, ": grad_out must have shape [", x.size(0),
              ", output_dim], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(), " but x is on ",
              x.device());
  TORCH_CHECK(grad_out.is_floating_point(), op, ": grad_out must be a float tensor, got ", grad_out.scalar_type());
  const int64_t D = grad_out.size(1);
  check_inputs(op, x, y, h1, s1, h2, s2, D);
  return D;
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // x: (B, C1, H, W), y: (B, C2, H, W) (any strides, e.g. channels_last); -> (B, output_dim) in x's dtype,
  // accumulated in fp32 (fp64 for fp64). Deterministic: every output element is one ordered sum.
  m.def("compact_bilinear_pooling(Tensor x, Tensor y, Tensor h1, Tensor s1, Tensor h2, Tensor s2, "
        "int output_dim) -> Tensor");
  // Gradients of sum(grad_out * out) w.r.t. x and y: dG[b, i, j] = s1[i] s2[j] grad_out[b, (h1[i] + h2[j]) mod D],
  // dX = dG Y, dY = dG^T X. Both are contiguous (B, C, H, W) in x's dtype.
  m.def("compact_bilinear_pooling_backward(Tensor grad_out, Tensor x, Tensor y, Tensor h1, Tensor s1, Tensor h2, "
        "Tensor s2) -> (Tensor grad_x, Tensor grad_y)");
  // The same function through the frequency-pooled route: out_b = irfft(sum_l rfft(CS1(x_l)) rfft(CS2(y_l)), n=D),
  // locations taken a bounded chunk at a time (never all per-location sketches or spectra at once). O(HW D log D)
  // per image instead of the Gram route's O(HW C1 C2): wins for large C and small H W (see vkernels/ops).
  m.def("compact_bilinear_pooling_freq(Tensor x, Tensor y, Tensor h1, Tensor s1, Tensor h2, Tensor s2, "
        "int output_dim) -> Tensor");
  // dCS1_l = irfft(rfft(g) conj(rfft(CS2(y_l)))) (circular correlation), grad_x[c, l] = s1[c] dCS1_l[h1[c]]; y alike.
  m.def("compact_bilinear_pooling_freq_backward(Tensor grad_out, Tensor x, Tensor y, Tensor h1, Tensor s1, "
        "Tensor h2, Tensor s2) -> (Tensor grad_x, Tensor grad_y)");
}

}  // namespace vkernels::compact_bilinear_pooling
