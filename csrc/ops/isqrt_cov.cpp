// isqrt_cov schema (forward and backward, defined once here) and the argument checks shared by backends.
//
// iSQRT-COV (Li et al., CVPR 2018; MPNCOV's Covpool + Sqrtm + Triuvec): Sigma = (1/M) X Ibar X^T (Ibar = I - 11^T/M,
// applied as X - mean, never as an M x M matrix), t = tr Sigma, A = Sigma / t; Newton-Schulz Y_0 = A, Z_0 = I,
// T_k = (3I - Z_{k-1} Y_{k-1}) / 2, Y_k = Y_{k-1} T_k, Z_k = T_k Z_{k-1} for k = 1..iters; out = sqrt(t) Y_iters,
// vectorised as the row-major upper triangle (incl. the diagonal) when triu.
#include "ops/isqrt_cov.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace vkernels::isqrt_cov {

Problem make_problem(const char* op, const at::Tensor& x, int64_t iters, bool triu) {
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble, op,
              ": x must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(iters >= 1, op, ": iters must be >= 1, got ", iters);
  Problem p;
  p.x = x;
  p.B = x.size(0);
  p.C = x.size(1);
  p.M = x.size(2) * x.size(3);
  TORCH_CHECK(p.M > 0, op, ": x must have H * W >= 1, got ", x.sizes());
  p.iters = iters;
  p.triu = triu;
  p.P = triu ? p.C * (p.C + 1) / 2 : p.C * p.C;
  return p;
}

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // out: (B, C(C+1)/2) with triu, else (B, C, C), in x's dtype. A = Sigma / t (B, C, C) and t (B,) in the
  // accumulation dtype (float64 for float64 inputs, else float32): all the backward keeps (it recomputes the
  // Newton-Schulz iterates from A instead of saving 2 iters matrices per image).
  m.def("isqrt_cov(Tensor x, int iters, bool triu) -> (Tensor out, Tensor A, Tensor trace)");
  m.def("isqrt_cov_backward(Tensor grad_out, Tensor x, Tensor A, Tensor trace, int iters, bool triu) -> Tensor");
}

}  // namespace vkernels::isqrt_cov
