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
from dataclasses import dataclass, field
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
    """The smoke run; returns the exit status (module docstring)."""
    # Arguments.
    ap = _parser()
    args = ap.parse_args(argv)
    t_start = time.time()
    if args.jobs > 1 and not args.list:
        return _run_jobs(args.jobs, sys.argv[1:] if argv is None else list(argv), args.max_seconds)
    shard = tuple(int(v) for v in args.shard.split("/"))
    if not 0 <= shard[0] < shard[1]:
        ap.error(f"--shard must be k/n with 0 <= k < n, got {args.shard}")
    import torch

    # Where to run; vkernels imported only once TRITON_INTERPRET is settled.
    device = _pick_device(torch, args.device)
    if device is None:
        return 1
    impls = tuple(s for s in (args.impls or ("cuda,triton" if device == "cuda" else "cpu,triton")).split(",") if s)
    _set_up_triton_interpreter(device, impls)
    _import_from_this_checkout()
    import vkernels
    from benchmarks._smoke import SmokeCtx
    from vkernels import _backend

    # What to run: every op's smoke generator, the impls each op has.
    smokes = discover_smokes()
    dtypes = tuple(getattr(torch, d) for d in args.dtypes.split(",") if d)
    if args.large and device != "cuda":
        print("smoke: --large applies to --device cuda only; ignored", flush=True)
    wanted = sorted(_backend.OPS) if args.ops is None else [o for o in args.ops.split(",") if o]
    _print_header(torch, device, impls, args)
    failures: list[str] = []
    impls_ok = _select_impls(vkernels, _backend.OPS, wanted, impls, device, smokes, failures)
    if not args.no_fill:
        _nan_fill_new_tensors(torch)
    # Run, then report.
    tally = _Tally()
    for op in wanted:
        if op not in smokes or not impls_ok.get(op):
            continue
        ctx = SmokeCtx(torch, device, impls_ok[op], args.scope, dtypes, args.large)
        _run_op_cases(torch, op, smokes[op](ctx), device, args, shard, t_start, failures, tally)
        if tally.stopped:
            break
    if args.list:
        return 0
    return _report(torch, tally, failures, device, impls, args, shard, t_start)


def _parser() -> argparse.ArgumentParser:
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
    return ap


# ------------------------------------------------------------------------------------------------------------ setup
def _pick_device(torch, asked: str | None) -> str | None:
    """--device, or cuda when a GPU is visible; None (said why) when there is nothing to run on."""
    device = asked or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("smoke: no CUDA GPU visible; pass --device cpu for the CPU / Triton-interpreter run", flush=True)
    elif device == "cuda" and not torch.cuda.is_available():
        print("smoke: --device cuda but torch.cuda.is_available() is False", flush=True)
        return None
    return device


def _set_up_triton_interpreter(device: str, impls: tuple) -> None:
    if device == "cpu" and "triton" in impls and os.environ.get("TRITON_INTERPRET") != "1":
        # Must be set before vkernels defines its Triton kernels (i.e. before main imports it).
        os.environ["TRITON_INTERPRET"] = "1"
    if os.environ.get("TRITON_INTERPRET") == "1":
        import warnings  # the interpreter evaluates both sides of tl.where in numpy (0/0 on the discarded side)

        for msg in ("invalid value encountered", "divide by zero encountered", "overflow encountered"):
            warnings.filterwarnings("ignore", message=msg, category=RuntimeWarning)


def _import_from_this_checkout() -> None:
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # run as a script: don't let benchmarks/ shadow anything
    sys.path.insert(0, str(ROOT))  # the in-place build in this checkout, installed or not


def _print_header(torch, device: str, impls: tuple, args) -> None:
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"smoke: device {device} ({gpu}), impls {','.join(impls)}, scope {args.scope}, torch {torch.__version__}"
          f", triton {_triton_version()}, NaN-filled outputs {not args.no_fill}, PYTORCH_NO_CUDA_MEMORY_CACHING="
          f"{os.environ.get('PYTORCH_NO_CUDA_MEMORY_CACHING', '0')}, TRITON_INTERPRET="
          f"{os.environ.get('TRITON_INTERPRET', '0')}", flush=True)


def _select_impls(vkernels, ops: dict, wanted: list, impls: tuple, device: str, smokes: dict, failures: list) -> dict:
    """op -> the requested impls it has on this device. Every requested impl must exist for this device (a GPU check
    that silently skips one proves nothing) and every registered op (`ops`) must have a smoke function: failures
    otherwise."""
    for op in wanted:
        if op not in ops:
            failures.append(f"{op}: not a registered vkernels op (known: {', '.join(sorted(ops))})")
            continue
        avail = vkernels.available_impls(op, device)
        for impl in impls:
            if impl not in avail:
                failures.append(f"{op}: impl {impl} not available for {device} tensors (available: "
                                f"{', '.join(avail)}); see python -m vkernels info")
        if op not in smokes:
            failures.append(f"{op}: no smoke_{op}() in any benchmarks/bench_*.py: its kernels are never launched "
                            "here")
    return {op: tuple(i for i in impls if op in ops and i in vkernels.available_impls(op, device)) for op in wanted}


