// spade_norm_act schemas, defined once here (checks shared with upsample_norm_act: ops/upsample_norm_act.h). The
// statistics come from upsample_norm_act_stats with scale 1 (see vkernels/ops/spade_norm_act.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vkernels, m) {
  // clamp(act((x - mean[n, c]) * rstd[n, c] * (1 + gamma) + beta) * gain, -clamp, clamp).
  m.def("spade_norm_act(Tensor x, Tensor mean, Tensor rstd, Tensor gamma, Tensor beta, str act, float alpha, float gain, "
        "float? clamp) -> Tensor");
  // Training forward with the statistics of x itself, fused where the kernel can: (out, mean, var, rstd), out as
  // spade_norm_act(x, mean, rstd, ...) with mean / var as upsample_norm_act_stats(x, 1, "nearest", per_sample) and
  // rstd = rsqrt(var + eps) (shape (C,) or (N, C), compute dtype).
  m.def("spade_norm_act_train(Tensor x, Tensor gamma, Tensor beta, bool per_sample, float eps, str act, float alpha, "
        "float gain, float? clamp) -> (Tensor, Tensor, Tensor, Tensor)");
  // Backward (first order; its own gradient is the differentiable composite in vkernels/ops/spade_norm_act.py).
  // Outputs whose output_mask entry is False come back as empty (0-element) tensors.
  // (dx, dmean, drstd, dgamma, dbeta) of spade_norm_act given dy.
  m.def("spade_norm_act_backward(Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor gamma, Tensor beta, str act, "
        "float alpha, float gain, float? clamp, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
