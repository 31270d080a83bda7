// Shared helpers for every op: host/device qualifiers and the scalar math primitives that per-element code is
// written in. Per-element formulas are templates over the value type T, so one formula serves the CUDA kernel
// (T = float/double), the CPU scalar tail (same) and the CPU vector loop (T = at::vec::Vectorized<float/double>).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VK_HD __host__ __device__ __forceinline__
#else
#define VK_HD inline
#include <ATen/cpu/vec/vec.h>
#endif

namespace vkernels {

// Scalar primitives. select() keeps NaN in the "else" operand of a comparison that NaN fails, so formulas are
// written as select(z < 0, neg_branch, z) to propagate NaN the way torch does.
VK_HD float vk_exp(float x) { return ::expf(x); }
VK_HD double vk_exp(double x) { return ::exp(x); }
VK_HD float vk_expm1(float x) { return ::expm1f(x); }
VK_HD double vk_expm1(double x) { return ::expm1(x); }
VK_HD float vk_log1p(float x) { return ::log1pf(x); }
VK_HD double vk_log1p(double x) { return ::log1p(x); }
VK_HD float vk_tanh(float x) { return ::tanhf(x); }
VK_HD double vk_tanh(double x) { return ::tanh(x); }
VK_HD float vk_abs(float x) { return ::fabsf(x); }
VK_HD double vk_abs(double x) { return ::fabs(x); }
template <class T>
VK_HD T vk_select(bool c, T a, T b) { return c ? a : b; }

#if !defined(__CUDACC__) && !defined(__HIPCC__)
// The same primitives on CPU vectors; comparisons on Vectorized return all-ones lanes, consumed by blendv.
template <class T>
inline at::vec::Vectorized<T> vk_exp(const at::vec::Vectorized<T>& x) { return x.exp(); }
template <class T>
inline at::vec::Vectorized<T> vk_expm1(const at::vec::Vectorized<T>& x) { return x.expm1(); }
template <class T>
inline at::vec::Vectorized<T> vk_log1p(const at::vec::Vectorized<T>& x) { return x.log1p(); }
template <class T>
inline at::vec::Vectorized<T> vk_tanh(const at::vec::Vectorized<T>& x) { return x.tanh(); }
template <class T>
inline at::vec::Vectorized<T> vk_abs(const at::vec::Vectorized<T>& x) { return x.abs(); }
template <class T>
inline at::vec::Vectorized<T> vk_select(const at::vec::Vectorized<T>& mask, const at::vec::Vectorized<T>& a,
                                        const at::vec::Vectorized<T>& b) {
  return at::vec::Vectorized<T>::blendv(b, a, mask);
}
#endif

}  // namespace vkernels
