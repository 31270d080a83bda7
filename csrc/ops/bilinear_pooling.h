// bilinear_pooling: what the schema file shares with the kernels (argument checks and the normalised problem).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace vkernels::bilinear_pooling {

// One call. x: (B, C1, H, W); y: (B, C2, H, W) or undefined (then y = x, C2 = C1). P = C1 C2, or C1 (C1 + 1) / 2 with
// triu (the upper triangle incl. the diagonal, row-major: torch.triu_indices order). M = H W.
struct Problem {
  at::Tensor x, y;  // y undefined when the op pools x with itself
  int64_t B = 0, C1 = 0, C2 = 0, M = 0, P = 0;
  bool sym = false, triu = false, normalize = false;
  double eps = 0.0;
};

// The L2 step divides by max(||s||, kL2Eps), as F.normalize(s, dim=1) does.
constexpr double kL2Eps = 1e-12;

Problem make_problem(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& y,
                     const std::string& normalize, bool triu, double eps);
// The backward's saved tensors: grad_out (B, P); with normalisation out (B, P) in x's dtype and norm (B,) in the
// accumulation dtype.
void check_backward_args(const Problem& p, const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& norm);
// Packed position of (i, j), i <= j, in the row-major upper triangle of a C x C matrix.
inline int64_t triu_index(int64_t i, int64_t j, int64_t C) { return i * C - i * (i - 1) / 2 + (j - i); }

}  // namespace vkernels::bilinear_pooling
