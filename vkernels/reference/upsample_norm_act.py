"""upsample_norm_act in plain PyTorch: F.interpolate -> F.batch_norm / F.instance_norm -> affine -> activation ->
gain -> clamp. The test oracle and the explicit fallback (impl="reference"); see vkernels.upsample_norm_act."""
import torch
import torch.nn.functional as F

from vkernels.reference.bias_act import ACTIVATIONS

NORMS = ("batch", "instance", "adain", "none")
MODES = ("nearest", "bilinear", "trilinear")
# The modes of x with 4 dims (N, C, H, W) and 5 dims (N, C, D, H, W), as F.interpolate names them.
MODES_BY_NDIM = {4: ("nearest", "bilinear"), 5: ("nearest", "trilinear")}


def upsample(x, scale, mode):
    if scale == 1:
        return x
    if mode == "nearest":
        return F.interpolate(x, scale_factor=scale, mode="nearest")
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)


def combine_affine(weight, bias, style_scale, style_bias):
    """(scale, shift) broadcastable to (N, C): scale = weight[c] * style_scale[n, c], shift = bias[c] +
    style_bias[n, c]; a missing term is 1 (scales) or 0 (shifts). None when every term is missing."""
    s = t = None
    for v in (weight, style_scale):
        if v is not None:
            s = v if s is None else s * v
    for v in (bias, style_bias):
        if v is not None:
            t = v if t is None else t + v
    return s, t


def act_gain_clamp(z, act, alpha, gain, clamp):
    z = ACTIVATIONS[act][0](z, alpha)
    if gain != 1:
        z = z * gain
    if clamp is not None:
        z = z.clamp(-clamp, clamp)
    return z


def _nc(v, like):
    if v.ndim == 2:
        return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))
    return v.reshape((1, -1) + (1,) * (like.ndim - 2))


def upsample_norm_act(x, scale=2, mode="nearest", norm="batch", weight=None, bias=None, style_scale=None,
                      style_bias=None, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5,
                      act="lrelu", alpha=0.2, gain=1.0, clamp=None):
    u = upsample(x, scale, mode)
    if norm == "batch":
        # Updates running_mean / running_var in place exactly as nn.BatchNorm2d / 3d do (unbiased running variance).
        u = F.batch_norm(u, running_mean, running_var, None, None, training, momentum, eps)
    elif norm in ("instance", "adain"):
        u = F.instance_norm(u, eps=eps)
    s, t = combine_affine(weight, bias, style_scale, style_bias)
    z = u
    if s is not None:
        z = z * _nc(s, u)
    if t is not None:
        z = z + _nc(t, u)
    return act_gain_clamp(z, act, alpha, gain, clamp).to(x.dtype)
