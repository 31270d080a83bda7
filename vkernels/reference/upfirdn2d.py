"""upfirdn2d in plain PyTorch: the test oracle and the explicit fallback (impl="reference").

StyleGAN2/3's `_upfirdn2d_ref` formulation (NVlabs torch_utils/ops/upfirdn2d.py): zero-insertion by reshape + pad,
pad/crop, depthwise conv2d with the flipped filter (two 1-D convs for a separable filter), then strided slicing.
Arguments are already parsed: up/down as (x, y) pairs, padding as (x0, x1, y0, y1).
"""
import torch
import torch.nn.functional as F


def upfirdn2d(x, f, up=(1, 1), down=(1, 1), padding=(0, 0, 0, 0), flip_filter=False, gain=1):
    """y = downsample(FIR(pad(upsample(x)))) per (n, c) plane, x of shape (N, C, H, W); see vkernels.upfirdn2d."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    batch_size, num_channels, in_height, in_width = x.shape
    upx, upy = up
    downx, downy = down
    padx0, padx1, pady0, pady1 = padding

    # Upsample by inserting zeros.
    x = x.reshape([batch_size, num_channels, in_height, 1, in_width, 1])
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape([batch_size, num_channels, in_height * upy, in_width * upx])

    # Pad or crop.
    x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0): x.shape[2] - max(-pady1, 0), max(-padx0, 0): x.shape[3] - max(-padx1, 0)]

    # Setup filter: the gain is applied to the float32 filter (per pass for a separable one), then cast.
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))

    # Convolve (a correlation) with the filter, depthwise. conv2d rejects groups=0, so zero channels give the
    # (empty) output of the right size directly.
    if num_channels == 0:
        oh = (x.shape[2] - f.shape[0]) // downy + 1
        ow = (x.shape[3] - f.shape[-1]) // downx + 1
        return x.new_zeros([batch_size, 0, oh, ow])
    f = f[None, None].repeat([num_channels, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = F.conv2d(x, f, groups=num_channels)
    else:
        x = F.conv2d(x, f.unsqueeze(2), groups=num_channels)
        x = F.conv2d(x, f.unsqueeze(3), groups=num_channels)

    # Downsample by throwing away pixels.
    return x[:, :, ::downy, ::downx]
