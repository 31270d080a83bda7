"""The measured effect of porting each anchor's real code to vkernels.compat: forward + backward time and CPU peak
memory of their module against ours, in one process, on the same inputs.

    VKERNELS_DEEPINSIGHT_CBP=... VKERNELS_MPNCOV=... VKERNELS_MOCO=... python -m benchmarks.compat_port_timing

Each variable points at a checkout of the anchor (MoCo: the commit before their empty tree); an unset one skips that
anchor. Times rotate theirs / ours call by call (benchmarks._harness.time_all), so a shared machine's drift hits
both; peak memory is the profiler's running sum of torch's CPU allocations inside one call (_peak_bytes_cpu).
Before timing, the two outputs and input gradients are compared.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import vkernels as vk
from benchmarks._harness import _peak_bytes_cpu, time_all

OPS = ("compact_bilinear_pooling", "isqrt_cov", "infonce_bank_loss")


def load(env: str, relpath: str, name: str):
    root = os.environ.get(env)
    if not root:
        return None
    spec = importlib.util.spec_from_file_location(name, Path(root) / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fwd_bwd(fn, *inputs):
    """A zero-argument call: fn(*inputs) forward, then backward of its sum (or of itself when 0-dim)."""
    def run():
        xs = [x.detach().requires_grad_() for x in inputs]
        out = fn(*xs)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
        return out.detach(), [x.grad for x in xs]
    return run


def compare(name, theirs, ours):
    (ot, gt), (oo, go) = theirs(), ours()
    diffs = [float((ot - oo).abs().max() / ot.abs().max())]
    diffs += [float((a - b).abs().max() / a.abs().max()) for a, b in zip(gt, go) if a is not None or b is not None]
    print(f"{name}: max relative |theirs - ours| output {diffs[0]:.1e}, input grads {max(diffs[1:]):.1e}")


def measure(name, fns):
    times = time_all(fns, "cpu", quick=False)
    peaks = _peak_bytes_cpu(fns)
    med = {k: float(np.median(v)) for k, v in times.items()}
    rows = []
    for k in fns:
        p20, p80 = np.percentile(times[k], [20, 80])
        rows.append(f"{name} | {k} | {med[k]:.1f} ms (p20 {p20:.1f}, p80 {p80:.1f}, n={len(times[k])}) | "
                    f"peak {peaks[k] / 2**20:.1f} MiB")
    t, o = list(fns)
    rows.append(f"{name} | ratio theirs/ours | time {med[t] / med[o]:.2f}x | peak {peaks[t] / peaks[o]:.2f}x")
    for r in rows:
        print(r, flush=True)
    return rows


def cbp(module):
    from vkernels.compat.deepinsight import CompactBilinearPooling
    B, C, HW, D = 8, 512, 14, 8192
    t, o = module.CompactBilinearPooling(C, C, D, True, False), CompactBilinearPooling(C, C, D, True, False)
    x, y = torch.randn(B, C, HW, HW), torch.randn(B, C, HW, HW)
    fns = {"theirs": fwd_bwd(t, x, y), "ours": fwd_bwd(o, x, y)}
    name = f"DeepInsight CBP B={B} C={C} {HW}x{HW} D={D} fp32 fwd+bwd"
    compare(name, *fns.values())
    return measure(name, fns)


def mpncov(module):
    from vkernels.compat.mpncov import MPNCOV
    B, C, iters = 8, 256, 5
    t, o = module.MPNCOV(iters, True, True, C), MPNCOV(iters, True, True, C)
    rows = []
    for HW in (14, 28):  # ResNet-50's last stage at 224 and 448 pixels (their fine-grained setting)
        x = torch.randn(B, C, HW, HW)
        fns = {"theirs": fwd_bwd(t, x), "ours": fwd_bwd(o, x)}
        name = f"MPNCOV B={B} C={C} {HW}x{HW} iterNum={iters} fp32 fwd+bwd"
        compare(name, *fns.values())
        rows += measure(name, fns)
    return rows


class Identity(torch.nn.Module):
    """An encoder with nothing in it, so that only MoCo's own work (shuffle, loss, enqueue) is timed."""

    def __init__(self, num_classes=None):
        super().__init__()

    def forward(self, x):
        return x


def moco(module):
    import torch.distributed as dist
    from vkernels.compat.moco import MoCo
    N, K, d, T = 256, 65536, 128, 0.07
    # Theirs needs a process group and CUDA: a gloo group of one, and .cuda() as the identity.
    dist.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp()}/pg", rank=0, world_size=1)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.manual_seed(0)
    t = module.MoCo(Identity, d, K, 0.999, T)
    torch.manual_seed(0)
    o = MoCo(Identity, d, K, 0.999, T)
    criterion = torch.nn.CrossEntropyLoss()
    q, k = torch.randn(N, d), torch.randn(N, d)

    def theirs_loss(a, b):
        return criterion(*t(im_q=a, im_k=b))

    fns = {"theirs": fwd_bwd(theirs_loss, q, k), "ours": fwd_bwd(o, q, k)}
    name = f"MoCo loss N={N} K={K} d={d} fp32 fwd+bwd (identity encoders)"
    compare(name, *fns.values())
    return measure(name, fns)


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"vkernels impls: {[(op, vk.resolve_impl(op, torch.zeros(1))) for op in OPS]}")
    rows = []
    for env, rel, fn in (("VKERNELS_DEEPINSIGHT_CBP", "CompactBilinearPooling.py", cbp),
                         ("VKERNELS_MPNCOV", "src/representation/MPNCOV.py", mpncov),
                         ("VKERNELS_MOCO", "moco/builder.py", moco)):
        module = load(env, rel, "_their_" + fn.__name__)
        if module is None:
            print(f"{env} unset: {fn.__name__} skipped")
            continue
        rows += fn(module)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
