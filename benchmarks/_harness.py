"""What every bench_<op>.py shares: the Case record, the correctness check, timers, peak memory, machine ceilings.

Rows are plain dicts with the fields of FIELDS; __main__ adds the run's environment and writes them out.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import vkernels
from vkernels.utils.profile import peak_bytes
from vkernels.utils.quiet import quiet_torch_logs  # noqa: F401 - __main__ calls it

FIELDS = ["op", "size", "dtype", "provider", "median_ms", "p20_ms", "p80_ms", "peak_mem_bytes", "bytes", "flops",
          "gbps", "frac_copy_bw", "tflops", "frac_matmul", "ratio_vs_floor", "speedup_vs_eager",
          "speedup_vs_compile", "peak_vs_eager", "bound", "device", "torch_version", "triton_version", "commit",
          "timestamp"]


# Fused kernels keep fp32 between steps where eager rounds after every op, so allow a few ulps of the dtype
# (eps: fp16 1e-3, bf16 8e-3). A real bug (wrong bias channel, missing clamp) is off by far more.
TOL = {torch.float16: (4e-3, 1e-3), torch.bfloat16: (3e-2, 1e-2), torch.float32: (1e-5, 1e-5),
       torch.float64: (1e-12, 1e-12)}


@dataclass
class Case:
    """One op at one size and dtype.

    reference: the plain-PyTorch op, fn(*inputs) -> Tensor. It is the answer every provider must match, and it is
        timed eagerly ("eager") and under torch.compile ("compile").
    impls: the vkernels providers, "vkernels-<impl>" -> fn(*inputs) -> Tensor.
    bytes, flops: the least bytes moved and the FLOPs of one call (what the roofline fractions divide by).
    bound: "memory" or "compute", the ceiling the case is judged against (GB/s and % of copy for memory-bound
        cases, GFLOP/s and % of GEMM for compute-bound ones).
    floor: fn(*inputs), the op's GEMM(s) alone: a compute-bound case's floor ("floor-gemm"; floor_flops: its
        FLOPs when they differ from the case's). Without it a
        memory-bound case's floor is inputs[clone_of].clone() ("floor-clone": an op that returns a new tensor of
        that size cannot beat allocating and writing it); a compute-bound case without it has no floor.
    Goals (MET / MISSED) are not part of a case: benchmarks/targets.py holds them all.
    loose: provider -> tolerance relative to the largest |eager| value, for baselines whose algorithm rounds
        differently from the reference (an fp32 FFT per location vs a GEMM) and so cannot meet the dtype's rtol.
    """
    op: str
    size: str
    dtype: torch.dtype
    inputs: tuple
    reference: Callable
    impls: dict
    bytes: int
    flops: int
    bound: str = "memory"
    clone_of: int = 0
    floor: Callable | None = None
    floor_flops: int | None = None
    loose: dict = field(default_factory=dict)


def fwd_bwd(fn: Callable, grad_args: tuple[int, ...] = (0,)) -> Callable:
    """fn(*inputs) -> out, made into one forward+backward call returning (out, d out.sum() / d inputs[i] for i in
    grad_args). An input that `is` a differentiated one (y is x) is replaced by the same leaf, so it is seen once."""
    def run(*inputs):
        leaves = {i: inputs[i].detach().requires_grad_() for i in grad_args}
        args = [leaves.get(i, next((leaves[j] for j in grad_args if a is inputs[j]), a)) for i, a in
                enumerate(inputs)]
        out = fn(*args)
        grads = torch.autograd.grad(out, [leaves[i] for i in grad_args], torch.ones_like(out))
        return (out.detach(), *grads)
    return run


class CaseError(RuntimeError):
    """A provider failed or disagreed with the reference: the case is not timed."""


def vkernels_impls(op: str, device: str) -> list[str]:
    """vkernels implementations worth timing on `device`: every compiled one, not the reference (that is "eager").
    Triton on CPU is the TRITON_INTERPRET interpreter, 100x slower than anything real, so it is never timed."""
    return [i for i in vkernels.available_impls(op, device)
            if i != "reference" and not (i == "triton" and device == "cpu")]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def log(msg: str) -> None:
    # Progress goes to stderr so stdout stays the results table.
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- correctness
def providers(case: Case) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument callables: eager, compile, then each vkernels impl. Compiles (and checks) nothing yet."""
    torch._dynamo.reset()  # a fresh compile per case: no recompile-limit surprises across many shapes
    compiled = torch.compile(case.reference)
    fns = {"eager": case.reference, "compile": compiled, **case.impls}
    return {name: (lambda fn=fn: fn(*case.inputs)) for name, fn in fns.items()}


