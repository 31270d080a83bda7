"""upfirdn2d: upsample (zero insertion), FIR filter, downsample in one op, plus StyleGAN's helpers.

Same arguments and results as StyleGAN2/3's torch_utils/ops/upfirdn2d.py (`upfirdn2d`, `setup_filter`,
`upsample2d`, `downsample2d`, `filter2d`), so switching is an import change.

Registration: the schema lives in csrc/ops/upfirdn2d.cpp; this file adds the fake (meta) kernel, autograd (the
gradient w.r.t. x is the same op with up/down swapped, the padding transformed and the filter flipped, as in
StyleGAN's `_upfirdn2d_cuda`, so gradients of every order exist), the Triton variant of the op, and the public
functions.
"""
from __future__ import annotations

import math
import numbers

import torch

from vkernels import _backend
from vkernels._dtypes import FLOAT_DTYPES
from vkernels.ops._checks import is_int, parse_padding
from vkernels.ops._layout import out_format
from vkernels.reference.upfirdn2d import upfirdn2d as _reference

__all__ = ["upfirdn2d", "setup_filter", "upsample2d", "downsample2d", "filter2d"]

_backend.register_op("upfirdn2d", cuda_order=("triton",))  # no CUDA C++ kernel: Triton is the GPU path


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1, impl: str = "auto") -> torch.Tensor:
    r"""Pad, upsample, filter and downsample a batch of 2-D images (StyleGAN2/3's `upfirdn2d`).

    Per (n, c) plane: insert up-1 zeros after each pixel, pad (negative values crop), correlate with f flipped
    (convolve with f; with flip_filter=True correlate with f as given), keep every down-th pixel, multiply by gain:
    out[oy, ox] = gain * sum_{i,j} f'[i, j] * xu[oy*downy + i - pady0, ox*downx + j - padx0].

    Args:
        x: (N, C, H, W), float16/bfloat16/float32/float64, any strides; channels_last input gives channels_last out.
            fp16/bf16 are accumulated in fp32.
        f: float32 FIR filter, 2-D (fh, fw) or 1-D (fw,) meaning the separable fw x fw filter f[i] * f[j] (applied
            as two passes); None is the identity [[1]]. No gradient w.r.t. f.
        up: integer upsampling factor, int or (ux, uy), >= 1.
        down: integer downsampling factor, int or (dx, dy), >= 1.
        padding: int, (px, py) or (x0, x1, y0, y1) applied to the upsampled image; negative values crop.
        flip_filter: False (default) convolves with f, True correlates.
        gain: overall scale; applied as f * gain ** (f.ndim / 2) per pass, as StyleGAN does.
        impl: "auto" | "cpu" | "cuda" | "triton" | "reference"; see `vkernels.resolve_impl`.

    Returns:
        (N, C, outH, outW) in x's dtype, outW = (W*ux + x0 + x1 - fw) // dx + 1 (outH likewise).
        Differentiable w.r.t. x to any order.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"upfirdn2d: x must be a torch.Tensor, got {type(x).__name__}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    args = _parse(x, f, up, down, padding, flip_filter, gain)
    impl = _backend.resolve_impl("upfirdn2d", x, impl)
    if impl == "reference":
        upx, upy, downx, downy, px0, px1, py0, py1, flip, g = args
        return _reference(x, f, (upx, upy), (downx, downy), (px0, px1, py0, py1), flip, g)
    op = torch.ops.vkernels.upfirdn2d_triton if impl == "triton" else torch.ops.vkernels.upfirdn2d
    return op(x, f, *args)


def setup_filter(f, device=torch.device("cpu"), normalize: bool = True, flip_filter: bool = False, gain: float = 1,
                 separable: bool | None = None) -> torch.Tensor:
    r"""A float32 filter tensor for upfirdn2d from a list/array/tensor (StyleGAN's `setup_filter`).

    Args:
        f: None (= [1]), a scalar, a 1-D or a 2-D array-like of filter taps.
        device: where the result lives.
        normalize: divide by the sum of the taps (of the outer product for a 1-D f made 2-D).
        flip_filter: flip the result (on every axis).
        gain: multiply by gain ** (ndim / 2), so a separable filter applied twice scales by gain.
        separable: keep a 1-D f 1-D; None means only when it has >= 8 taps (StyleGAN's choice), False turns it
            into the 2-D outer product.

    Returns:
        float32 tensor, 1-D when separable else 2-D.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim not in (0, 1, 2):
        raise ValueError(f"setup_filter: f must be a scalar, 1-D or 2-D, got shape {tuple(f.shape)}")
    if f.numel() == 0:
        raise ValueError("setup_filter: f must not be empty")
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = f.outer(f)
    if f.ndim != (1 if separable else 2):
        raise ValueError(f"setup_filter: separable=True needs a 1-D f, got shape {tuple(f.shape)}")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up=2, padding=0, flip_filter: bool = False, gain: float = 1,
               impl: str = "auto") -> torch.Tensor:
    r"""Upsample by `up` with filter f (StyleGAN's `upsample2d`): output (N, C, H*uy, W*ux) for padding 0.

    The gain is multiplied by ux*uy so that the zero insertion keeps the mean; arguments as in `upfirdn2d`.
    """
    upx, upy = _parse_scaling(up, "up")
    padx0, padx1, pady0, pady1 = parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2, pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down=2, padding=0, flip_filter: bool = False,
                 gain: float = 1, impl: str = "auto") -> torch.Tensor:
    r"""Filter, then downsample by `down` (StyleGAN's `downsample2d`): output (N, C, H//dy, W//dx) for padding 0
    and even sizes; arguments as in `upfirdn2d`."""
    downx, downy = _parse_scaling(down, "down")
    padx0, padx1, pady0, pady1 = parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2, pady0 + (fh - downy + 1) // 2,
         pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding=0, flip_filter: bool = False, gain: float = 1,
             impl: str = "auto") -> torch.Tensor:
    r"""Filter with f keeping the size (StyleGAN's `filter2d`): output (N, C, H, W) for padding 0."""
    padx0, padx1, pady0, pady1 = parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


