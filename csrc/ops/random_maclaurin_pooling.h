// random_maclaurin_pooling: what the schema file shares with the kernels (argument checks and the normalised problem).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace vkernels::random_maclaurin_pooling {

// One call. x: (B, C1, H, W); y: (B, C2, H, W) or undefined (then y = x, C2 = C1); w1: (D, C1), w2: (D, C2).
// M = H W. gram: route "gram" (else "project").
struct Problem {
  at::Tensor x, y, w1, w2;  // y undefined when the op pools x with itself
  int64_t B = 0, C1 = 0, C2 = 0, M = 0, D = 0;
  bool sym = false, gram = true;
};

Problem make_problem(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& w1,
                     const at::Tensor& w2, const std::string& route);

// grad_out: (B, D) floating point on x's device.
void check_grad_out(const char* op, const Problem& p, const at::Tensor& grad_out);
// proj (random_maclaurin_pooling_saved's second output): (2, D, B, HW) in the accumulation dtype, on x's device.
void check_proj(const char* op, const Problem& p, const at::Tensor& proj);

}  // namespace vkernels::random_maclaurin_pooling
