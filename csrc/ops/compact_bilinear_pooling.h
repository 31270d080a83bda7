// compact_bilinear_pooling: what the schema file shares with the kernels (argument checks).
#pragma once

#include <ATen/core/Tensor.h>

namespace vkernels::compact_bilinear_pooling {

// Checks x (B, C1, H, W), y (B, C2, H, W) of one float dtype and device; h1/h2 int64 (C1,)/(C2,) in [0, D);
// s1/s2 (C1,)/(C2,) real, every value +1 or -1; D >= 1. Value checks (ranges, signs) read CPU tensors only.
void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& y, const at::Tensor& h1,
                  const at::Tensor& s1, const at::Tensor& h2, const at::Tensor& s2, int64_t output_dim);

// The backward ops' checks (Gram and frequency routes alike): grad_out (B, D) float on x's device, then
// check_inputs with D = grad_out.size(1). Returns D.
int64_t check_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& y,
                              const at::Tensor& h1, const at::Tensor& s1, const at::Tensor& h2,
                              const at::Tensor& s2);

}  // namespace vkernels::compact_bilinear_pooling
