"""python -m benchmarks [--device cpu|cuda] [--ops bias_act,...] [--cases 2048,...] [--quick] [--out DIR] [--repeats N]

Finds every benchmarks/bench_<op>.py, runs its cases (see benchmarks/__init__.py), prints one table row per
case x provider, writes DIR/results.csv and DIR/results.json and draws DIR/<op>.png. Exits 1 if any case failed its
correctness check (the other cases still run).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import torch

import benchmarks
from benchmarks import _harness as H

COLS = [  # (header, row field, format); ratios are only meaningful when read within one run
    ("size", "size", "{}"), ("dtype", "dtype", "{}"), ("provider", "provider", "{}"),
    ("median_ms", "median_ms", "{:.3f}"), ("p20_ms", "p20_ms", "{:.3f}"), ("p80_ms", "p80_ms", "{:.3f}"),
    ("peak_MB", "peak_mem_bytes", "{:.4g}"), ("GB/s", "gbps", "{:.1f}"), ("%copy", "frac_copy_bw", "{:.0%}"),
    ("x_clone", "ratio_vs_clone", "{:.2f}"), ("vs_eager", "speedup_vs_eager", "{:.2f}"),
    ("vs_compile", "speedup_vs_compile", "{:.2f}"),
]
WIDTH = [16, 9, 16, 10, 9, 9, 8, 7, 6, 8, 9, 10]


def discover(ops: list[str] | None) -> dict:
    """op name -> bench module, from the bench_<op>.py files next to this one; in --ops order when given (a time-capped
    run, e.g. gpu_check.sh's, then measures the ops that matter most first)."""
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__)
                   if m.name.startswith("bench_"))
    unknown = set(ops or []) - set(names)
    if unknown:
        raise SystemExit(f"--ops: no benchmark for {', '.join(sorted(unknown))} (have: {', '.join(names)})")
    return {op: importlib.import_module(f"benchmarks.bench_{op}") for op in (dict.fromkeys(ops) if ops else names)}


def fmt_row(r: dict) -> str:
    cells = []
    for (_, key, f), w in zip(COLS, WIDTH):
        v = r.get(key)
        if key == "peak_mem_bytes" and v is not None:
            v = v / 2**20
        cells.append(("-" if v is None else f.format(v)).rjust(w) if key not in ("size", "dtype", "provider")
                     else str(v).ljust(w))
    return " ".join(cells)


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=H.FIELDS)
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r[k]) for k in H.FIELDS} for r in rows)
    with open(out / "results.json", "w") as f:
        json.dump([{k: r.get(k) for k in H.FIELDS} for r in rows], f, indent=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    ap.add_argument("--ops", help="comma-separated op names, run in this order (default: every bench_<op>.py)")
    ap.add_argument("--cases", help="comma-separated substrings: run only the cases whose size label contains one "
                    "(e.g. --cases 2048x14 for one shape of a slow op)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run, not a measurement")
    ap.add_argument("--out", default="bench-out", help="folder for results.csv, results.json, <op>.png")
    ap.add_argument("--repeats", type=int, help="timed calls per provider (default: adapted to each call's cost)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU here")
    mods = discover(args.ops.split(",") if args.ops else None)
    env = H.env_info(device)
    print(f"# vkernels benchmarks on {env['device']}; torch {env['torch_version']}, triton "
          f"{env['triton_version'] or '-'}, commit {env['commit']}{', QUICK (smoke only)' if args.quick else ''}")

    H.log("measuring machine ceilings ...")
    rows, ceil = H.measure_ceilings(device, args.quick, args.repeats)
    for r in rows:
        rate = f"{r['gbps']:.1f} GB/s (read + write)" if r["gbps"] else f"{r['tflops']:.3f} TFLOP/s"
        print(f"# {r['provider']:<15} {r['size']:>7} {r['dtype']:<9} {r['median_ms']:9.3f} ms  {rate}")

    failed = []
    for op, mod in mods.items():
        print(f"\n## {op}\n" + " ".join(h.rjust(w) if i > 2 else h.ljust(w)
                                       for i, ((h, _, _), w) in enumerate(zip(COLS, WIDTH))))
        cases = mod.cases(device, args.quick)
        if args.cases:
            keep = [c for c in args.cases.split(",") if c]
            cases = [c for c in cases if any(k in c.size for k in keep)]
        while cases:
            case = cases.pop(0)  # drop each case's inputs once it is done (GBs at full size)
            name = f"{case.op} {case.size} {H.dtype_name(case.dtype)}"
            H.log(f"  {name} ...")
            try:
                case_rows = H.run_case(case, device, args.quick, args.repeats, ceil)
            except H.CaseError as e:
                failed.append(name)
                msg = f"!!! FAILED {name}: {e}"
                print(msg)
                H.log(msg)
                continue
            for r in case_rows:
                print(fmt_row(r))
            for line in H.evaluate_targets(case, case_rows):
                print(f"  {line}")
            rows += case_rows
            # Written after every case too: a run cut short (a GPU lease's time limit) still leaves its rows.
            write([{**r, **env} for r in rows], Path(args.out))

    rows = [{**r, **env} for r in rows]
    out = Path(args.out)
    write(rows, out)
    print(f"\nwrote {out / 'results.csv'} and {out / 'results.json'} ({len(rows)} rows)")
    if not args.no_plot:
        try:
            from benchmarks import plot
            for p in plot.plot(out / "results.csv"):
                print(f"wrote {p}")
        except ImportError as e:  # matplotlib missing: the numbers matter more than the pictures
            print(f"no plots: {e}")
    if failed:
        print(f"\n!!! {len(failed)} case(s) FAILED the correctness check: {'; '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
