#!/usr/bin/env python3
"""Smoke run: launch every compiled kernel of vkernels at small sizes and check each result against the reference.

Made to run under compute-sanitizer (benchmarks/gpu_check.sh runs it under memcheck, racecheck and initcheck), so it
is small and fast, calls the raw ops (torch.ops.vkernels.*) directly, and synchronizes after every launch so that an
error is reported against the variant that caused it. The checks are loose sanity bounds (float64 reference, dtype
tolerances); tests/ holds the strict numerics.

    python benchmarks/smoke.py                        # CUDA tensors: impls cuda + triton, scope "default"
    python benchmarks/smoke.py --scope quick          # fewer variants (for the slower sanitizer tools)
    python benchmarks/smoke.py --device cpu           # no GPU: C++ CPU kernels + Triton through its interpreter
    python benchmarks/smoke.py --list                 # print the variants without running them
    python benchmarks/smoke.py --large --jobs 8       # + >2**31-element cases; 8 parallel shards (no sanitizer)

Scopes: "full" runs every variant for every impl; "default" runs every variant of the C++/CUDA kernels and caps
Triton, where every variant is a separate JIT compile (about 0.2-1 s each; ~820 distinct ones in "full"): in float32
all acts x all modes on two layouts (strided bias; odd size + clamp) and lrelu/tanh/swish on every layout; in
float16/bfloat16/float64 lrelu/tanh/swish x all modes on four layouts (strided bias, odd, misaligned x, misaligned
grad). "quick" (for the slower sanitizer tools) caps both further. --jobs N runs N shards in parallel processes:
under no sanitizer that compiles the Triton variants N at a time and fills Triton's on-disk cache for later runs.

Exit status: 0 all passed; 1 a wrong result, an exception, or a kernel that was never launched; 3 stopped early by
--max-seconds (coverage incomplete). Unwritten outputs: by default the run turns on torch's deterministic mode
(warn_only), whose torch.utils.deterministic.fill_uninitialized_memory makes every empty()/empty_like() -- the ops'
outputs included -- come back filled with NaN, so an element a kernel never writes fails the comparison. Pass
--no-fill under compute-sanitizer's initcheck, which should see those reads of uninitialized memory itself.

Cases live with each op: benchmarks/bench_<op>.py defines `smoke_<op>(ctx)`, a generator of SmokeCase objects (one
kernel launch each; benchmarks/_smoke.py), found by name like the bench files' `cases` (no central list here). An op
registered in vkernels (vkernels._backend.OPS) without a smoke function fails the run, and so does any vkernels::*
op with a kernel for the device (a "*_triton" op counts as the triton impl) that no case launched.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def discover_smokes() -> dict:
    """op -> its smoke_<op>(ctx) generator, from every benchmarks/bench_*.py (the functions each file defines)."""
    smokes = {}
    for path in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        mod = importlib.import_module(f"benchmarks.{path.stem}")
        for name, fn in vars(mod).items():
            if name.startswith("smoke_") and callable(fn) and getattr(fn, "__module__", None) == mod.__name__:
                smokes[name[len("smoke_"):]] = fn
    return smokes


def _as_tuple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _check(torch, case, out) -> str | None:
    """None if out matches, else a one-line reason."""
    if case.select is not None:
        out = case.select(out)
    outs, exps = _as_tuple(out), _as_tuple(case.expect)
    if len(outs) != len(exps):
        return f"{len(outs)} outputs, expected {len(exps)}"
    likes = _as_tuple(case.like) if case.like is not None else (None,) * len(outs)
    dcs = _as_tuple(case.dont_care) if case.dont_care is not None else (None,) * len(outs)
    for k, (o, e, lk, dc) in enumerate(zip(outs, exps, likes, dcs)):
        tag = f"output {k}: " if len(outs) > 1 else ""
        if tuple(o.shape) != tuple(e.shape):
            return f"{tag}shape {tuple(o.shape)} != {tuple(e.shape)}"
        if lk is not None:
            if o.dtype != lk.dtype or o.device != lk.device:
                return f"{tag}{o.dtype} on {o.device}, expected {lk.dtype} on {lk.device}"
            if o.numel() > 1 and o.stride() != lk.stride():
                return f"{tag}strides {o.stride()} != input's {lk.stride()} (layout not kept)"
        if o.numel() == 0:
            continue
        od = o.detach().double().cpu()
        err = (od - e).abs()
        allowed = case.tol * (case.scale + e.abs())
        bad = ~(err <= allowed)  # NaN in the output counts as bad
        if dc is not None:
            bad &= ~dc
        if bool(bad.any()):
            idx = int(torch.nonzero(bad.reshape(-1))[0])
            n = int(bad.sum())
            return (f"{tag}{n}/{o.numel()} elements off; first at flat index {idx}: got {od.reshape(-1)[idx]:.6g}, "
                    f"expected {e.reshape(-1)[idx]:.6g} (allowed +-{allowed.reshape(-1)[idx]:.3g}); "
                    f"max err {float(torch.nan_to_num(err, nan=float('inf')).max()):.3g}")
    return None


def _is_fatal_device_error(e: BaseException) -> bool:
    msg = str(e)
    return type(e).__name__ == "AcceleratorError" or "CUDA error" in msg or "illegal memory access" in msg \
        or "unspecified launch failure" in msg


def _required_ops(torch, device, impls):
    """vkernels::* ops with a kernel for this device that the selected impls must launch."""
    key = "CUDA" if device == "cuda" else "CPU"
    try:
        names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("vkernels::")]
    except AttributeError:  # not in this torch: skip the coverage check rather than fail
        return None
    req = set()
    for n in names:
        op = n.split("::", 1)[1]
        impl = "triton" if op.endswith("_triton") else ("cuda" if device == "cuda" else "cpu")
        if impl in impls and torch._C._dispatch_has_kernel_for_dispatch_key(n, key):
            req.add(op)
    return req


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="cuda (default when a GPU is visible) or cpu (C++ CPU kernels + Triton interpreter)")
    ap.add_argument("--impls", default=None, help="comma list: cuda,triton (cuda device) / cpu,triton (cpu device)")
    ap.add_argument("--scope", choices=("quick", "default", "full"), default="default")
    ap.add_argument("--ops", default=None, help="comma list of ops (default: every registered op)")
    ap.add_argument("--dtypes", default="float16,bfloat16,float32,float64")
    ap.add_argument("--max-seconds", type=float, default=0.0, help="stop starting new cases after this (exit 3)")
    ap.add_argument("--max-failures", type=int, default=25, help="stop after this many failures")
    ap.add_argument("--large", action="store_true",
                    help="add >2**31-element cases (CUDA only; ~13 GB of GPU memory; not under a sanitizer)")
    ap.add_argument("--no-fill", action="store_true",
                    help="don't NaN-fill new tensors (for initcheck, which must see uninitialized memory)")
    ap.add_argument("--shard", default="0/1", help="k/n: run only cases k, k+n, k+2n, ... (coverage check off)")
    ap.add_argument("--jobs", type=int, default=1, help="run --shard 0/N .. N-1/N in N parallel processes")
    ap.add_argument("--list", action="store_true", help="print the cases (no launches) and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = ap.parse_args(argv)

    t_start = time.time()
    if args.jobs > 1 and not args.list:
        return _run_jobs(args.jobs, sys.argv[1:] if argv is None else list(argv), args.max_seconds)
    shard_k, shard_n = (int(v) for v in args.shard.split("/"))
    if not 0 <= shard_k < shard_n:
        ap.error(f"--shard must be k/n with 0 <= k < n, got {args.shard}")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("smoke: no CUDA GPU visible; pass --device cpu for the CPU / Triton-interpreter run", flush=True)
        return 1
    if device == "cuda" and not torch.cuda.is_available():
        print("smoke: --device cuda but torch.cuda.is_available() is False", flush=True)
        return 1
    impls = tuple(s for s in (args.impls or ("cuda,triton" if device == "cuda" else "cpu,triton")).split(",") if s)
    if device == "cpu" and "triton" in impls and os.environ.get("TRITON_INTERPRET") != "1":
        # Must be set before vkernels defines its Triton kernels (i.e. before the import below).
        os.environ["TRITON_INTERPRET"] = "1"
    if os.environ.get("TRITON_INTERPRET") == "1":
        import warnings  # the interpreter evaluates both sides of tl.where in numpy (0/0 on the discarded side)

        for msg in ("invalid value encountered", "divide by zero encountered", "overflow encountered"):
            warnings.filterwarnings("ignore", message=msg, category=RuntimeWarning)
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # run as a script: don't let benchmarks/ shadow anything
    sys.path.insert(0, str(ROOT))  # the in-place build in this checkout, installed or not
    import vkernels
    from benchmarks._smoke import SmokeCtx
    from vkernels import _backend

    smokes = discover_smokes()

    dtypes = tuple(getattr(torch, d) for d in args.dtypes.split(",") if d)
    if args.large and device != "cuda":
        print("smoke: --large applies to --device cuda only; ignored", flush=True)
    wanted = sorted(_backend.OPS) if args.ops is None else [o for o in args.ops.split(",") if o]

    failures: list[str] = []
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"smoke: device {device} ({gpu}), impls {','.join(impls)}, scope {args.scope}, torch {torch.__version__}"
          f", triton {_triton_version()}, NaN-filled outputs {not args.no_fill}, PYTORCH_NO_CUDA_MEMORY_CACHING="
          f"{os.environ.get('PYTORCH_NO_CUDA_MEMORY_CACHING', '0')}, TRITON_INTERPRET="
          f"{os.environ.get('TRITON_INTERPRET', '0')}", flush=True)

    # Every requested impl must exist for this device; a GPU check that silently skips one proves nothing.
    for op in wanted:
        if op not in _backend.OPS:
            failures.append(f"{op}: not a registered vkernels op (known: {', '.join(sorted(_backend.OPS))})")
            continue
        avail = vkernels.available_impls(op, device)
        for impl in impls:
            if impl not in avail:
                failures.append(f"{op}: impl {impl} not available for {device} tensors (available: "
                                f"{', '.join(avail)}); see python -m vkernels info")
        if op not in smokes:
            failures.append(f"{op}: no smoke_{op}() in any benchmarks/bench_*.py: its kernels are never launched "
                            "here")
    impls_ok = {op: tuple(i for i in impls if op in _backend.OPS and i in vkernels.available_impls(op, device))
                for op in wanted}

    if not args.no_fill:
        # NaN-filled empty tensors (outputs included): an element no kernel wrote fails the comparison.
        torch.use_deterministic_algorithms(True, warn_only=True)
        import torch.utils.deterministic

        torch.utils.deterministic.fill_uninitialized_memory = True
    launched: set[str] = set()
    n_cases = n_ok = 0
    n_seen = -1
    stopped = None
    groups: dict[tuple, list] = {}  # (op, impl, dtype) -> [cases, ok, seconds]
    for op in wanted:
        if op not in smokes or not impls_ok.get(op):
            continue
        sub = SmokeCtx(torch, device, impls_ok[op], args.scope, dtypes, args.large)
        it = smokes[op](sub)
        while True:
            if args.max_seconds and time.time() - t_start > args.max_seconds:
                stopped = f"--max-seconds {args.max_seconds:g} reached"
                break
            if len(failures) >= args.max_failures:
                stopped = f"{len(failures)} failures (--max-failures)"
                break
            t0 = time.time()
            try:
                case = next(it)
            except StopIteration:
                break
            except Exception as e:  # a bug in the smoke function itself
                failures.append(f"{op}: building cases raised {type(e).__name__}: {e}")
                break
            n_seen += 1
            if n_seen % shard_n != shard_k:
                continue
            if args.list:
                print(case.name)
                continue
            n_cases += 1
            parts = case.name.split("/")
            gkey = tuple(parts[:3])
            grp = groups.setdefault(gkey, [0, 0, 0.0])
            grp[0] += 1
            try:
                launched.add(case.op)
                cargs = case.args() if callable(case.args) else case.args
                out = getattr(torch.ops.vkernels, case.op)(*cargs)
                del cargs  # free large inputs before the next case
                if device == "cuda":
                    torch.cuda.synchronize()
                why = _check(torch, case, out)
                out = None  # free (large) outputs before the next case
            except Exception as e:
                why = f"raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                if _is_fatal_device_error(e):
                    failures.append(f"{case.name}: {why}")
                    stopped = "device error: the CUDA context is unusable after it"
                    print(f"FAIL {case.name}: {why}", flush=True)
                    break
            grp[2] += time.time() - t0
            if why is None:
                n_ok += 1
                grp[1] += 1
                if args.verbose:
                    print(f"ok   {case.name}", flush=True)
            else:
                failures.append(f"{case.name}: {why}")
                print(f"FAIL {case.name}: {why}", flush=True)
        if stopped:
            break
    if args.list:
        return 0

    for (op, impl, dn), (n, ok, secs) in groups.items():
        print(f"  {op:<12} {impl:<7} {dn:<9} {ok:>4}/{n:<4} ok  {secs:6.1f} s", flush=True)

    if stopped is None and args.ops is None and shard_n == 1:
        req = _required_ops(torch, device, impls)
        if req is None:
            print("smoke: coverage check skipped (torch._C._dispatch_get_all_op_names missing)")
        else:
            for op in sorted(req - launched):
                failures.append(f"vkernels::{op} has a {device} kernel but no smoke case launched it")

    dt = time.time() - t_start
    status = "FAIL" if failures else ("INCOMPLETE" if stopped else "PASS")
    shard = f" (shard {shard_k}/{shard_n})" if shard_n > 1 else ""
    print(f"smoke{shard}: {status}: {n_ok}/{n_cases} cases ok, {len(failures)} failures, ops launched: "
          f"{', '.join(sorted(launched)) or 'none'}; {dt:.1f} s" + (f"; stopped early: {stopped}" if stopped else ""),
          flush=True)
    for f in failures[:10]:
        print(f"  - {f}", flush=True)
    if failures:
        return 1
    return 3 if stopped else 0


def _run_jobs(jobs: int, argv: list, max_seconds: float = 0.0) -> int:
    """Run this script as `jobs` shards in parallel; print each shard's output in order; worst exit status wins.
    With max_seconds, shards still running 10 s past it (e.g. stuck importing on a busy machine) are stopped."""
    import subprocess
    import tempfile

    rest, skip = [], False
    for a in argv:  # drop --jobs N / --jobs=N / --shard from the children's arguments
        if skip:
            skip = False
            continue
        if a in ("--jobs", "--shard"):
            skip = True
            continue
        if a.startswith(("--jobs=", "--shard=")):
            continue
        rest.append(a)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        logs = [open(Path(tmp) / f"shard{k}.log", "w+") for k in range(jobs)]
        procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *rest, "--shard", f"{k}/{jobs}"],
                                  stdout=logs[k], stderr=subprocess.STDOUT, text=True) for k in range(jobs)]
        rcs = []
        for k, p in enumerate(procs):
            try:
                left = max(1.0, t0 + max_seconds + 10 - time.time()) if max_seconds else None
                p.wait(timeout=left)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                logs[k].write("\nsmoke: shard stopped by the parent: past --max-seconds\n")
            rcs.append(3 if p.returncode < 0 else p.returncode)  # killed: incomplete, not failed
            logs[k].flush()
            logs[k].seek(0)
            print(f"--- shard {k}/{jobs}: exit {p.returncode}", flush=True)
            print(logs[k].read().rstrip(), flush=True)
            logs[k].close()
    rc = 1 if any(r not in (0, 3) for r in rcs) else (3 if 3 in rcs else 0)
    print(f"smoke: {jobs} shards, exit statuses {rcs}: {'PASS' if rc == 0 else 'FAIL' if rc == 1 else 'INCOMPLETE'}"
          f"; {time.time() - t0:.1f} s (the coverage check runs only unsharded)", flush=True)
    return rc


def _triton_version():
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001 - absent or broken: report, don't fail
        return "none"


if __name__ == "__main__":
    sys.exit(main())
