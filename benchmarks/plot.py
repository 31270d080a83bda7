"""Draw one PNG per op from a benchmark results.csv: one panel per case (size and dtype in its title), a horizontal
bar per provider (median ms, whiskers from the 20th to the 80th percentile of the timed calls), vkernels' bars
annotated with their speedup over torch.compile, the case's floor as a dashed line, and a legend line for every
provider at the bottom. The time axis is logarithmic when the slowest provider is more than 10x the fastest, so a
slow baseline does not flatten the others to zero. One file per op because results come back from GPU machines
through a file-count limit.

    python benchmarks/plot.py bench-out/results.csv [--out DIR]     (also run by `python -m benchmarks`)

Needs only matplotlib and the csv (not torch or vkernels), so the plots can be redrawn anywhere.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on benchmark machines
import matplotlib.pyplot as plt  # noqa: E402

if __package__ in (None, ""):  # run as a script: python benchmarks/plot.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.providers import describe  # noqa: E402

BASELINE = {"eager": "#9e9e9e", "compile": "#607d8b", "eager-freq": "#bdbdbd", "port-fft": "#d7ccc8"}


def _colors(providers: list[str]) -> dict[str, str]:
    cyc = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    return {p: BASELINE.get(p) or next(cyc) for p in providers}


def plot(csv_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    csv_path = Path(csv_path)
    out_dir = Path(out_dir) if out_dir else csv_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["op"] != "machine" and r["median_ms"]]
    for r in rows:  # results written before the floor was named a floor
        r["provider"] = {"ceiling-clone": "floor-clone"}.get(r["provider"], r["provider"])
    paths = []
    for op in dict.fromkeys(r["op"] for r in rows):
        paths.append(_plot_op(op, [r for r in rows if r["op"] == op], out_dir))
    return paths


def _plot_op(op: str, op_rows: list[dict], out_dir: Path) -> Path:
    groups = list(dict.fromkeys((r["size"], r["dtype"]) for r in op_rows))
    providers = list(dict.fromkeys(r["provider"] for r in op_rows if not r["provider"].startswith("floor-")))
    floors = list(dict.fromkeys(r["provider"] for r in op_rows if r["provider"].startswith("floor-")))
    colors = _colors(providers)
    ncol = min(2, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    panel_h = 0.42 * len(providers) + 1.3
    legend_h = 0.2 * (len(providers) + len(floors)) + 0.5
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(6.4 * ncol, 9.0), panel_h * nrow + legend_h), squeeze=False,
                             layout="constrained")
    for ax, (size, dtype) in zip(axes.flat, groups):
        g = {r["provider"]: r for r in op_rows if (r["size"], r["dtype"]) == (size, dtype)}
        floor = next((g[p] for p in g if p.startswith("floor-")), None)
        names = [p for p in providers if p in g]
        med = [float(g[p]["median_ms"]) for p in names]
        lo = [m - float(g[p]["p20_ms"]) for m, p in zip(med, names)]
        hi = [float(g[p]["p80_ms"]) - m for m, p in zip(med, names)]
        y = list(range(len(names)))[::-1]
        ax.barh(y, med, xerr=[lo, hi], color=[colors[p] for p in names], capsize=3, height=0.7)
        values = med + ([float(floor["median_ms"])] if floor else [])
        log = max(values) > 10 * min(values)
        # Axes from the medians: a noisy call's whisker is clipped at the edge rather than squeezing every bar.
        hi_lim = max(values) * (8 if log else 1.8)
        label_room = max(values) * (2 if log else 1.15)
        comp = float(g["compile"]["median_ms"]) if "compile" in g else None
        for yi, p, m, up in zip(y, names, med, hi):
            label = f"{m:.4g} ms"
            if comp and p.startswith("vkernels-"):
                label += f"  ({comp / m:.2f}x vs compile)"
            x_label = m + up if m + up < label_room else m
            ax.annotate(label, (x_label, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(y, names, fontsize=8)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min(values) / 1.5, hi_lim)
            ax.set_xlabel("median ms, log scale (lower is better)", fontsize=8)
        else:
            ax.set_xlim(0, hi_lim)
            ax.set_xlabel("median ms (lower is better)", fontsize=8)
        if floor:
            fm = float(floor["median_ms"])
            ax.axvline(fm, ls="--", color="k", lw=1)
            ax.annotate(f"{floor['provider']} {fm:.4g} ms", (fm, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -10), textcoords="offset points", fontsize=7)
        ax.set_title(f"{size}\n{dtype}", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    r0 = op_rows[0]
    fig.suptitle(f"{op} on {r0['device']}\ntorch {r0['torch_version']}, commit {r0['commit']}; "
                 "bars: median ms, whiskers: 20th-80th percentile of the timed calls", fontsize=10)
    legend = "\n".join(f"{p}: {describe(p)}" for p in providers + floors)
    fig.supxlabel(legend, fontsize=7, ha="left", x=0.01, multialignment="left")
    path = out_dir / f"{op}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python benchmarks/plot.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="?", default="bench-out/results.csv")
    ap.add_argument("--out", help="folder for the PNGs (default: the csv's folder)")
    a = ap.parse_args()
    for p in plot(a.csv, a.out):
        print(f"wrote {p}")
