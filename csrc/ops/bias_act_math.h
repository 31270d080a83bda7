// bias_act per-element math, shared by the CPU kernel (scalar and at::vec) and the CUDA kernel.
//
// Forward:  y = clamp(act(x + b) * gain, -clamp, clamp)
// Backward: StyleGAN's scheme. For activations whose derivative is a function of the output, backward reads y
// ("y-ref") and x need not be kept alive; otherwise it reads x (+ b) ("x-ref"). Order 1 gives dL/dz, order 2 the
// derivative of the order-1 kernel with respect to its ref input, which is what double backward (R1) needs.
//   y-ref (ya = y / gain):  grad1 = g * gain * f'(ya)          grad2 = g * d f'(ya) / d ya
//   x-ref (z = x + b):      grad1 = g * gain * f'(z)           grad2 = g * gain * f''(z)
// Clamped elements get zero gradient: y-ref masks |y| < clamp, x-ref recomputes |act(z) * gain| < clamp
// (strict, as torch.clamp's gradient is).
// Cost per element: forward reads x (and broadcasts b), writes y; backward reads g and ref, writes dz.
#pragma once

#include "vkernels.h"

namespace vkernels::bias_act {

enum class Act : int { kLinear, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish };
enum class Mode : int { kForward, kGrad1Y, kGrad2Y, kGrad1X, kGrad2X };

constexpr double kSeluLambda = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
// torch.nn.functional.softplus(beta=1) returns z itself above this threshold; so do we.
constexpr double kSoftplusThreshold = 20.0;

// Scalars broadcast to the compute type T (float, double, or a CPU vector of them).
template <class T>
struct Params {
  T alpha, gain, inv_gain, clamp, neg_clamp;
  bool has_clamp;
};

template <class T, class S>
VK_HD Params<T> cast_params(const Params<S>& p) {
  return {T(p.alpha), T(p.gain), T(p.inv_gain), T(p.clamp), T(p.neg_clamp), p.has_clamp};
}

template <class T>
VK_HD T sigmoid(T z) {
  const T one(1), zero(0);
  return one / (one + vk_exp(zero - z));
}

template <Act A, class T>
VK_HD T act_forward(T z, T alpha) {
  const T zero(0), one(1);
  if constexpr (A == Act::kLinear) return z;
  if constexpr (A == Act::kRelu) return vk_select(z < zero, zero, z);
  if constexpr (A == Act::kLrelu) return vk_select(z < zero, z * alpha, z);
  if constexpr (A == Act::kTanh) return vk_tanh(z);
  if constexpr (A == Act::kSigmoid) return sigmoid(z);
  if constexpr (A == Act::kElu) return vk_select(z < zero, vk_expm1(z), z);
  if constexpr (A == Act::kSelu) return T(kSeluLambda) * vk_select(z < zero, T(kSeluAlpha) * vk_expm1(z), z);
  if constexpr (A == Act::kSoftplus) return vk_select(z > T(kSoftplusThreshold), z, vk_log1p(vk_exp(z)));
  if constexpr (A == Act::kSwish) return z * sigmoid(z);
  (void)one;
}

// Derivatives at the kinks follow torch's autograd: relu/lrelu take the z < 0 side at 0, elu/selu the z <= 0
// side (torch's elu_backward), so results match the reference exactly there too.

// f'(z) expressed through ya = f(z). Only defined for activations where that is possible (not swish).
template <Act A, class T>
VK_HD T grad1_from_y(T ya, T alpha) {
  const T zero(0), one(1);
  if constexpr (A == Act::kLinear) return one;
  if constexpr (A == Act::kRelu) return vk_select(ya > zero, one, zero);
  if constexpr (A == Act::kLrelu) return vk_select(ya > zero, one, alpha);
  if constexpr (A == Act::kTanh) return one - ya * ya;
  if constexpr (A == Act::kSigmoid) return ya * (one - ya);
  if constexpr (A == Act::kElu) return vk_select(ya <= zero, ya + one, one);
  if constexpr (A == Act::kSelu) return vk_select(ya <= zero, ya + T(kSeluLambda * kSeluAlpha), T(kSeluLambda));
  if constexpr (A == Act::kSoftplus) return zero - vk_expm1(zero - ya);  // 1 - exp(-ya) == sigmoid(z)
  if constexpr (A == Act::kSwish) return zero;  // unreachable: swish is always x-ref
}

// d f'(ya) / d ya.
template <Act A, class T>
VK_HD T grad2_from_y(T ya, T alpha) {
  const T zero(0), one(1);
  (void)alpha;
  if constexpr (A == Act::kTanh) return T(-2) * ya;
  if constexpr (A == Act::kSigmoid) return one - T(2) * ya;
  if constexpr (A == Act::kElu || A == Act::kSelu) return vk_select(ya <= zero, one, zero);
  if constexpr (A == Act::kSoftplus) return vk_exp(zero - ya);
  if constexpr (A == Act::kLinear || A == Act::kRelu || A == Act::kLrelu || A == Act::kSwish) return zero;
}

template <Act A, class T>
VK_HD T grad1_from_x(T z, T alpha) {
  const T zero(0), one(1);
  if constexpr (A == Act::kLinear) return one;
  if constexpr (A == Act::kRelu) return vk_select(z > zero, one, zero);
  if constexpr (A == Act::kLrelu) return vk_select(z > zero, one, alpha);
  if constexpr (A == Act::kTanh) {
    T t = vk_tanh(z);
    return one - t * t;
  }
  if constexpr (A == Act::kSigmoid) {
    T s = sigmoid(z);
    return s * (one - s);
  }
  if constexpr (A == Act::kElu) return vk_select(z <= zero, vk_exp(z), one);
  if constexpr (A == Act::kSelu)
    return vk_select(z <= zero, T(kSeluLambda * kSeluAlpha) * vk_exp(z), T(kSeluLambda));
  if constexpr (A == Act::kSoftplus) return vk_select(z > T(kSoftplusThreshold), one, sigmoid(z));
  if constexpr (A == Act::kSwish) {
    T s = sigmoid(z);
    return s + z * s * (one - s);
  }
}

template <Act A, class T>
VK_HD T grad2_from_x(T z, T alpha) {
  const T zero(0), one(1), two(2);
  (void)alpha;
  if constexpr (A == Act::kLinear || A == Act::kRelu || A == Act::kLrelu) return zero;
  if constexpr (A == Act::kTanh) {
    T t = vk_tanh(z);
    return T(-2) * t * (one - t * t);
  }
  if constexpr (A == Act::kSigmoid) {
    T s = sigmoid(z);
    return s * (one - s) * (one - two * s);
  }
  if constexpr (A == Act::kElu) return vk_select(z <= zero, vk_exp(z), zero);
  if constexpr (A == Act::kSelu) return vk_select(z <= zero, T(kSeluLambda * kSeluAlpha) * vk_exp(z), zero);
  if constexpr (A == Act::kSoftplus) {
    T s = sigmoid(z);
    return vk_select(z > T(kSoftplusThreshold), zero, s * (one - s));
  }
  if constexpr (A == Act::kSwish) {
    T s = sigmoid(z);
    return s * (one - s) * (two + z * (one - two * s));
  }
}

// One output element. v is x (forward, x-ref) or y (y-ref); g is the incoming gradient (unused in forward).
template <Act A, Mode M, class T>
VK_HD T apply(T v, T bias, T g, const Params<T>& p) {
  const T zero(0);
  if constexpr (M == Mode::kForward) {
    T y = act_forward<A>(v + bias, p.alpha) * p.gain;
    if (p.has_clamp) y = vk_select(y < p.neg_clamp, p.neg_clamp, vk_select(y > p.clamp, p.clamp, y));
    return y;
  }
  if constexpr (M == Mode::kGrad1Y || M == Mode::kGrad2Y) {
    T ya = v * p.inv_gain;
    T r = (M == Mode::kGrad1Y) ? g * p.gain * grad1_from_y<A>(ya, p.alpha) : g * grad2_from_y<A>(ya, p.alpha);
    if (p.has_clamp) r = vk_select(vk_abs(v) < p.clamp, r, zero);
    return r;
  }
  if constexpr (M == Mode::kGrad1X || M == Mode::kGrad2X) {
    T z = v + bias;
    T d = (M == Mode::kGrad1X) ? grad1_from_x<A>(z, p.alpha) : grad2_from_x<A>(z, p.alpha);
    T r = g * p.gain * d;
    if (p.has_clamp) {
      T pre = act_forward<A>(z, p.alpha) * p.gain;
      r = vk_select(vk_abs(pre) < p.clamp, r, zero);
    }
    return r;
  }
}

// Calls f.template operator()<A, M>() with the runtime act and mode turned into template arguments
// (every (act, mode) pair is its own specialised loop; no per-element branching on them).
template <class F>
auto dispatch(Act act, Mode mode, F&& f) {
#define VK_BA_MODE(A)                                                   \
  switch (mode) {                                                       \
    case Mode::kForward: return f.template operator()<A, Mode::kForward>(); \
    case Mode::kGrad1Y: return f.template operator()<A, Mode::kGrad1Y>();   \
    case Mode::kGrad2Y: return f.template operator()<A, Mode::kGrad2Y>();   \
    case Mode::kGrad1X: return f.template operator()<A, Mode::kGrad1X>();   \
    default: return f.template operator()<A, Mode::kGrad2X>();              \
  }
  switch (act) {
    case Act::kLinear: VK_BA_MODE(Act::kLinear)
    case Act::kRelu: VK_BA_MODE(Act::kRelu)
    case Act::kLrelu: VK_BA_MODE(Act::kLrelu)
    case Act::kTanh: VK_BA_MODE(Act::kTanh)
    case Act::kSigmoid: VK_BA_MODE(Act::kSigmoid)
    case Act::kElu: VK_BA_MODE(Act::kElu)
    case Act::kSelu: VK_BA_MODE(Act::kSelu)
    case Act::kSoftplus: VK_BA_MODE(Act::kSoftplus)
    default: VK_BA_MODE(Act::kSwish)
  }
#undef VK_BA_MODE
}

}  // namespace vkernels::bias_act
