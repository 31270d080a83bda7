"""modulated_conv2d: StyleGAN2's modulated convolution with the SynthesisLayer epilogue fused.

Two fused kernels around a torch convolution:
  1. vkernels::modulated_conv2d_weight — style modulation and demodulation coefficients in one pass over the weight:
     dcoefs[n, o] = rsqrt(sum_{i,k} (w[o,i,k] s[n,i])^2 + 1e-8), wmod = w * s * dcoefs (fused path) or dcoefs alone
     (non-fused path, where the activations are scaled instead).
  2. vkernels::modulated_conv2d_epilogue — demodulation scale per (n, o) (non-fused path), noise * noise_strength,
     bias, activation, gain and clamp in one pass, with bias_act's math (csrc/ops/bias_act_math.h, the Triton
     bias_act helpers). Backward keeps only the convolution output x alive (eager keeps x, x*d and y) and recomputes
     z = x*d + noise*ns + b in the backward kernel.
The convolution is F.conv2d / grouped conv / conv_transpose2d and FIR resampling is vkernels.upfirdn2d, arranged as
StyleGAN's conv2d_resample fast paths. Registration: schemas in csrc/ops/modulated_conv2d.cpp.

Gradients of any order. First order runs the kernels. The weight pass's backward is written in torch ops and is
itself differentiable. The epilogue's backward op (dz = g * gain * act'(z) * [not clamped]) is registered with
autograd too: it is linear in g, so its gradient w.r.t. g is the backward kernel again; its gradients w.r.t. x,
dcoefs, noise, noise_strength and bias (act''(z) terms, which only a double backward needs, e.g. StyleGAN2's
path-length penalty through G) are a torch composite of the reference epilogue, differentiable to any order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vkernels import _backend
from vkernels._dtypes import FLOAT_DTYPES, acc_dtype
from vkernels.ops._checks import check_act_args, check_float_tensor
from vkernels.ops.upfirdn2d import setup_filter, upfirdn2d
from vkernels.reference.bias_act import ACTIVATIONS
from vkernels.reference.bias_act import bias_act as _ref_bias_act
from vkernels.reference.modulated_conv2d import modulated_conv2d as _reference
from vkernels.reference.modulated_conv2d import resample_padding

__all__ = ["modulated_conv2d"]

_backend.register_op("modulated_conv2d_weight", cuda_order=("triton",))
_backend.register_op("modulated_conv2d_epilogue", cuda_order=("triton",))


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: int = 1, down: int = 1, padding: int | None = None,
                     resample_filter: torch.Tensor | None = None, flip_weight: bool = True,
                     fused_modconv: bool = True, noise: torch.Tensor | None = None,
                     noise_strength: torch.Tensor | float | None = None, bias: torch.Tensor | None = None,
                     act: str = "lrelu", alpha: float | None = None, gain: float | None = None,
                     clamp: float | None = None, impl: str = "auto") -> torch.Tensor:
    r"""StyleGAN2 modulated convolution + epilogue: y = clamp(act(conv(x, w * s * d) + noise * ns + b) * gain).

    Semantics of NVlabs stylegan2-ada-pytorch `modulated_conv2d` (training/networks.py) followed by SynthesisLayer's
    `bias_act(x, bias, act, gain, clamp)`; with act="linear", gain=1 and no bias it is exactly `modulated_conv2d`.

    Args:
        x: (N, in_channels, H, W), float16/bfloat16/float32/float64.
        weight: (out_channels, in_channels, kh, kw), floating (may be fp32 with low-precision x, as in StyleGAN).
        styles: (N, in_channels), weight's dtype.
        demodulate: divide each output channel by the norm of its modulated weights (dcoefs).
        up, down: integer resampling factors (>= 1) with the FIR `resample_filter` (StyleGAN's conv2d_resample).
        padding: padding of the (upsampled) image; None = kh // 2 (SynthesisLayer's "same" padding).
        resample_filter: FIR filter prepared by vkernels.setup_filter; None = setup_filter([1, 3, 3, 1]).
        flip_weight: True = correlation (F.conv2d), False = convolution (StyleGAN passes up == 1).
        fused_modconv: True = one grouped convolution with per-sample weights; False = scale the activations by the
            styles before and by dcoefs after a shared-weight convolution. Same result up to rounding.
        noise: (N or 1, 1, outH, outW) added after the convolution, times noise_strength.
        noise_strength: scalar (tensor or number) multiplying noise; None = 1.
        bias: (out_channels,) added after the noise.
        act, alpha, gain, clamp: as in vkernels.bias_act (default gain: sqrt(2) for lrelu).
        impl: "auto" | "cpu" | "triton" | "reference"; see `vkernels.resolve_impl`.

    Returns:
        (N, out_channels, outH, outW) in x's dtype. Differentiable (to any order) w.r.t. x, weight, styles,
        noise, noise_strength and bias.
    """
    f = _check(x, weight, styles, up, down, padding, resample_filter, noise, noise_strength, bias, act, alpha, gain,
               clamp)
    padding = weight.shape[-1] // 2 if padding is None else int(padding)
    _, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    clamp = None if clamp is None else float(clamp)
    if noise_strength is not None and not isinstance(noise_strength, torch.Tensor):
        noise_strength = torch.tensor(float(noise_strength), device=x.device)
    impl = _backend.resolve_impl("modulated_conv2d_epilogue", x, impl)
    if impl == "reference":
        return _reference(x, weight, styles, demodulate, up, down, padding, f, flip_weight, fused_modconv, noise,
                          noise_strength, bias, act, alpha, gain, clamp)
    sfx = "_triton" if impl == "triton" else ""
    wop = getattr(torch.ops.vkernels, "modulated_conv2d_weight" + sfx)
    eop = getattr(torch.ops.vkernels, "modulated_conv2d_epilogue" + sfx)
    N = x.shape[0]
    O, I, kh, kw = weight.shape
    fused_modconv = fused_modconv and N > 0  # a grouped conv needs groups >= 1; both paths give the empty result
    wmod, dcoefs = wop(weight, styles, demodulate, fused_modconv)
    if fused_modconv:
        y = _conv2d_resample(x.reshape(1, N * I, *x.shape[2:]), wmod.reshape(N * O, I, kh, kw).to(x.dtype), f, up,
                             down, padding, N, flip_weight, impl)
        y = y.reshape(N, O, *y.shape[2:])
        dcoefs = None
    else:
        y = _conv2d_resample(x * styles.to(x.dtype).reshape(N, I, 1, 1), weight.to(x.dtype), f, up, down, padding,
                             1, flip_weight, impl)
        dcoefs = dcoefs.to(x.dtype) if demodulate else None
    if noise is not None and (noise.ndim != 4 or noise.shape[0] not in (1, N) or noise.shape[1] != 1
                              or noise.shape[2:] != y.shape[2:]):
        raise ValueError(f"modulated_conv2d: noise must have shape ({N} or 1, 1, {y.shape[2]}, {y.shape[3]}) to match "
                         f"the output, got {tuple(noise.shape)}")
    return eop(y, dcoefs, None if noise is None else noise.to(x.dtype), noise_strength if noise is not None else None,
               None if bias is None else bias.to(x.dtype), act, alpha, gain, clamp)


def _conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, impl):
    """StyleGAN's conv2d_resample fast paths with vkernels.upfirdn2d (same result as the reference's generic path)."""
    out_channels, in_per_group, kh, kw = w.shape
    px0, px1, py0, py1 = resample_padding(f, up, down, padding, kw, kh)
    fimpl = "triton" if impl == "triton" else "auto"

    def conv(x, w, stride=1, pad=0, transpose=False, flip=flip_weight):
        if not flip and (kw > 1 or kh > 1):
            w = w.flip([2, 3])
        if transpose:
            return F.conv_transpose2d(x, w, stride=stride, padding=pad, groups=groups)
        return F.conv2d(x, w, stride=stride, padding=pad, groups=groups)

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], impl=fimpl)
        return conv(x, w)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = conv(x, w)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, impl=fimpl)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], impl=fimpl)
        return conv(x, w, stride=down)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = conv(x, w, stride=up, pad=[pyt, pxt], transpose=True, flip=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2, impl=fimpl)
        if down > 1:
            x = upfirdn2d(x, f, down=down, impl=fimpl)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return conv(x, w, pad=[py0, px0])
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1], impl=fimpl)
    return conv(x, w)


def _check(x, weight, styles, up, down, padding, f, noise, noise_strength, bias, act, alpha, gain, clamp):
    name = "modulated_conv2d"
    for arg, t in (("x", x), ("weight", weight), ("styles", styles)):
        check_float_tensor(name, arg, t)
    if x.ndim != 4:
        raise ValueError(f"{name}: x must have shape (N, in_channels, H, W), got {tuple(x.shape)}")
    if weight.ndim != 4:
        raise ValueError(f"{name}: weight must have shape (out_channels, in_channels, kh, kw), got "
                         f"{tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{name}: weight.shape[1] ({weight.shape[1]}) must equal x.shape[1] (in_channels = "
                         f"{x.shape[1]})")
    if styles.shape != (x.shape[0], x.shape[1]):
        raise ValueError(f"{name}: styles must have shape (N, in_channels) = ({x.shape[0]}, {x.shape[1]}), got "
                         f"{tuple(styles.shape)}")
    if styles.dtype != weight.dtype:
        raise TypeError(f"{name}: styles.dtype ({styles.dtype}) must equal weight.dtype ({weight.dtype})")
    for arg, t in (("weight", weight), ("styles", styles), ("noise", noise), ("bias", bias),
                   ("resample_filter", f), ("noise_strength", noise_strength)):
        if isinstance(t, torch.Tensor) and t.device != x.device:
            raise ValueError(f"{name}: {arg} is on {t.device} but x is on {x.device}")
    for arg, v in (("up", up), ("down", down)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: {arg} must be an int >= 1, got {v!r}")
    if padding is not None and (not isinstance(padding, int) or isinstance(padding, bool)):
        raise ValueError(f"{name}: padding must be an int or None, got {padding!r}")
    check_act_args(name, act, alpha, gain, clamp)
    if noise is not None:
        if not isinstance(noise, torch.Tensor) or noise.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: noise must be a floating torch.Tensor or None, got {type(noise).__name__}")
        if noise.ndim != 4 or noise.shape[1] != 1 or noise.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{name}: noise must have shape ({x.shape[0]} or 1, 1, outH, outW), got "
                             f"{tuple(noise.shape)}")
    if isinstance(noise_strength, torch.Tensor) and noise_strength.numel() != 1:
        raise ValueError(f"{name}: noise_strength must be a scalar, got shape {tuple(noise_strength.shape)}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: bias must be a floating torch.Tensor or None")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{name}: bias must have shape (out_channels,) = ({weight.shape[0]},), got "
                             f"{tuple(bias.shape)}")
    if up > 1 or down > 1:
        if f is None:
            f = setup_filter([1, 3, 3, 1], device=x.device)
        if not isinstance(f, torch.Tensor) or f.dtype != torch.float32 or f.ndim not in (1, 2):
            raise ValueError(f"{name}: resample_filter must be a 1-D or 2-D float32 tensor (vkernels.setup_filter)")
    return f


def _epi_bwd(op, g, x, d, noise, ns, b, act, alpha, gain, clamp, needs):
    dz = op(g, x, d, noise, ns, b, act, alpha, gain, clamp)
    dx = dd = dnoise = dns = db = None
    if needs[0]:
        dx = dz * d[:, :, None, None] if d is not None else dz
    if needs[1] and d is not None:
        dd = (dz * x).sum((2, 3))
    if noise is not None and (needs[2] or needs[3]):
        dzs = dz.sum(1, keepdim=True)
        if needs[2]:
            dnoise = dzs * ns.to(dzs.dtype) if ns is not None else dzs
            if noise.shape[0] == 1:
                dnoise = dnoise.sum(0, keepdim=True)
        if needs[3] and ns is not None:
            dns = (dzs.to(acc_dtype(ns.dtype)) * noise).sum()
            dns = dns.reshape(ns.shape).to(ns.dtype)
    if needs[4] and b is not None:
        db = dz.sum((0, 2, 3))
    return dx, dd, dnoise, dns, db


def _epilogue_pre(x, d, noise, ns, b):
    """The epilogue's pre-activation in torch ops: z = x * d + noise * ns + b."""
    z = x * d[:, :, None, None] if d is not None else x
    if noise is not None:
        z = z + (noise * ns.to(noise.dtype) if ns is not None else noise)
    if b is not None:
        z = z + b[None, :, None, None]
    return z


