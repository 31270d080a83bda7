"""modulated_conv2d in plain PyTorch: the test oracle and the explicit fallback (impl="reference").

Written from NVlabs stylegan2-ada-pytorch training/networks.py `modulated_conv2d` (fused and non-fused paths) with
the resampling of torch_utils/ops/conv2d_resample.py in its generic form (zero-insertion upsample + FIR with gain
up**2, convolution, FIR + decimation), followed by the SynthesisLayer epilogue (noise, then bias_act).
"""
import torch
import torch.nn.functional as F

from vkernels.reference.bias_act import bias_act
from vkernels.reference.upfirdn2d import upfirdn2d


def resample_padding(f, up, down, padding, kw, kh):
    """conv2d_resample's padding of the upsampled image: (px0, px1, py0, py1)."""
    fw, fh = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    return px0, px1, py0, py1


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True):
    """StyleGAN's conv2d_resample, generic path: upfirdn(up) -> conv2d -> upfirdn(down)."""
    kh, kw = w.shape[2], w.shape[3]
    px0, px1, py0, py1 = resample_padding(f, up, down, padding, kw, kh)
    if not flip_weight:
        w = w.flip([2, 3])
    x = upfirdn2d(x, f if up > 1 else None, (up, up), (1, 1), (px0, px1, py0, py1), False, up ** 2)
    x = F.conv2d(x, w, groups=groups)
    if down > 1:
        x = upfirdn2d(x, f, (1, 1), (down, down), (0, 0, 0, 0), False, 1)
    return x


def modulated_conv2d(x, weight, styles, demodulate=True, up=1, down=1, padding=0, resample_filter=None,
                     flip_weight=True, fused_modconv=True, noise=None, noise_strength=None, bias=None, act="lrelu",
                     alpha=None, gain=None, clamp=None):
    """StyleGAN2's modulated convolution + SynthesisLayer epilogue; see vkernels.modulated_conv2d."""
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # StyleGAN's pre-normalization against fp16 overflow
        weight = weight * (1 / (in_channels * kh * kw) ** 0.5 / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    w = None
    dcoefs = None
    # Sizes are spelled out (no -1) and an empty batch takes the shared-weight path, whose conv needs no groups=N,
    # so N = 0 gives the empty result instead of a reshape / groups error.
    fused_modconv = fused_modconv and batch_size > 0
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, in_channels, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(batch_size, out_channels, 1, 1, 1)
    if noise is not None and noise_strength is not None:
        noise = noise * noise_strength
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch_size, in_channels, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up, down, padding, 1, flip_weight)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch_size, out_channels, 1, 1)
    else:
        xg = x.reshape(1, -1, *x.shape[2:])
        wg = w.reshape(-1, in_channels, kh, kw)
        x = conv2d_resample(xg, wg.to(x.dtype), resample_filter, up, down, padding, batch_size, flip_weight)
        x = x.reshape(batch_size, out_channels, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return bias_act(x, None if bias is None else bias.to(x.dtype), 1, act, alpha, gain, clamp)
