"""python -m benchmarks [--full] [--device cpu|cuda] [--ops bias_act,...] [--cases 2048,...] [--quick] [--out DIR]

By default runs one headline case per op (benchmarks/targets.py HEADLINE: the size a goal names); --full runs every
case. Finds every benchmarks/bench_<op>.py, runs its cases (see benchmarks/__init__.py), prints one table per case
(a row per provider), writes DIR/results.csv, DIR/results.json, DIR/<op>.png, and ends with the verdict: one row per
op and the goals met / missed (DIR/summary.md, DIR/summary.png). Exits 1 if any case failed its correctness check
(the other cases still run).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import pkgutil
import re
import sys
import time
from pathlib import Path

import torch

import benchmarks
from benchmarks import _harness as H
from benchmarks import targets as T
from benchmarks.providers import describe


def discover(ops: list[str] | None) -> dict:
    """op name -> bench module, from the bench_<op>.py files next to this one; in --ops order when given (a time-capped
    run, e.g. gpu_check's, then measures the ops that matter most first)."""
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__)
                   if m.name.startswith("bench_"))
    unknown = set(ops or []) - set(names)
    if unknown:
        raise SystemExit(f"--ops: no benchmark for {', '.join(sorted(unknown))} (have: {', '.join(names)})")
    return {op: importlib.import_module(f"benchmarks.bench_{op}") for op in (dict.fromkeys(ops) if ops else names)}


def select(op: str, cases: list, device: str, full: bool, keep: list[str] | None) -> list:
    """The cases to run: --cases substrings when given, every case with --full, else the op's headline case."""
    if keep:
        return [c for c in cases if any(k in c.size for k in keep)]
    if full or not cases:
        return cases
    pattern = T.headline(op, device)
    hit = [c for c in cases if pattern and re.search(pattern, c.size)]
    return hit[:1] or cases[:1]


def count_cases(mods: dict, device: str, quick: bool, full: bool, keep: list[str] | None) -> dict[str, int]:
    """How many cases each op will run, without allocating their inputs (cases() under a fake-tensor mode), so the
    progress line can say "case 12/40" from the start. An op whose cases() cannot run fake counts as unknown (0)."""
    if not full and not keep:
        return dict.fromkeys(mods, 1)
    from torch._subclasses.fake_tensor import FakeTensorMode

    out = {}
    for op, mod in mods.items():
        try:
            with FakeTensorMode(allow_non_fake_inputs=True):
                out[op] = len(select(op, mod.cases(device, quick), device, full, keep))
        except Exception:  # noqa: BLE001 - only the progress total depends on it
            out[op] = 0
    return out


# ---------------------------------------------------------------------------------------------------------- table
def columns(bound: str) -> list[tuple[str, str, str, int]]:
    """(header, row field, format, width). Roofline columns only where they mean something: bytes for a
    memory-bound case, FLOPs for a compute-bound one."""
    roof = ([("GB/s", "gbps", "{:.1f}", 7), ("%copy", "frac_copy_bw", "{:.0%}", 6)] if bound == "memory" else
            [("GFLOP/s", "tflops", "{:.1f}", 8), ("%GEMM", "frac_matmul", "{:.0%}", 6)])
    return [("provider", "provider", "{}", 21), ("median_ms", "median_ms", "{:.3f}", 10), ("p20_ms", "p20_ms", "{:.3f}", 9),
            ("p80_ms", "p80_ms", "{:.3f}", 9), ("peak_MB", "peak_mem_bytes", "{:.3g}", 8), *roof,
            ("vs_floor", "ratio_vs_floor", "{:.2f}", 8), ("vs_eager", "speedup_vs_eager", "{:.2f}", 8),
            ("vs_compile", "speedup_vs_compile", "{:.2f}", 10)]


def header(bound: str) -> str:
    return " ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, _, _, w) in enumerate(columns(bound)))


def fmt_row(r: dict) -> str:
    cells = []
    for i, (_, key, f, w) in enumerate(columns(r["bound"])):
        v = r.get(key)
        if v is not None and key == "peak_mem_bytes":
            v = v / 2**20
        if v is not None and key == "tflops":
            v = v * 1e3  # shown as GFLOP/s
        cells.append(str(v).ljust(w) if i == 0 else ("-" if v is None else f.format(v)).rjust(w))
    return " ".join(cells)


def legend(providers: list[str]) -> list[str]:
    """One line per provider seen for the op: what it is."""
    return [f"  {p:<21} {describe(p)}" for p in providers]


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=H.FIELDS)
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r[k]) for k in H.FIELDS} for r in rows)
    with open(out / "results.json", "w") as f:
        json.dump([{k: r.get(k) for k in H.FIELDS} for r in rows], f, indent=1)