def _epi_bwd_grads(g, gg, x, d, noise, ns, b, act, alpha, gain, clamp, needs, create_graph):
    """<gg, d(epilogue_backward(g, x, d, noise, ns, b)) / d(x, d, noise, ns, b)> through the reference's autograd.

    The backward op's output is dz = g * d(clamp(act(z) * gain))/dz with z = x * d + noise * ns + b, so this is
    gg * g * gain * act''(z) * [not clamped] pushed back through z. Only a double backward gets here, so the
    transient full-size temporaries of this composite are acceptable."""
    ins = [x, d, noise, ns, b]
    want = [t is not None and bool(n) for t, n in zip(ins, needs)]
    if not any(want):
        return [None] * 5
    with torch.enable_grad():
        # Inputs that are part of the outer graph are used as they are (so the result is differentiable again);
        # the others become fresh leaves. g is the incoming gradient, a constant here unless create_graph.
        ls = [None if t is None else (t if (t.requires_grad and create_graph) else t.detach().requires_grad_(w))
              for t, w in zip(ins, want)]
        z = _epilogue_pre(*ls)
        zl = z if z.requires_grad else z.detach().requires_grad_()
        y = _ref_bias_act(zl, None, act=act, alpha=alpha, gain=gain, clamp=clamp)
        (dz,) = torch.autograd.grad(y, zl, g if create_graph else g.detach(), create_graph=True)
        outs = [l for l, w in zip(ls, want) if w]
        if not dz.requires_grad:  # act'' == 0 everywhere this graph can see (linear activation)
            res = [torch.zeros_like(o) for o in outs]
        else:
            res = list(torch.autograd.grad(dz, outs, gg, create_graph=create_graph, allow_unused=True,
                                           materialize_grads=True))
    it = iter(res)
    return [next(it) if w else None for w in want]


