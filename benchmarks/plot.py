"""Draw one PNG per op from a benchmark results.csv: median time per provider (p20-p80 whiskers), one panel per
(size, dtype), the clone floor as a dashed line. One file per op because results come back from GPU machines
through an 8-file limit.

    python benchmarks/plot.py bench-out/results.csv [--out DIR]     (also run by `python -m benchmarks`)

Needs only matplotlib and the csv (not torch or vkernels), so the plots can be redrawn anywhere.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on benchmark machines
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"eager": "#9e9e9e", "compile": "#607d8b"}  # baselines grey; vkernels providers get the color cycle


def plot(csv_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    csv_path = Path(csv_path)
    out_dir = Path(out_dir) if out_dir else csv_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["op"] != "machine" and r["median_ms"]]
    paths = []
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        groups = list(dict.fromkeys((r["size"], r["dtype"]) for r in op_rows))
        ncol = min(3, len(groups))
        nrow = math.ceil(len(groups) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.8 * nrow), squeeze=False)
        for ax, (size, dtype) in zip(axes.flat, groups):
            g = [r for r in op_rows if (r["size"], r["dtype"]) == (size, dtype)]
            clone = next((float(r["median_ms"]) for r in g if r["provider"] == "ceiling-clone"), None)
            g = [r for r in g if not r["provider"].startswith("ceiling")]
            med = [float(r["median_ms"]) for r in g]
            err = [[m - float(r["p20_ms"]) for m, r in zip(med, g)], [float(r["p80_ms"]) - m for m, r in zip(med, g)]]
            cyc = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
            colors = [COLORS.get(r["provider"]) or next(cyc) for r in g]
            bars = ax.bar([r["provider"] for r in g], med, yerr=err, color=colors, capsize=3)
            ax.bar_label(bars, labels=[f"{m:.4g}" for m in med], padding=2, fontsize=8)
            if clone is not None:
                ax.axhline(clone, ls="--", color="k", lw=1, label=f"x.clone() {clone:.3g} ms")
                ax.legend(fontsize=8, loc="upper right")
            ax.set_title(f"{size}  {dtype}", fontsize=10)
            ax.set_ylabel("median ms (lower is better)")
            ax.set_ylim(0, max([float(r["p80_ms"]) for r in g] + [clone or 0]) * 1.2)  # room for labels
            ax.tick_params(axis="x", labelsize=8)
        for ax in axes.flat[len(groups):]:
            ax.set_visible(False)
        r0 = op_rows[0]
        fig.suptitle(f"{op} on {r0['device']}  (torch {r0['torch_version']}, commit {r0['commit']})", fontsize=10)
        fig.tight_layout()
        paths.append(out_dir / f"{op}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="?", default="bench-out/results.csv")
    ap.add_argument("--out", help="folder for the PNGs (default: the csv's folder)")
    a = ap.parse_args()
    for p in plot(a.csv, a.out):
        print(f"wrote {p}")
