"""filtered_lrelu: bias -> upsample FIR -> gain -> leaky ReLU -> clamp -> downsample FIR in one kernel.

Same arguments and results as StyleGAN3's torch_utils/ops/filtered_lrelu.py `filtered_lrelu` (impl names are
vkernels', see `vkernels.compat.stylegan` for 'ref'/'cuda'), so switching is an import change.

Registration: the schemas live in csrc/ops/filtered_lrelu.cpp: `filtered_lrelu` (returns y and the 2-bit mask) and
`filtered_lrelu_masked` (the linear map its gradient is). This file adds the fake kernels, autograd (the gradient of
either op is `filtered_lrelu_masked` with the filters swapped and flipped, up/down swapped and the padding
transposed, as StyleGAN3's CUDA op does; so gradients of every order exist), the Triton variants, and the public
function.
"""
from __future__ import annotations

import math
import numbers

import torch

from vkernels import _backend
from vkernels._dtypes import FLOAT_DTYPES
from vkernels.ops._checks import is_int, parse_padding
from vkernels.ops._layout import out_format
from vkernels.reference.filtered_lrelu import filtered_lrelu as _reference

__all__ = ["filtered_lrelu"]

_backend.register_op("filtered_lrelu", cuda_order=("triton",))  # no CUDA C++ kernel: Triton is the GPU path


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None = None, fd: torch.Tensor | None = None,
                   b: torch.Tensor | None = None, up: int = 1, down: int = 1, padding=0, gain: float = math.sqrt(2),
                   slope: float = 0.2, clamp: float | None = None, flip_filter: bool = False,
                   impl: str = "auto") -> torch.Tensor:
    r"""Filtered leaky ReLU of a batch of images (StyleGAN3's `filtered_lrelu`), fused.

    Per (n, c) plane: add b, insert up-1 zeros after each pixel, pad (negative crops), convolve with fu (times
    up**2), multiply by gain after leaky ReLU(slope), clamp to [-clamp, clamp], convolve with fd, keep every
    down-th pixel. The upsampled image is formed a tile at a time and never stored; backward keeps 2 bits per
    upsampled sample (the sign and whether it was clamped).

    Args:
        x: (N, C, H, W), float16/bfloat16/float32/float64, any strides; channels_last in gives channels_last out.
            fp16/bf16 are computed in fp32 (the reference rounds every intermediate to x's dtype).
        fu: float32 upsampling filter, 2-D (fh, fw) or 1-D (separable), or None (identity). No gradient.
        fd: float32 downsampling filter, the same forms. No gradient.
        b: optional bias (C,), x's dtype and device.
        up: integer upsampling factor >= 1.
        down: integer downsampling factor >= 1.
        padding: int, (px, py) or (x0, x1, y0, y1) on the upsampled image; negative values crop.
        gain: scale after the leaky ReLU (default sqrt(2)).
        slope: leaky ReLU slope for negative values (default 0.2).
        clamp: None, or clamp the activation to [-clamp, clamp] (clamp >= 0); clamped samples get zero gradient.
        flip_filter: False (default) convolves with fu/fd, True correlates.
        impl: "auto" | "cpu" | "cuda" | "triton" | "reference"; see `vkernels.resolve_impl`.

    Returns:
        (N, C, outH, outW) in x's dtype, outW = (W*up + x0 + x1 - (fuw-1) - (fdw-1) + (down-1)) // down (outH
        likewise). Differentiable w.r.t. x and b to any order.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"filtered_lrelu: x must be a torch.Tensor, got {type(x).__name__}")
    fu, fd, up, down, pad, gain, slope, clamp = _parse(x, fu, fd, b, up, down, padding, gain, slope, clamp)
    impl = _backend.resolve_impl("filtered_lrelu", x, impl)
    if impl == "reference":
        return _reference(x, fu, fd, b, up, down, pad, gain, slope, clamp, bool(flip_filter))
    op = torch.ops.vkernels.filtered_lrelu_triton if impl == "triton" else torch.ops.vkernels.filtered_lrelu
    # The mask is only worth writing when a gradient may be asked for.
    write = torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))
    y, _ = op(x, fu, fd, b, up, down, *pad, gain, slope, clamp, bool(flip_filter), write)
    return y


# ------------------------------------------------------------------------------------------------ argument parsing
def _parse(x, fu, fd, b, up, down, padding, gain, slope, clamp):
    if x.ndim != 4:
        raise ValueError(f"filtered_lrelu: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"filtered_lrelu: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    filters = []
    for name, f in (("fu", fu), ("fd", fd)):
        if f is None:
            f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"filtered_lrelu: {name} must be a torch.Tensor or None, got {type(f).__name__}")
        if f.ndim not in (1, 2):
            raise ValueError(f"filtered_lrelu: {name} must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
        if f.dtype != torch.float32:
            raise TypeError(f"filtered_lrelu: {name} must be float32 (see setup_filter), got {f.dtype}")
        if f.numel() == 0:
            raise ValueError(f"filtered_lrelu: {name} must not be empty, got shape {tuple(f.shape)}")
        if f.requires_grad:
            raise ValueError(f"filtered_lrelu: {name} must not require grad (no gradient w.r.t. the filters)")
        if f.device != x.device:
            raise ValueError(f"filtered_lrelu: {name} is on {f.device} but x is on {x.device}")
        filters.append(f)
    if b is not None:
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"filtered_lrelu: b must be a torch.Tensor or None, got {type(b).__name__}")
        if b.ndim != 1 or b.shape[0] != x.shape[1]:
            raise ValueError(f"filtered_lrelu: b must have shape ({x.shape[1]},) to match x.shape[1], got "
                             f"{tuple(b.shape)}")
        if b.dtype != x.dtype:
            raise TypeError(f"filtered_lrelu: b must have x's dtype {x.dtype}, got {b.dtype}")
        if b.device != x.device:
            raise ValueError(f"filtered_lrelu: b is on {b.device} but x is on {x.device}")
    for name, v in (("up", up), ("down", down)):
        if not is_int(v):
            raise ValueError(f"filtered_lrelu: {name} must be an int, got {v!r}")
        if v < 1:
            raise ValueError(f"filtered_lrelu: {name} must be >= 1, got {v}")
    try:
        pad = parse_padding(padding)
    except ValueError as e:
        raise ValueError(str(e).replace("upfirdn2d:", "filtered_lrelu:")) from None
    for name, v in (("gain", gain), ("slope", slope)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"filtered_lrelu: {name} must be a finite number, got {v!r}")
    if clamp is not None and (not isinstance(clamp, numbers.Real) or not clamp >= 0):
        raise ValueError(f"filtered_lrelu: clamp must be None or a number >= 0, got {clamp!r}")
    fu, fd = filters
    (ow, _), (oh, _) = _geometry(x.shape[3], x.shape[2], fu, fd, int(up), int(down), pad)
    if ow < 1 or oh < 1:
        raise ValueError(f"filtered_lrelu: output size must be >= 1, got {max(oh, 0)}x{max(ow, 0)}; check "
                         f"padding={padding!r} (negative values crop) against the filter sizes and down")
    return (fu, fd, int(up), int(down), pad, float(gain), float(slope), None if clamp is None else float(clamp))


def _geometry(w, h, fa, fb, up, down, pad):
    """((outW, Mw), (outH, Mh)): output size and mid samples used per axis (see csrc/ops/filtered_lrelu.h)."""
    res = []
    for z, a, b_, p0, p1 in ((w, fa.shape[-1], fb.shape[-1], pad[0], pad[1]),
                             (h, fa.shape[0], fb.shape[0], pad[2], pad[3])):
        mid = z * up + p0 + p1 - a + 1
        o = (mid - b_) // down + 1 if mid >= b_ else 0
        res.append((o, (o - 1) * down + b_))
    return res


def _transpose(fa, fb, mask_w, sx, sy, up, down, pad, gain_a, gain_b, flip, z_hw, o_hw):
    """Arguments (after z) of the masked op that is the transpose of the masked op with these arguments."""
    (zh, zw), (oh, ow) = z_hw, o_hw
    aw, ah, bw, bh = fa.shape[-1], fa.shape[0], fb.shape[-1], fb.shape[0]
    px0, _, py0, _ = pad
    p = (aw - 1 + bw - 1 - px0, zw * up - ow * down + px0 - (up - 1),
         ah - 1 + bh - 1 - py0, zh * up - oh * down + py0 - (up - 1))
    return (fb, fa, mask_w, sx - (aw - 1) + px0, sy - (ah - 1) + py0, down, up, *p, gain_b, gain_a, not flip)


# ---------------------------------------------------------------------------------------------------- registration
def _register(name: str, masked_name: str) -> None:
    masked = getattr(torch.ops.vkernels, masked_name).default

    @torch.library.register_fake(f"vkernels::{name}")
    def _fake(x, fu, fd, b, up, down, px0, px1, py0, py1, gain, slope, clamp, flip_filter, write_mask):
        (ow, mw), (oh, mh) = _geometry(x.shape[3], x.shape[2], fu, fd, up, down, (px0, px1, py0, py1))
        y = torch.empty((x.shape[0], x.shape[1], oh, ow), dtype=x.dtype, device=x.device,
                        memory_format=out_format(x))
        shape = (x.shape[0], x.shape[1], mh, (mw + 3) // 4) if write_mask else (0,)
        return y, torch.empty(shape, dtype=torch.uint8, device=x.device)

    @torch.library.register_fake(f"vkernels::{masked_name}")
    def _fake_masked(z, fa, fb, mask, mask_w, sx, sy, up, down, px0, px1, py0, py1, gain_a, gain_b, gain, slope,
                     flip_filter):
        (ow, _), (oh, _) = _geometry(z.shape[3], z.shape[2], fa, fb, up, down, (px0, px1, py0, py1))
        return torch.empty((z.shape[0], z.shape[1], oh, ow), dtype=z.dtype, device=z.device,
                           memory_format=out_format(z))

    def setup(ctx, inputs, output):
        x, fu, fd, b, up, down, px0, px1, py0, py1, gain, slope, clamp, flip, write = inputs
        y, mask = output
        ctx.args = (up, down, (px0, px1, py0, py1), gain, slope, flip, write)
        ctx.hw = (x.shape[2], x.shape[3]), (y.shape[2], y.shape[3])
        ctx.save_for_backward(fu, fd, mask)

    def backward(ctx, dy, _dmask):
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise NotImplementedError("filtered_lrelu: no gradient w.r.t. the filters fu/fd (as in StyleGAN3)")
        up, down, pad, gain, slope, flip, write = ctx.args
        if not write:
            raise RuntimeError("filtered_lrelu: the op ran with write_mask=False, so it kept no state for backward")
        fu, fd, mask = ctx.saved_tensors
        (ow, mw), _ = _geometry(ctx.hw[0][1], ctx.hw[0][0], fu, fd, up, down, pad)
        args = _transpose(fu, fd, mw, 0, 0, up, down, pad, float(up * up), 1.0, flip, *ctx.hw)
        if 0 in ctx.hw[0]:  # an empty input plane (the output came from padding alone): nothing to flow back to
            dx = dy.new_zeros(dy.shape[:2] + tuple(ctx.hw[0]))
        else:
            dx = masked(dy, args[0], args[1], mask, *args[2:13], gain, slope, args[13])
        db = dx.sum(dim=(0, 2, 3)) if ctx.needs_input_grad[3] else None
        return (dx if ctx.needs_input_grad[0] else None, None, None, db) + (None,) * 11

    torch.library.register_autograd(f"vkernels::{name}", backward, setup_context=setup)

    def setup_masked(ctx, inputs, output):
        z, fa, fb, mask, mask_w, sx, sy, up, down, px0, px1, py0, py1, gain_a, gain_b, gain, slope, flip = inputs
        ctx.args = (mask_w, sx, sy, up, down, (px0, px1, py0, py1), gain_a, gain_b, gain, slope, flip)
        ctx.hw = (z.shape[2], z.shape[3]), (output.shape[2], output.shape[3])
        ctx.save_for_backward(fa, fb, mask)

    def backward_masked(ctx, dout):
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise NotImplementedError("filtered_lrelu_masked: no gradient w.r.t. the filters")
        mask_w, sx, sy, up, down, pad, gain_a, gain_b, gain, slope, flip = ctx.args
        fa, fb, mask = ctx.saved_tensors
        a = _transpose(fa, fb, mask_w, sx, sy, up, down, pad, gain_a, gain_b, flip, *ctx.hw)
        dz = None
        if ctx.needs_input_grad[0]:
            dz = (dout.new_zeros(dout.shape[:2] + tuple(ctx.hw[0])) if 0 in ctx.hw[0] else
                  masked(dout, a[0], a[1], mask, *a[2:13], gain, slope, a[13]))
        return (dz,) + (None,) * 17

    torch.library.register_autograd(f"vkernels::{masked_name}", backward_masked,
                                    setup_context=setup_masked)


def _triton_launchers():
    """vkernels::filtered_lrelu_triton / filtered_lrelu_masked_triton: the C++ schemas, Triton kernels behind."""

    def fwd(x, fu, fd, b, up, down, px0, px1, py0, py1, gain, slope, clamp, flip_filter, write_mask):
        from vkernels.triton import filtered_lrelu as kernels
        pad = (px0, px1, py0, py1)
        geom = _geometry(x.shape[3], x.shape[2], fu, fd, up, down, pad)
        _check_launch("filtered_lrelu_triton", x, fu, fd, up, down, geom)
        (ow, mw), (oh, mh) = geom
        shape = (x.shape[0], x.shape[1], mh, (mw + 3) // 4) if write_mask else (0,)
        mask = torch.zeros(shape, dtype=torch.uint8, device=x.device)
        y = kernels.launch(x, fu, fd, b, mask, up, down, px0, py0, float(up * up), 1.0, gain, slope, clamp, flip_filter,
                      False, bool(write_mask), 0, 0, mw, (x.shape[0], x.shape[1], oh, ow), out_format(x), geom)
        return y, mask

    def fwd_masked(z, fa, fb, mask, mask_w, sx, sy, up, down, px0, px1, py0, py1, gain_a, gain_b, gain, slope,
                   flip_filter):
        from vkernels.triton import filtered_lrelu as kernels
        geom = _geometry(z.shape[3], z.shape[2], fa, fb, up, down, (px0, px1, py0, py1))
        _check_launch("filtered_lrelu_masked_triton", z, fa, fb, up, down, geom)
        if mask.dtype != torch.uint8 or mask.ndim != 4 or tuple(mask.shape[:2]) != tuple(z.shape[:2]) or \
                mask.shape[3] != (mask_w + 3) // 4:
            raise RuntimeError(f"filtered_lrelu_masked_triton: mask must be uint8 of shape ({z.shape[0]}, "
                               f"{z.shape[1]}, mask_h, {(mask_w + 3) // 4}), got {mask.dtype} {tuple(mask.shape)}")
        (ow, _), (oh, _) = geom
        return kernels.launch(z, fa, fb, None, mask.contiguous(), up, down, px0, py0, gain_a, gain_b, gain, slope, None,
                         flip_filter, True, False, sx, sy, mask_w, (z.shape[0], z.shape[1], oh, ow), out_format(z),
                         geom)

    return fwd, fwd_masked


def _check_launch(name, x, fa, fb, up, down, geom):
    # What the C++ op checks, for direct torch.ops calls of the Triton variants.
    if x.ndim != 4 or x.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"{name}: x must be a 4-D float tensor, got {x.dtype} {tuple(x.shape)}")
    for fname, f in (("fu", fa), ("fd", fb)):
        if f.ndim not in (1, 2) or f.dtype != torch.float32 or f.numel() == 0:
            raise RuntimeError(f"{name}: {fname} must be a non-empty 1-D or 2-D float32 tensor, got {f.dtype} "
                               f"{tuple(f.shape)}")
    if up < 1 or down < 1:
        raise RuntimeError(f"{name}: up and down must be >= 1, got {up}, {down}")
    if geom[0][0] < 1 or geom[1][0] < 1:
        raise RuntimeError(f"{name}: output size must be >= 1, got {geom[1][0]}x{geom[0][0]}")


_backend.register_backends(_register, ("filtered_lrelu", "filtered_lrelu_masked"), _triton_launchers)
