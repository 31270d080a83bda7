"""The verdict of a benchmark run: one row per op and the goals met / missed (benchmarks/targets.py).

Per op it reads the op's headline case (or, when that did not run, its first case): vkernels' provider (what
impl="auto" runs on the device) against eager and torch.compile of the reference, the fraction of the case's floor
reached (floor time / our time: 100% = as fast as allocating and writing the output, or as the op's GEMMs alone), and
peak memory against eager. Written to DIR/summary.md and DIR/summary.png and printed.

    python -m benchmarks.summary bench-out        (redraw from results.csv + goals.json; needs matplotlib only)
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path

from benchmarks import targets as T

OURS = {"cpu": ("vkernels-cpu",), "cuda": ("vkernels-cuda", "vkernels-triton")}


def _f(v) -> float | None:
    if v in (None, ""):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def verdict_rows(rows: list[dict], device: str) -> list[dict]:
    """One dict per op: case, provider, ms, speedups, floor fraction, peak ratio."""
    out = []
    by_op: dict[str, list[dict]] = {}
    for r in rows:
        if r["op"] != "machine":
            by_op.setdefault(r["op"], []).append(r)
    for op, op_rows in by_op.items():
        sizes = list(dict.fromkeys((r["size"], r["dtype"]) for r in op_rows))
        pattern = T.headline(op, device)
        pick = next((s for s in sizes if pattern and re.search(pattern, s[0])), sizes[0])
        case = [r for r in op_rows if (r["size"], r["dtype"]) == pick]
        by = {r["provider"]: r for r in case}
        ours = next((by[p] for p in OURS.get(device, ()) if p in by), None)
        if ours is None:
            continue
        floor = next((r for r in case if r["provider"].startswith("floor-")), None)
        ms = _f(ours["median_ms"])
        out.append(dict(op=op, size=pick[0], dtype=pick[1], provider=ours["provider"], ms=ms,
                        vs_eager=_f(ours["speedup_vs_eager"]), vs_compile=_f(ours["speedup_vs_compile"]),
                        floor=floor["provider"][len("floor-"):] if floor else None,
                        frac_floor=_f(floor["median_ms"]) / ms if floor and ms else None,
                        peak_vs_eager=_f(ours.get("peak_vs_eager"))))
    return out


def _x(v, fmt="{:.2f}x") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(vrows: list[dict], goals: list[dict], device: str, env: dict) -> str:
    lines = [f"# Benchmark verdict: {env.get('device', device)}, commit {env.get('commit', '?')}", "",
             "One row per op: its headline case, vkernels (what `auto` runs) against the plain-PyTorch reference run "
             "eagerly and under torch.compile; floor = x.clone() of the output (memory-bound) or the op's GEMMs alone "
             "(compute-bound), as a fraction reached (100% = as fast as the floor); peak = our peak memory over "
             "eager's (lower is better).", "",
             "| op | case | ours ms | vs eager | vs compile | of floor | peak vs eager |",
             "|---|---|---|---|---|---|---|"]
    for v in vrows:
        floor = "-" if v["frac_floor"] is None else f"{v['frac_floor']:.0%} ({v['floor']})"
        lines.append(f"| {v['op']} | {v['size']} {v['dtype']} | {v['ms']:.4g} | {_x(v['vs_eager'])} | "
                     f"{_x(v['vs_compile'])} | {floor} | {_x(v['peak_vs_eager'])} |")
    judged = [g for g in goals if g["met"] is not None]
    missed = [g for g in judged if not g["met"]]
    lines += ["", f"Goals (benchmarks/targets.py), over the cases that ran: {len(judged) - len(missed)} met, "
              f"{len(missed)} missed."]
    for g in missed:
        lines.append(f"- MISSED {g['op']} {g['size']} {g['dtype']} {g['provider']}: {g['goal']} "
                     f"(got {g['value']:.3g}) — {g['source']}")
    return "\n".join(lines) + "\n"


def draw(vrows: list[dict], goals: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [v["op"] for v in vrows][::-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.45 * len(ops) + 2.2), layout="constrained",
                                   gridspec_kw={"width_ratios": [3, 2]})
    y = range(len(ops))
    h = 0.38
    vs_e = [v["vs_eager"] or 0 for v in vrows][::-1]
    vs_c = [v["vs_compile"] or 0 for v in vrows][::-1]
    b1 = ax1.barh([i + h / 2 for i in y], vs_e, h, color="#9e9e9e", label="vs eager")
    b2 = ax1.barh([i - h / 2 for i in y], vs_c, h, color="#1f77b4", label="vs torch.compile")
    ax1.set_xscale("log")
    ax1.axvline(1, color="k", lw=1)
    ax1.bar_label(b2, labels=[f"{c:.2f}x" if c else "" for c in vs_c], padding=3, fontsize=8)
    ax1.bar_label(b1, labels=[f"{e:.2g}x" if e else "" for e in vs_e], padding=3, fontsize=7, color="#555555")
    ax1.set_yticks(list(y), ops)
    ax1.set_xlabel("speedup of vkernels (log scale; > 1 = faster)")
    ax1.legend(loc="lower right", fontsize=8)
    lo, hi = min([x for x in vs_e + vs_c if x] or [1]), max(vs_e + vs_c + [1])
    ax1.set_xlim(min(lo, 1) / 1.5, hi * 2.5)
    frac = [v["frac_floor"] or 0 for v in vrows][::-1]
    b3 = ax2.barh(list(y), frac, 0.6, color="#2ca02c")
    ax2.bar_label(b3, labels=[f"{f:.0%} of {v['floor']}" if f else "no floor"
                              for f, v in zip(frac, vrows[::-1])], padding=3, fontsize=8)
    ax2.axvline(1, color="k", lw=1, ls="--")
    ax2.set_yticks(list(y), [""] * len(ops))
    ax2.set_xlim(0, max(frac + [1]) * 1.45)
    ax2.set_xlabel("fraction of the floor reached (floor time / our time)")
    judged = [g for g in goals if g["met"] is not None]
    missed = sum(1 for g in judged if not g["met"])
    fig.suptitle(f"{title}\ngoals: {len(judged) - missed} met, {missed} missed (see summary.md)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(rows: list[dict], goals: list[dict], device: str, out: Path, plots: bool = True) -> tuple[str, list[Path]]:
    env = next((r for r in rows if r.get("commit")), {})
    vrows = verdict_rows(rows, device)
    text = markdown(vrows, goals, device, env)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.md"]
    paths[0].write_text(text)
    if plots and vrows:
        try:
            paths.append(draw(vrows, goals, out / "summary.png",
                              f"vkernels on {env.get('device', device)}, commit {env.get('commit', '?')}"))
        except ImportError:
            pass
    return text, paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m benchmarks.summary", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="bench-out", help="a run's folder (results.csv, goals.json)")
    a = ap.parse_args()
    d = Path(a.out)
    with open(d / "results.csv", newline="") as f:
        rs = list(csv.DictReader(f))
    gs = json.loads((d / "goals.json").read_text()) if (d / "goals.json").exists() else []
    dev = "cuda" if any(r["provider"] in OURS["cuda"] for r in rs) else "cpu"
    print(write(rs, gs, dev, d)[0])