# ------------------------------------------------------------------------------------------------------- progress
class CaseProgress:
    """`[case 12/40 · op 3/13] elapsed 2m10s, eta ~4m  <case>` on stderr: a tqdm bar redrawn in place on a terminal,
    one line per case otherwise (logs, CI)."""

    FMT = "[case {n_fmt}/{total_fmt} · op OP] elapsed {elapsed}, eta ~{remaining}"

    def __init__(self, total: int, n_ops: int):
        from tqdm import tqdm

        self.tqdm, self.n_ops, self.t0, self.n = tqdm, n_ops, time.perf_counter(), 0
        self.lines: list[str] = []  # the tables as printed, for DIR/table.txt
        self.total = total or None
        self.bar = tqdm(total=self.total, file=sys.stderr, bar_format=self._fmt(0) + "  {desc}",
                        dynamic_ncols=True) if sys.stderr.isatty() else None

    def _fmt(self, op_index: int) -> str:
        return self.FMT.replace("OP", f"{op_index}/{self.n_ops}")

    def start(self, op_index: int, name: str) -> None:
        if self.bar is not None:
            self.bar.bar_format = self._fmt(op_index) + "  {desc}"
            self.bar.set_description_str(name)
            return
        line = self.tqdm.format_meter(self.n, self.total, time.perf_counter() - self.t0,
                                      bar_format=self._fmt(op_index))
        print(f"{line}  {name}", file=sys.stderr, flush=True)

    def done(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def add_total(self, n: int) -> None:
        """An op whose case count was unknown up front reports it when it starts."""
        self.total = (self.total or 0) + n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def echo(self, text: str) -> None:
        """Print a table line to stdout without tearing the progress bar."""
        self.lines.append(text)
        if self.bar is not None:
            self.tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.t0


# ----------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    ap.add_argument("--full", action="store_true", help="every case of every op (default: one headline case per op)")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    ap.add_argument("--ops", help="comma-separated op names, run in this order (default: every bench_<op>.py)")
    ap.add_argument("--cases", help="comma-separated substrings: run only the cases whose size label contains one "
                    "(e.g. --cases 2048x14 for one shape of a slow op); implies every matching case")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run, not a measurement")
    ap.add_argument("--out", default="bench-out", help="folder for results.csv/json, <op>.png, summary.md/png")
    ap.add_argument("--repeats", type=int, help="timed calls per provider (default: adapted to each call's cost)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    args = ap.parse_args(argv)
    H.quiet_torch_logs()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU here")
    mods = discover(args.ops.split(",") if args.ops else None)
    keep = [c for c in args.cases.split(",") if c] if args.cases else None
    env = H.env_info(device)
    scope = "every case" if args.full else ("--cases " + args.cases if keep else "one headline case per op")
    print(f"# vkernels benchmarks on {env['device']}; torch {env['torch_version']}, triton "
          f"{env['triton_version'] or '-'}, commit {env['commit']}; {scope}"
          f"{', QUICK (smoke only)' if args.quick else ''}")

    rows, ceil = H.measure_ceilings(device, args.quick, args.repeats)
    for r in rows:
        rate = f"{r['gbps']:.1f} GB/s (read + write)" if r["gbps"] else f"{r['tflops'] * 1e3:.1f} GFLOP/s"
        print(f"# machine ceiling {r['provider']:<15} {r['size']:>7} {r['dtype']:<9} {r['median_ms']:9.3f} ms  {rate}")

    counts = count_cases(mods, device, args.quick, args.full, keep)
    progress = CaseProgress(sum(counts.values()), len(mods))
    failed, goals = [], []
    for op_index, (op, mod) in enumerate(mods.items(), 1):
        cases = select(op, mod.cases(device, args.quick), device, args.full, keep)
        if not counts[op]:
            progress.add_total(len(cases))
        progress.echo(f"\n## {op}")
        seen = []
        while cases:
            case = cases.pop(0)  # drop each case's inputs once it is done (GBs at full size)
            name = f"{case.op} {case.size} {H.dtype_name(case.dtype)}"
            progress.start(op_index, name)
            progress.echo(f"### {case.size}  {H.dtype_name(case.dtype)}  ({case.bound}-bound)\n{header(case.bound)}")
            try:
                case_rows = H.run_case(case, device, args.quick, args.repeats, ceil)
            except H.CaseError as e:
                failed.append(name)
                progress.echo(f"!!! FAILED {name}: {e}")
                progress.done()
                continue
            for r in case_rows:
                progress.echo(fmt_row(r))
            seen += [r["provider"] for r in case_rows if r["provider"] not in seen]
            for g in H.evaluate_targets(case, case_rows, device):
                goals.append(g)
                state = "MET" if g["met"] else ("MISSED" if g["met"] is not None else "n/a")
                val = "-" if g["value"] is None else f"{g['value']:.3g}"
                progress.echo(f"  goal {g['provider']}: {g['goal']}: {state} ({val})")
            rows += case_rows
            progress.done()
            # Written after every case too: a run cut short (a GPU lease's time limit) still leaves its rows.
            write([{**r, **env} for r in rows], Path(args.out))
        if seen:
            progress.echo("providers:\n" + "\n".join(legend(seen)))
    elapsed = progress.close()

    rows = [{**r, **env} for r in rows]
    out = Path(args.out)
    write(rows, out)
    with open(out / "goals.json", "w") as f:
        json.dump(goals, f, indent=1)
    (out / "table.txt").write_text("\n".join(progress.lines).lstrip("\n") + "\n")
    written = [out / "results.csv", out / "results.json", out / "table.txt"]
    if not args.no_plot:
        try:
            from benchmarks import plot
            written += plot.plot(out / "results.csv")
        except ImportError as e:  # matplotlib missing: the numbers matter more than the pictures
            print(f"no plots: {e}")
    from benchmarks import summary
    text, paths = summary.write(rows, goals, device, out, plots=not args.no_plot)
    written += paths
    print(f"\nwrote {', '.join(str(p) for p in written)} ({len(rows)} rows) in {_duration(elapsed)}")
    print("\n" + text)
    if failed:
        print(f"\n!!! {len(failed)} case(s) FAILED the correctness check: {'; '.join(failed)}")
        return 1
    return 0


def _duration(sec: float) -> str:
    m, s = divmod(int(sec), 60)
    return f"{m}m{s:02d}s" if m else f"{sec:.1f}s"


if __name__ == "__main__":
    sys.exit(main())
