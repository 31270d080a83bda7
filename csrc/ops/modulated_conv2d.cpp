// modulated_conv2d (StyleGAN2): schemas of the two fused pieces around the convolution, defined once.
// CPU kernels: cpu/modulated_conv2d_kernel.cpp; GPU: Triton (vkernels/triton/modulated_conv2d.py). The convolution
// itself stays with torch (conv2d / grouped conv / conv_transpose2d) and vkernels::upfirdn2d.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // Style modulation + demodulation coefficients, one pass over the weight per (n, o):
  //   dcoefs[n, o] = rsqrt(sum_{i,k} (weight[o, i, k] * styles[n, i])^2 + 1e-8)        (if demodulate, else (0,))
  //   wmod[n, o, i, k] = weight[o, i, k] * styles[n, i] * dcoefs[n, o]                 (if fused, else (0,))
  m.def("modulated_conv2d_weight(Tensor weight, Tensor styles, bool demodulate, bool fused) -> (Tensor, Tensor)");
  // Post-convolution epilogue, x of shape (N, O, H, W):
  //   y = clamp(act(x * dcoefs[n, o] + noise[n, 0, h, w] * noise_strength + b[o]) * gain, -clamp, clamp)
  // with bias_act's activations (csrc/ops/bias_act_math.h). dcoefs, noise, noise_strength, b are optional.
  m.def("modulated_conv2d_epilogue(Tensor x, Tensor? dcoefs, Tensor? noise, Tensor? noise_strength, Tensor? b, "
        "str act, float alpha, float gain, float? clamp) -> Tensor");
  // dL/dz for z = x * dcoefs + noise * noise_strength + b (z recomputed from x: the forward keeps only x alive).
  m.def("modulated_conv2d_epilogue_backward(Tensor grad, Tensor x, Tensor? dcoefs, Tensor? noise, "
        "Tensor? noise_strength, Tensor? b, str act, float alpha, float gain, float? clamp) -> Tensor");
}