# ------------------------------------------------------------------------------------------------ argument parsing
def _parse_scaling(s, name: str) -> tuple[int, int]:
    if is_int(s):
        s = (s, s)
    if not isinstance(s, (list, tuple)) or len(s) != 2 or not all(is_int(v) for v in s):
        raise ValueError(f"upfirdn2d: {name} must be an int or a pair of ints (x, y), got {s!r}")
    sx, sy = int(s[0]), int(s[1])
    if sx < 1 or sy < 1:
        raise ValueError(f"upfirdn2d: {name} must be >= 1, got {(sx, sy)}")
    return sx, sy


def _filter_size(f) -> tuple[int, int]:
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(f"upfirdn2d: f must be a 1-D or 2-D tensor or None, got {shape}")
    return int(f.shape[-1]), int(f.shape[0])


def _parse(x, f, up, down, padding, flip_filter, gain):
    """Checks every argument; returns the op's scalar arguments (upx, upy, downx, downy, x0, x1, y0, y1, flip, gain)."""
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"upfirdn2d: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if not isinstance(f, torch.Tensor):
        raise TypeError(f"upfirdn2d: f must be a torch.Tensor or None, got {type(f).__name__}")
    fw, fh = _filter_size(f)
    if f.dtype != torch.float32:
        raise TypeError(f"upfirdn2d: f must be float32 (see setup_filter), got {f.dtype}")
    if f.numel() == 0:
        raise ValueError(f"upfirdn2d: f must not be empty, got shape {tuple(f.shape)}")
    if f.requires_grad:
        raise ValueError("upfirdn2d: f must not require grad (no gradient w.r.t. the filter, as in StyleGAN)")
    if f.device != x.device:
        raise ValueError(f"upfirdn2d: f is on {f.device} but x is on {x.device}")
    upx, upy = _parse_scaling(up, "up")
    downx, downy = _parse_scaling(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    if not isinstance(gain, numbers.Real) or not math.isfinite(gain):
        raise ValueError(f"upfirdn2d: gain must be a finite number, got {gain!r}")
    _, _, h, w = x.shape
    up_w, up_h = w * upx + px0 + px1, h * upy + py0 + py1
    if up_w < fw or up_h < fh:
        raise ValueError(f"upfirdn2d: output size must be >= 1, but the upsampled, padded input is {up_h}x{up_w} "
                         f"and the filter is {fh}x{fw}; check padding={padding!r} (negative values crop)")
    return upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter), float(gain)


def _out_size(x, f, upx, upy, downx, downy, px0, px1, py0, py1):
    fw, fh = int(f.shape[-1]), int(f.shape[0])
    n, c, h, w = x.shape
    return n, c, (h * upy + py0 + py1 - fh) // downy + 1, (w * upx + px0 + px1 - fw) // downx + 1


# ---------------------------------------------------------------------------------------------------- registration
def _register(name: str) -> None:
    op = getattr(torch.ops.vkernels, name).default

    @torch.library.register_fake(f"vkernels::{name}")
    def _fake(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain):
        size = _out_size(x, f, upx, upy, downx, downy, px0, px1, py0, py1)
        return torch.empty(size, dtype=x.dtype, device=x.device, memory_format=out_format(x))

    def setup(ctx, inputs, output):
        x, f, *args = inputs
        ctx.args = args
        ctx.in_hw = (x.shape[2], x.shape[3])
        ctx.save_for_backward(f)

    def backward(ctx, dy):
        if ctx.needs_input_grad[1]:
            raise NotImplementedError("upfirdn2d: no gradient w.r.t. the filter f (as in StyleGAN)")
        (f,) = ctx.saved_tensors
        upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain = ctx.args
        ih, iw = ctx.in_hw
        oh, ow = dy.shape[2], dy.shape[3]
        fw, fh = int(f.shape[-1]), int(f.shape[0])
        # StyleGAN's _upfirdn2d_cuda backward: the transposed op, which maps an (oh, ow) gradient back to (ih, iw).
        p = (fw - px0 - 1, iw * upx - ow * downx + px0 - upx + 1,
             fh - py0 - 1, ih * upy - oh * downy + py0 - upy + 1)
        dx = op(dy, f, downx, downy, upx, upy, *p, not flip_filter, gain) if ctx.needs_input_grad[0] else None
        return (dx,) + (None,) * 11

    torch.library.register_autograd(f"vkernels::{name}", backward, setup_context=setup)


def _triton_launchers():
    """vkernels::upfirdn2d_triton: the C++ schema under a new name, Triton kernels behind."""

    def fwd(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain):
        from vkernels.triton import upfirdn2d as kernels
        return kernels.launch(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain,
                         _out_size(x, f, upx, upy, downx, downy, px0, px1, py0, py1), out_format(x))

    return (fwd,)


_backend.register_backends(_register, ("upfirdn2d",), _triton_launchers)
