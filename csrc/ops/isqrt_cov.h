// isqrt_cov: what the schema file shares with the kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace vkernels::isqrt_cov {

// The trace is clamped to >= kTraceFloor before dividing by it: an image whose channels are all constant (zero
// covariance) then gives 0, not MPNCOV's 0/0 = NaN.
constexpr double kTraceFloor = 1e-30;

struct Problem {
  at::Tensor x;
  int64_t B = 0, C = 0, M = 0, P = 0, iters = 0;
  bool triu = true;
};

Problem make_problem(const char* op, const at::Tensor& x, int64_t iters, bool triu);
inline int64_t triu_index(int64_t i, int64_t j, int64_t C) { return i * C - i * (i - 1) / 2 + (j - i); }

}  // namespace vkernels::isqrt_cov