def _weight_bwd(w, s, d, g_wmod, g_d, demodulate, fused):
    N, I = s.shape
    O = w.shape[0]
    W = w.reshape(O, I, -1)
    dw = torch.zeros_like(W)
    ds = torch.zeros_like(s)
    gd = g_d if (demodulate and g_d is not None and g_d.numel()) else None
    if fused and g_wmod is not None and g_wmod.numel():
        dd = d if demodulate else torch.ones(N, O, dtype=w.dtype, device=w.device)
        G = g_wmod.reshape(N, O, I, -1)
        GW = torch.einsum("noik,oik->noi", G, W)
        ds = ds + torch.einsum("noi,no->ni", GW, dd)
        dw = dw + torch.einsum("noik,noi->oik", G, s[:, None, :] * dd[:, :, None])
        if demodulate:
            t = torch.einsum("noi,ni->no", GW, s)
            gd = t if gd is None else gd + t
    if demodulate and gd is not None:
        du = gd * (-0.5) * d ** 3
        a = (W * W).sum(-1)
        ds = ds + 2 * s * (du @ a)
        dw = dw + 2 * W * (du.t() @ (s * s))[..., None]
    return dw.reshape(w.shape), ds


def _register(wname: str, ename: str, ebname: str) -> None:
    ebop = getattr(torch.ops.vkernels, ebname).default

    @torch.library.register_fake(f"vkernels::{wname}")
    def _fake_w(weight, styles, demodulate, fused):
        N, (O, I, kh, kw) = styles.shape[0], weight.shape
        return (weight.new_empty((N, O, I, kh, kw) if fused else (0,)),
                weight.new_empty((N, O) if demodulate else (0,)))

    @torch.library.register_fake(f"vkernels::{ename}")
    def _fake_e(x, dcoefs, noise, noise_strength, b, act, alpha, gain, clamp):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(f"vkernels::{ebname}")
    def _fake_eb(grad, x, dcoefs, noise, noise_strength, b, act, alpha, gain, clamp):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def setup_w(ctx, inputs, output):
        weight, styles, demodulate, fused = inputs
        ctx.flags = (demodulate, fused)
        ctx.save_for_backward(weight, styles, output[1])

    def backward_w(ctx, g_wmod, g_d):
        w, s, d = ctx.saved_tensors
        dw, ds = _weight_bwd(w, s, d, g_wmod, g_d, *ctx.flags)
        return dw, ds, None, None

    def setup_e(ctx, inputs, output):
        x, dcoefs, noise, ns, b, act, alpha, gain, clamp = inputs
        ctx.args = (act, alpha, gain, clamp)
        ctx.save_for_backward(x, dcoefs, noise, ns, b)

    def backward_e(ctx, g):
        x, d, noise, ns, b = ctx.saved_tensors
        out = _epi_bwd(ebop, g.contiguous(), x, d, noise, ns, b, *ctx.args, ctx.needs_input_grad[:5])
        return (*out, None, None, None, None)

    def setup_eb(ctx, inputs, output):
        g, x, dcoefs, noise, ns, b, act, alpha, gain, clamp = inputs
        ctx.args = (act, alpha, gain, clamp)
        ctx.save_for_backward(g, x, dcoefs, noise, ns, b)

    def backward_eb(ctx, gg):
        g, x, d, noise, ns, b = ctx.saved_tensors
        needs = ctx.needs_input_grad
        create_graph = torch.is_grad_enabled()  # True inside a create_graph=True backward
        d_g = ebop(gg.contiguous(), x, d, noise, ns, b, *ctx.args) if needs[0] else None
        rest = _epi_bwd_grads(g, gg, x, d, noise, ns, b, *ctx.args, needs[1:6], create_graph)
        return (d_g, *rest, None, None, None, None)

    torch.library.register_autograd(f"vkernels::{wname}", backward_w, setup_context=setup_w)
    torch.library.register_autograd(f"vkernels::{ebname}", backward_eb, setup_context=setup_eb)
    torch.library.register_autograd(f"vkernels::{ename}", backward_e, setup_context=setup_e)


