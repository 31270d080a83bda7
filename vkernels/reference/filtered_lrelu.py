"""filtered_lrelu in plain PyTorch: the test oracle and the explicit fallback (impl="reference").

Written from the definition of StyleGAN3's `filtered_lrelu` (NVlabs torch_utils/ops/filtered_lrelu.py,
`_filtered_lrelu_ref`): bias, then upfirdn2d(up, fu, padding, gain=up**2), then leaky ReLU(slope) * gain, clamp to
[-clamp, clamp], then upfirdn2d(down, fd, gain=1). Every intermediate is a whole tensor (the upsampled one included),
and autograd keeps them all. Arguments are already parsed: up/down ints, padding (x0, x1, y0, y1).
"""
import math

import torch
import torch.nn.functional as F

from vkernels.reference.upfirdn2d import upfirdn2d


def filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=(0, 0, 0, 0), gain=math.sqrt(2), slope=0.2,
                   clamp=None, flip_filter=False):
    """y = upfirdn2d(clamp(lrelu(upfirdn2d(x + b, fu, up, padding, gain=up**2)) * gain), fd, down); x (N, C, H, W)."""
    if b is not None:
        x = x + b.reshape(1, -1, 1, 1)
    x = upfirdn2d(x, fu, (up, up), (1, 1), tuple(padding), flip_filter, up ** 2)
    x = F.leaky_relu(x, slope) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d(x, fd, (1, 1), (down, down), (0, 0, 0, 0), flip_filter, 1)
