// Argument checks shared by the schema files of the two-input pooling ops (bilinear_pooling,
// random_maclaurin_pooling), so their TORCH_CHECK messages stay the same word for word.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace vkernels::pooling_checks {

// y, the optional second feature map of a pooling op over x (B, C1, H, W): when given it must be (B, C2, H, W) with
// x's B, H, W, dtype and device. Returns C2: y's channel count, or x's when y is None (the op pools x with itself).
inline int64_t check_second_input(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& y) {
  if (!(y && y->defined())) return x.size(1);
  const at::Tensor& yy = *y;
  TORCH_CHECK(yy.dim() == 4, op, ": y must have shape [B, C2, H, W], got ", yy.sizes());
  TORCH_CHECK(yy.size(0) == x.size(0) && yy.size(2) == x.size(2) && yy.size(3) == x.size(3), op,
              ": y must have x's B, H, W (", x.size(0), ", ", x.size(2), ", ", x.size(3), "), got ", yy.sizes());
  TORCH_CHECK(yy.scalar_type() == x.scalar_type(), op, ": y must have x's dtype ", x.scalar_type(), ", got ",
              yy.scalar_type());
  TORCH_CHECK(yy.device() == x.device(), op, ": y is on ", yy.device(), " but x is on ", x.device());
  return yy.size(1);
}

}  // namespace vkernels::pooling_checks