def _triton_launchers():
    def weight(weight, styles, demodulate, fused):
        from vkernels.triton import modulated_conv2d as kernels
        if weight.ndim != 4 or styles.ndim != 2 or styles.shape[1] != weight.shape[1]:
            raise RuntimeError(f"modulated_conv2d: styles must have shape (N, in_channels={weight.shape[1]}), got "
                               f"{tuple(styles.shape)} with weight {tuple(weight.shape)}")
        if styles.dtype != weight.dtype:
            raise RuntimeError(f"modulated_conv2d: styles dtype {styles.dtype} must match weight dtype {weight.dtype}")
        return kernels.launch_weight(weight, styles, demodulate, fused)

    def check_epilogue(x, dcoefs, noise, noise_strength, b, act, clamp):
        if x.ndim != 4 or x.dtype not in FLOAT_DTYPES:
            raise RuntimeError(f"modulated_conv2d: x must be a floating (N, C, H, W) tensor, got {tuple(x.shape)}")
        if act not in ACTIVATIONS:
            raise RuntimeError(f"modulated_conv2d: act must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
        N, O, H, W = x.shape
        for arg, t, shape in (("dcoefs", dcoefs, (N, O)), ("bias", b, (O,))):
            if t is not None and (tuple(t.shape) != shape or t.dtype != x.dtype):
                raise RuntimeError(f"modulated_conv2d: {arg} must have shape {shape} and dtype {x.dtype}, got "
                                   f"{tuple(t.shape)} {t.dtype}")
        if noise is not None and (noise.ndim != 4 or noise.shape[0] not in (1, N) or noise.shape[1] != 1
                                  or tuple(noise.shape[2:]) != (H, W) or noise.dtype != x.dtype):
            raise RuntimeError(f"modulated_conv2d: noise must have shape ({N} or 1, 1, {H}, {W}), got "
                               f"{tuple(noise.shape)}")

    def epilogue(x, dcoefs, noise, noise_strength, b, act, alpha, gain, clamp):
        from vkernels.triton import modulated_conv2d as kernels
        check_epilogue(x, dcoefs, noise, noise_strength, b, act, clamp)
        return kernels.launch_epilogue(x, None, dcoefs, noise, noise_strength, b, act, alpha, gain, clamp)

    def epilogue_backward(grad, x, dcoefs, noise, noise_strength, b, act, alpha, gain, clamp):
        from vkernels.triton import modulated_conv2d as kernels
        check_epilogue(x, dcoefs, noise, noise_strength, b, act, clamp)
        if grad.shape != x.shape or grad.dtype != x.dtype:
            raise RuntimeError("modulated_conv2d_epilogue_backward: grad must match x in shape and dtype")
        return kernels.launch_epilogue(x, grad, dcoefs, noise, noise_strength, b, act, alpha, gain, clamp)

    return weight, epilogue, epilogue_backward


_backend.register_backends(_register, ("modulated_conv2d_weight", "modulated_conv2d_epilogue",
                                       "modulated_conv2d_epilogue_backward"), _triton_launchers)
