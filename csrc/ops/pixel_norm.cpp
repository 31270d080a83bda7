// pixel_norm: schema (defined once; the CPU kernel is in cpu/pixel_norm_kernel.cpp, the GPU path is Triton).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // y = x * rsqrt(mean(x^2 over dim) + eps)   (StyleGAN's normalize_2nd_moment, ProGAN's pixel norm)
  m.def("pixel_norm(Tensor x, int dim, float eps) -> Tensor");
  // dx = r * g - x * r^3 * mean(g * x over dim), r = rsqrt(mean(x^2) + eps); recomputes r from x.
  m.def("pixel_norm_backward(Tensor grad, Tensor x, int dim, float eps) -> Tensor");
}
