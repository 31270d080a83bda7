"""Record a benchmark run in the repository: python -m benchmarks.record bench-out [--machine NAME]

benchmarks/results/<machine>/ holds one machine's latest run (results.csv/json, summary.md/png, one PNG per op, and
run.txt naming machine, date and commit) and history.csv, which keeps every recorded run's medians: one line per
(run, op, case, dtype, provider), run = "<date>-<commit>". Recording replaces the latest run's files and appends to
the history (a run already in it is replaced, not duplicated). The machine name defaults to the run's device:
"cpu-<model>-<N>core" or the GPU's name, e.g. "nvidia-h100-80gb-hbm3".
"""
from __future__ import annotations

import argparse
import csv
import re
import shutil
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY_FIELDS = ["run", "date", "commit", "op", "case", "dtype", "provider", "median_ms", "p20_ms", "p80_ms",
                  "peak_mem_bytes"]
LATEST = ("results.csv", "results.json", "goals.json", "summary.md", "summary.png", "table.txt", "run.txt")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_name(device: str) -> str:
    """"AMD EPYC (2 threads)" -> "cpu-amd-epyc-2core"; "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    m = re.fullmatch(r"(.*) \((\d+) threads?\)", device)
    return f"cpu-{slug(m.group(1))}-{m.group(2)}core" if m else slug(device)


def run_name(rows: list[dict]) -> tuple[str, str, str]:
    """(run, date, commit) of a run's rows: the date of its first timestamp and its commit."""
    r = next(r for r in rows if r.get("timestamp"))
    date, commit = r["timestamp"][:10], r.get("commit") or "unknown"
    return f"{date}-{commit}", date, commit


def history_rows(rows: list[dict]) -> list[dict]:
    run, date, commit = run_name(rows)
    return [{"run": run, "date": date, "commit": commit, "op": r["op"], "case": r["size"], "dtype": r["dtype"],
             "provider": r["provider"], "median_ms": r["median_ms"], "p20_ms": r.get("p20_ms", ""),
             "p80_ms": r.get("p80_ms", ""), "peak_mem_bytes": r.get("peak_mem_bytes", "")} for r in rows]


def append_history(folder: Path, new: list[dict]) -> Path:
    """Add a run's rows to folder/history.csv, replacing rows of the same run, oldest run first."""
    path = folder / "history.csv"
    old = []
    if path.exists():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    runs = {r["run"] for r in new}
    keep = [r for r in old if r["run"] not in runs] + new
    keep.sort(key=lambda r: r["date"])  # stable: runs of one day stay in the order they were recorded
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in HISTORY_FIELDS} for r in keep)
    return path


def record(run_dir: Path, machine: str | None = None, results: Path = RESULTS) -> Path:
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{run_dir / 'results.csv'} has no rows")
    machine = machine or machine_name(rows[0]["device"])
    folder = results / machine
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.png"), *(folder / n for n in LATEST)]:
        if old.is_file():
            old.unlink()
    for src in [*run_dir.glob("*.png"), *(run_dir / n for n in LATEST)]:
        if src.is_file():
            shutil.copy2(src, folder / src.name)
    run, date, commit = run_name(rows)
    (folder / "run.txt").write_text(f"machine: {machine}\ndevice: {rows[0]['device']}\ndate: {date}\n"
                                    f"commit: {commit}\nrun: {run}\ntorch: {rows[0].get('torch_version', '')}\n")
    append_history(folder, history_rows(rows))
    return folder


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m benchmarks.record", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", default="bench-out", help="a run's folder (python -m benchmarks --out)")
    ap.add_argument("--machine", help="folder name under benchmarks/results (default: from the run's device)")
    a = ap.parse_args()
    print(f"recorded {a.run_dir} in {record(Path(a.run_dir), a.machine)}")