def check(case: Case, fns: dict) -> None:
    """Every provider must agree with eager before anything is timed (this call also compiles "compile")."""
    want = fns["eager"]()
    rtol, atol = TOL[case.dtype]
    for name, fn in fns.items():
        if name == "eager":
            continue
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 - any failure of a provider fails the case, loudly
            raise CaseError(f"{name} raised {type(e).__name__}: {e}") from e
        tol = (rtol, atol)
        if name in case.loose:
            scale = max(float(t.abs().max()) for t in _tensors(want) if t.numel())
            tol = (0.0, case.loose[name] * scale)
        try:
            torch.testing.assert_close(got, want, rtol=tol[0], atol=tol[1], check_stride=False)
        except AssertionError as e:
            raise CaseError(f"{name} disagrees with eager (rtol={tol[0]}, atol={tol[1]:.3g}): {e}") from None


def _tensors(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


# --------------------------------------------------------------------------------------------------------- timing
def time_all(fns: dict, device: str, quick: bool, repeats: int | None = None) -> dict[str, np.ndarray]:
    """Per-call times in ms of each zero-argument callable. Repeats adapt to the calls' cost (about 1.5 s per
    provider on CPU, 0.5 s on GPU) unless `repeats` is given.

    On CPU the calls rotate through the providers, one call of each per round: the load of a shared 2-core VM
    drifts within seconds, and rotating makes every provider see the same drift, so the ratios stay fair."""
    if device == "cuda":
        return {name: _time_cuda(fn, quick, repeats) for name, fn in fns.items()}
    warm = {name: min(_once_cpu(fn) for _ in range(1 if quick else 2)) for name, fn in fns.items()}
    n = repeats or (3 if quick else int(np.clip(1500 * len(fns) / max(sum(warm.values()), 1e-3), 7, 100)))
    times = {name: [] for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            times[name].append(_once_cpu(fn))
    return {name: np.array(t) for name, t in times.items()}


def _once_cpu(fn: Callable) -> float:
    t0 = time.perf_counter()
    out = fn()
    ms = (time.perf_counter() - t0) * 1e3
    del out  # freed outside the timed region, the same for every provider and for the clone floor
    return ms


_FLUSH: list = []


def _time_cuda(fn: Callable, quick: bool, repeats: int | None) -> np.ndarray:
    if not _FLUSH:  # 256 MB: larger than the L2 of any current GPU (H100 50 MB, B200 126 MB)
        _FLUSH.append(torch.empty(256 << 20, dtype=torch.int8, device="cuda"))

    def run(n: int) -> list[float]:
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in ev:
            _FLUSH[0].zero_()  # evict the inputs from L2: in a network they were written long ago
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in ev]

    warm = run(3 if quick else 10)
    n = repeats or (10 if quick else int(np.clip(500 / max(np.median(warm), 1e-3), 25, 1000)))
    return np.array(run(n))


# ------------------------------------------------------------------------------------------------------- rows
def make_row(op, size, dtype, provider, times, nbytes, flops, peak=None, bound="memory") -> dict:
    p20, med, p80 = np.percentile(times, [20, 50, 80])
    sec = med / 1e3
    return dict(op=op, size=size, dtype=dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype,
                provider=provider, median_ms=med, p20_ms=p20, p80_ms=p80, peak_mem_bytes=peak, bytes=nbytes,
                flops=flops, gbps=nbytes / sec / 1e9 if nbytes else None,
                tflops=flops / sec / 1e12 if flops else None, bound=bound)


def run_case(case: Case, device: str, quick: bool, repeats: int | None, ceil: dict) -> list[dict]:
    """Check, time and measure one case; returns its rows (the floor first, if any, then each provider)."""
    fns = providers(case)
    check(case, fns)
    floor_bytes, floor_flops = 0, 0
    if case.floor is not None:
        fns = {"floor-gemm": (lambda: case.floor(*case.inputs)), **fns}
        floor_flops = case.floor_flops or case.flops
    elif case.bound == "memory":
        x = case.inputs[case.clone_of]
        fns = {"floor-clone": x.clone, **fns}
        floor_bytes = 2 * x.nbytes  # moves x's bytes in and out, computes nothing
    peaks = peak_bytes(fns, device)
    rows = []
    for name, times in time_all(fns, device, quick, repeats).items():
        if name.startswith("floor-"):
            rows.append(make_row(case.op, case.size, case.dtype, name, times, floor_bytes or case.bytes,
                                 floor_flops, peaks[name], case.bound))
        else:
            rows.append(make_row(case.op, case.size, case.dtype, name, times, case.bytes, case.flops, peaks[name],
                                 case.bound))
    med = {r["provider"]: r["median_ms"] for r in rows}
    floor = next((r for r in rows if r["provider"].startswith("floor-")), None)
    matmul = ceil["matmul_tflops"].get(dtype_name(case.dtype)) or max(ceil["matmul_tflops"].values())
    for r in rows:
        r["frac_copy_bw"] = r["gbps"] / ceil["copy_gbps"] if r["gbps"] else None
        r["frac_matmul"] = r["tflops"] / matmul if r["tflops"] else None
        r["ratio_vs_floor"] = r["median_ms"] / floor["median_ms"] if floor else None
        r["speedup_vs_eager"] = med["eager"] / r["median_ms"]
        r["speedup_vs_compile"] = med["compile"] / r["median_ms"]
        pe = peaks.get("eager")
        r["peak_vs_eager"] = r["peak_mem_bytes"] / pe if pe and r["peak_mem_bytes"] is not None else None
    return rows


def metric(rows: list[dict], provider: str, name: str) -> float | None:
    """A row field of `provider`, or "speedup_vs:<other>" (other's median over this provider's)."""
    by = {r["provider"]: r for r in rows}
    if name.startswith("speedup_vs:"):
        other = by.get(name.split(":", 1)[1])
        return other["median_ms"] / by[provider]["median_ms"] if other else None
    return by[provider].get(name)


def evaluate_targets(case: Case, rows: list[dict], device: str) -> list[dict]:
    """The goals of benchmarks/targets.py that apply to this case, each with its value and MET / MISSED."""
    from benchmarks import targets as T

    have = [r["provider"] for r in rows]
    out = []
    for t in T.targets_for(case.op, case.size, dtype_name(case.dtype), device):
        provs = [p for p in have if T.is_ours(p)] if t.provider == "vkernels" else [t.provider]
        for p in provs:
            if p not in have:
                continue  # that impl is not built or not available on this device
            v = metric(rows, p, t.metric)
            # plain Python values: numpy's bool / float64 from the timing arrays do not go into goals.json
            met = None if v is None else bool(v <= t.value if t.cmp == "<=" else v >= t.value)
            out.append(dict(op=case.op, size=case.size, dtype=dtype_name(case.dtype), provider=p, goal=t.describe(),
                            value=None if v is None else float(v), met=met, source=t.source))
    return out


# ------------------------------------------------------------------------------------------------------ ceilings
def measure_ceilings(device: str, quick: bool, repeats: int | None) -> tuple[list[dict], dict]:
    """Copy bandwidth (copy into an existing tensor, bytes read + written) and GEMM rate, measured in this run so
    ratios compare numbers taken under the same conditions (runs on shared machines vary by +-20%)."""
    rows = []
    copy_mb = (64 if quick else 1024) if device == "cuda" else (32 if quick else 256)
    src = torch.ones(copy_mb << 18, device=device)  # fp32 elements; ones() touches every page up front
    dst = torch.zeros_like(src)
    times = time_all({"copy": lambda: dst.copy_(src)}, device, quick, repeats)["copy"]
    rows.append(make_row("machine", f"{copy_mb}MB", torch.float32, "ceiling-copy", times, 2 * src.nbytes, 0))
    del src, dst
    n = (2048 if quick else 8192) if device == "cuda" else (512 if quick else 2048)
    dtypes = [torch.float16, torch.bfloat16] if device == "cuda" else [torch.float32]
    for dt in dtypes:
        a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
        c = torch.empty_like(a)  # out= keeps allocation out of a compute ceiling
        times = time_all({"mm": lambda: torch.mm(a, b, out=c)}, device, quick, repeats)["mm"]
        rows.append(make_row("machine", f"{n}^3", dt, "ceiling-matmul", times, 0, 2 * n ** 3, bound="compute"))
    ceil = {"copy_gbps": rows[0]["gbps"], "matmul_tflops": {r["dtype"]: r["tflops"] for r in rows[1:]}}
    for r in rows:
        r["frac_copy_bw"] = r["gbps"] / ceil["copy_gbps"] if r["gbps"] else None
        r["frac_matmul"] = 1.0 if r["tflops"] else None
    return rows, ceil


# --------------------------------------------------------------------------------------------------- environment
def env_info(device: str) -> dict:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:  # platform.processor() is just "x86_64" on Linux
                name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name += f" ({torch.get_num_threads()} threads)"
    triton = ""
    for dist in ("triton", "pytorch-triton"):  # version from metadata: importing triton here would cost seconds
        try:
            triton = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            pass
    return dict(device=name, torch_version=torch.__version__, triton_version=triton, commit=_git_commit(),
                timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _git_commit() -> str:
    import os

    if os.environ.get("VKERNELS_COMMIT"):  # a GPU machine gets the tree without .git; gpu_check passes it on
        return os.environ["VKERNELS_COMMIT"]
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"  # not a git checkout, or no commit yet
    try:
        dirty = bool(git("status", "--porcelain"))  # untracked sources change results too; ignored files do not
    except (OSError, subprocess.CalledProcessError):
        return sha
    return sha + "-dirty" if dirty else sha
