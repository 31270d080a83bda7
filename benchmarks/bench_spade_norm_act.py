"""spade_norm_act cases: SPADE ResBlk normalization, batch norm (train mode) * (1 + gamma) + beta -> lrelu.

Memory-bound: reads x, gamma and beta, writes out; ~6 FLOPs per element. On CPU the training forward is one op
(spade_norm_act_train) that normalises each channel while it is still cached, so x comes from DRAM once;
"vkernels-cpu-twoop" is the earlier two-op path (statistics pass, then apply pass: x read twice) in the same run.
Floor: x.clone() (allocate and write one x-sized tensor).
"""
import importlib

import torch

import vkernels
from benchmarks._harness import Case, fwd_bwd, vkernels_impls

ARGS = dict(norm="batch", act="lrelu", alpha=0.2, gain=1.0)


def _reference(x, g, b):
    return vkernels.reference.spade_norm_act(x, g, b, **ARGS)


def _impl(impl):
    def fn(x, g, b):
        return vkernels.spade_norm_act(x, g, b, **ARGS, impl=impl)
    return fn


def _two_op():
    mod = importlib.import_module("vkernels.ops.spade_norm_act")  # vkernels.ops.spade_norm_act is the function

    def fn(x, g, b):
        mod.FUSED_TRAIN = False
        try:
            return vkernels.spade_norm_act(x, g, b, **ARGS, impl="cpu")
        finally:
            mod.FUSED_TRAIN = True
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    # SPADE generator at 256x256 (ngf=64): 1024 channels at 16^2 ... 128 channels at 128^2; batch 8.
    shapes = [(2, 16, 8, 8)] if quick else [(8, 256, 64, 64), (8, 128, 128, 128)]
    dtypes = [torch.float16, torch.bfloat16, torch.float32] if device == "cuda" else [torch.float32]
    impls = {f"vkernels-{i}": _impl(i) for i in vkernels_impls("spade_norm_act", device)}
    if "vkernels-cpu" in impls:
        impls["vkernels-cpu-twoop"] = _two_op()
    out = []
    for shape in shapes:
        for dtype in dtypes:
            x = torch.randn(shape, device=device).to(dtype)
            g = (torch.randn(shape, device=device) * 0.3).to(dtype)
            b = (torch.randn(shape, device=device) * 0.3).to(dtype)
            out.append(Case(op="spade_norm_act", size="x".join(map(str, shape)), dtype=dtype, inputs=(x, g, b),
                            reference=_reference, impls=impls, bytes=5 * x.nbytes, flops=6 * x.numel(),
                            bound="memory"))
            if shape[-1] == 128:
                continue
            # Training: forward + backward w.r.t. x, gamma, beta (fused spade backward: reads dy, x, gamma, beta,
            # writes dx, dgamma, dbeta; stats backward reads x, writes dx; plus the dx sum).
            out.append(Case(op="spade_norm_act", size="fwdbwd-" + "x".join(map(str, shape)), dtype=dtype,
                            inputs=(x, g, b), reference=fwd_bwd(_reference, (0, 1, 2)),
                            impls={k: fwd_bwd(f, (0, 1, 2)) for k, f in impls.items()}, bytes=16 * x.nbytes,
                            flops=20 * x.numel(), bound="memory",
                            loose=_LOOSE))
    return out



# Weight/bias/gamma gradients are sums over N*H*W terms: compiled and fused backends sum them in other orders (fp32
# eager and compile disagree by ~1e-5 of the largest value themselves), so fwd+bwd cases compare at 1e-4.
_LOOSE = {"compile": 1e-4, "vkernels-cpu": 1e-4, "vkernels-cpu-twoop": 1e-4, "vkernels-triton": 1e-4,
          "vkernels-cuda": 1e-4}