def _nan_fill_new_tensors(torch) -> None:
    # NaN-filled empty tensors (outputs included): an element no kernel wrote fails the comparison.
    torch.use_deterministic_algorithms(True, warn_only=True)
    import torch.utils.deterministic

    torch.utils.deterministic.fill_uninitialized_memory = True


# -------------------------------------------------------------------------------------------------------------- run
@dataclass
class _Tally:
    """What the run counts: cases run and passed, raw ops launched, [cases, ok, seconds] per (op, impl, dtype),
    and why it stopped early (None: it did not)."""
    launched: set = field(default_factory=set)
    n_cases: int = 0
    n_ok: int = 0
    n_seen: int = -1
    stopped: str | None = None
    groups: dict = field(default_factory=dict)


def _run_op_cases(torch, op: str, cases, device: str, args, shard: tuple, t_start: float, failures: list,
                  tally: _Tally) -> None:
    """Build, launch and check this shard's cases of one op's smoke generator (--list: print their names)."""
    while True:
        tally.stopped = _stop_reason(args, t_start, failures)
        if tally.stopped:
            return
        t0 = time.time()
        try:
            case = next(cases)
        except StopIteration:
            return
        except Exception as e:  # a bug in the smoke function itself
            failures.append(f"{op}: building cases raised {type(e).__name__}: {e}")
            return
        tally.n_seen += 1
        if tally.n_seen % shard[1] != shard[0]:
            continue
        if args.list:
            print(case.name)
            continue
        tally.n_cases += 1
        grp = tally.groups.setdefault(tuple(case.name.split("/")[:3]), [0, 0, 0.0])
        grp[0] += 1
        tally.launched.add(case.op)
        why, fatal = _launch_and_check(torch, case, device)
        if fatal:
            failures.append(f"{case.name}: {why}")
            tally.stopped = "device error: the CUDA context is unusable after it"
            print(f"FAIL {case.name}: {why}", flush=True)
            return
        grp[2] += time.time() - t0
        if why is None:
            tally.n_ok += 1
            grp[1] += 1
            if args.verbose:
                print(f"ok   {case.name}", flush=True)
        else:
            failures.append(f"{case.name}: {why}")
            print(f"FAIL {case.name}: {why}", flush=True)


def _stop_reason(args, t_start: float, failures: list) -> str | None:
    if args.max_seconds and time.time() - t_start > args.max_seconds:
        return f"--max-seconds {args.max_seconds:g} reached"
    if len(failures) >= args.max_failures:
        return f"{len(failures)} failures (--max-failures)"
    return None


def _launch_and_check(torch, case, device: str) -> tuple[str | None, bool]:
    """Launch the case's raw op, wait for it, compare: (None or why it failed, whether the CUDA context is lost).
    Inputs and outputs go out of scope on return, so large ones are freed before the next case."""
    try:
        cargs = case.args() if callable(case.args) else case.args
        out = getattr(torch.ops.vkernels, case.op)(*cargs)
        del cargs
        if device == "cuda":
            torch.cuda.synchronize()
        return _check(torch, case, out), False
    except Exception as e:
        why = f"raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return why, _is_fatal_device_error(e)


# ----------------------------------------------------------------------------------------------------------- report
def _report(torch, tally: _Tally, failures: list, device: str, impls: tuple, args, shard: tuple,
            t_start: float) -> int:
    """Print a line per (op, impl, dtype), the coverage check's findings and the verdict; the exit status."""
    for (op, impl, dn), (n, ok, secs) in tally.groups.items():
        print(f"  {op:<12} {impl:<7} {dn:<9} {ok:>4}/{n:<4} ok  {secs:6.1f} s", flush=True)
    if tally.stopped is None and args.ops is None and shard[1] == 1:
        _check_coverage(torch, device, impls, tally.launched, failures)
    dt = time.time() - t_start
    status = "FAIL" if failures else ("INCOMPLETE" if tally.stopped else "PASS")
    sharded = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(f"smoke{sharded}: {status}: {tally.n_ok}/{tally.n_cases} cases ok, {len(failures)} failures, ops launched: "
          f"{', '.join(sorted(tally.launched)) or 'none'}; {dt:.1f} s"
          + (f"; stopped early: {tally.stopped}" if tally.stopped else ""), flush=True)
    for f in failures[:10]:
        print(f"  - {f}", flush=True)
    if failures:
        return 1
    return 3 if tally.stopped else 0


def _check_coverage(torch, device: str, impls: tuple, launched: set, failures: list) -> None:
    """A failure for every raw op with a kernel for this device that no case launched."""
    req = _required_ops(torch, device, impls)
    if req is None:
        print("smoke: coverage check skipped (torch._C._dispatch_get_all_op_names missing)")
        return
    for op in sorted(req - launched):
        failures.append(f"vkernels::{op} has a {device} kernel but no smoke case launched it")


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
