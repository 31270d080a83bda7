"""One-shot check of vkernels on a GPU machine: python benchmarks/gpu_check.py [OUT_DIR] (or gpu_check.sh).

Steps, each under a time limit inside one budget (VKERNELS_GPU_BUDGET seconds, default 450); a failed step never
stops the later independent ones, a failed build skips the GPU steps:
  env        OUT/env.txt        nvidia-smi, versions, commit
  build      OUT/build.log      pip install --no-build-isolation --no-deps -e . for this GPU's arch (nothing is
                                downloaded), then a check that the CUDA kernels are compiled in and registered
  info       OUT/env.txt        python -m vkernels info
  tests      OUT/tests.log      tests/test_build.py with VKERNELS_REQUIRE_CUDA_BUILD=1, then pytest -m cuda
  smoke      OUT/sanitizer.log  benchmarks/smoke.py (every CUDA/Triton kernel against the reference, large cases too),
  memcheck, racecheck, initcheck    the same smoke under compute-sanitizer
  bench      OUT/bench/         python -m benchmarks --device cuda (headline cases; VKERNELS_GPU_BENCH_ARGS adds
                                options, e.g. "--full --ops bias_act"), then recorded under
                                benchmarks/results/<card>/ (python -m benchmarks.record), copied to OUT/results/<card>/
  summary    OUT/summary.md     one line per step (status, exit code, seconds), rewritten after every step
The tests run beside the smoke/sanitizer chain (VKERNELS_GPU_PARALLEL=0: one after the other); the benchmark runs
alone at the end. VKERNELS_SKIP="initcheck bench" skips steps ("build" reuses a module built earlier on the same
machine); VKERNELS_COMMIT names the commit of a tree that arrives without .git.
Exit status: 0 every step ran and passed (or was skipped on request); 1 a step failed or had no time; 3 no GPU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ORDER = ["env", "build", "info", "tests-build", "tests-cuda", "smoke", "memcheck", "racecheck", "initcheck", "bench"]
BENCH_RESERVE = 150  # seconds kept for the benchmark while the earlier steps run


class Check:
    def __init__(self, out: Path, budget: int):
        self.out, self.t0, self.deadline = out, time.time(), time.time() + budget
        self.steps: dict[str, tuple[str, object, int, str]] = {}  # name -> (status, exit code, seconds, note)
        self.skip = set(os.environ.get("VKERNELS_SKIP", "").split())
        self.lock = threading.Lock()
        self.gpu = "none"

    def say(self, msg: str) -> None:
        print(f"[gpu_check +{time.time() - self.t0:.0f}s] {msg}", flush=True)

    def step(self, name: str, cap: int, reserve: int, log: str, cmd: list[str], env: dict | None = None) -> bool:
        """Run cmd under timeout min(cap, time left - reserve), appending to OUT/log; True when it passed."""
        if name in self.skip:
            self.record(name, "skipped", "-", 0, "VKERNELS_SKIP")
            return True
        limit = int(min(cap, self.deadline - time.time() - reserve))
        if limit < 20:
            self.record(name, "skipped", "-", 0, "no time left")
            return False
        cmd = [str(limit - 15 if limit > 30 else limit // 2) if a == "@MAXSEC@" else a for a in cmd]
        self.say(f"{name}: start (limit {limit}s)")
        start = time.time()
        with open(self.out / log, "a") as f:
            f.write(f"\n######## {name}: {' '.join(cmd)}\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    timeout=limit, env={**os.environ, **(env or {})}).returncode
                status, note = ("ok" if rc == 0 else "FAIL"), ""
            except subprocess.TimeoutExpired:
                rc, status, note = 124, "TIMEOUT", f"killed at the {limit}s limit"
            f.write(f"######## {name}: exit {rc} after {time.time() - start:.0f}s {note}\n")
        self.record(name, status, rc, int(time.time() - start), note)
        self.say(f"{name}: {status} (exit {rc}){' ' + note if note else ''}")
        return status == "ok"

    def record(self, name, status, rc, seconds, note="") -> None:
        with self.lock:
            self.steps[name] = (status, rc, seconds, note)
            self.write_summary()

    def write_summary(self) -> None:
        bad = [n for n, (st, *_) in self.steps.items() if st in ("FAIL", "TIMEOUT")]
        notrun = [n for n in ORDER if n not in self.steps or (self.steps[n][0] == "skipped"
                                                              and self.steps[n][3] != "VKERNELS_SKIP")]
        verdict = (f"**Result: FAIL** (failed: {', '.join(bad)})" if bad else
                   f"**Result: INCOMPLETE** (not run: {', '.join(notrun)})" if notrun else "**Result: PASS**")
        lines = ["# vkernels GPU check", "", verdict, "", f"- commit: {commit()}", f"- GPU: {self.gpu}",
                 f"- time: {time.time() - self.t0:.0f}s", "", "| step | status | exit | seconds | note |",
                 "|---|---|---|---|---|"]
        lines += [f"| {n} | {' | '.join(map(str, self.steps[n]))} |" if n in self.steps else f"| {n} | not run | | | |"
                  for n in ORDER]
        verdict_md = self.out / "bench" / "summary.md"
        if verdict_md.exists():
            lines += ["", verdict_md.read_text()]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")

    @property
    def failed(self) -> bool:
        return any(st in ("FAIL", "TIMEOUT") or (st == "skipped" and note != "VKERNELS_SKIP")
                   for st, _, _, note in self.steps.values()) or len(self.steps) < len(ORDER)


def commit() -> str:
    if os.environ.get("VKERNELS_COMMIT"):
        return os.environ["VKERNELS_COMMIT"]
    r = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "unknown (no .git: set VKERNELS_COMMIT)"


def probe_gpu() -> tuple[str, str] | None:
    """(arch "9.0", description) of GPU 0, or None."""
    code = ("import torch\nif torch.cuda.is_available():\n p = torch.cuda.get_device_properties(0)\n"
            " print(f'{p.major}.{p.minor}|{p.name}, {p.total_memory >> 20} MiB, {p.multi_processor_count} SMs')")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    out = r.stdout.strip().splitlines()
    return tuple(out[-1].split("|", 1)) if out else None


def write_env(out: Path) -> None:
    cmds = [[PY, "-c", "import platform, torch; print('python', platform.python_version(), '| torch', "
                       "torch.__version__, 'CUDA', torch.version.cuda)"],
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm", "--format=csv"],
            ["nvcc", "--version"], ["compute-sanitizer", "--version"]]
    with open(out / "env.txt", "a") as f:
        f.write(f"commit: {commit()}\ncpus: {os.cpu_count()}\n")
        for c in cmds:
            f.write(f"\n== {' '.join(c[:2])}\n")
            f.flush()
            if shutil.which(c[0]) or c[0] == PY:
                subprocess.run(c, stdout=f, stderr=subprocess.STDOUT, timeout=60)
            else:
                f.write("not found\n")


CHECK_BUILD = """
import torch, vkernels
from vkernels import _backend as b
assert b._C is not None, f"vkernels._C did not import: {b.C_ERROR}"
assert b._C.with_cuda, "vkernels._C was built without CUDA kernels"
assert torch._C._dispatch_has_kernel_for_dispatch_key("vkernels::bias_act", "CUDA"), "no CUDA kernel registered"
print("vkernels._C:", b._C.__file__, "with CUDA kernels")
"""


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    out = Path(argv[0] if argv else os.environ.get("VKERNELS_GPU_OUT", ".gpu-out")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in ("env.txt", "build.log", "tests.log", "sanitizer.log", "summary.md"):
        (out / old).unlink(missing_ok=True)
    shutil.rmtree(out / "bench", ignore_errors=True)
    c = Check(out, int(os.environ.get("VKERNELS_GPU_BUDGET", "450")))
    os.environ.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")

    t = time.time()
    write_env(out)
    c.record("env", "ok", 0, int(time.time() - t))
    gpu = probe_gpu()
    if gpu is None:
        c.record("build", "skipped", "-", 0, "no CUDA GPU visible to torch: nothing built or run")
        c.say("no CUDA GPU visible to torch: nothing built")
        return 3
    arch = os.environ.get("VKERNELS_GPU_ARCH", gpu[0])
    c.gpu = f"{gpu[1]} (built for sm_{arch.replace('.', '')})"
    build_env = dict(VKERNELS_CUDA="1", TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=str(os.cpu_count() or 4))
    built = c.step("build", 300, BENCH_RESERVE + 120, "build.log",
                   [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."],
                   build_env)
    if built:
        # A build that "succeeds" without the CUDA kernels proves nothing: check they are compiled in and registered.
        r = subprocess.run([PY, "-c", CHECK_BUILD], cwd=ROOT, capture_output=True, text=True, timeout=120)
        with open(out / "build.log", "a") as f:
            f.write(r.stdout + r.stderr)
        if r.returncode:
            built = False
            c.record("build", "FAIL", 1, c.steps["build"][2], "the CUDA kernels are missing (build.log)")
    c.step("info", 30, BENCH_RESERVE, "env.txt", [PY, "-m", "vkernels", "info"])
    if not built:
        for n in ORDER[3:]:
            c.record(n, "skipped", "-", 0, "build failed")
        return 1

    def tests():
        c.step("tests-build", 90, BENCH_RESERVE, "tests.log", [PY, "-m", "pytest", "tests/test_build.py", "-q"],
               dict(VKERNELS_REQUIRE_CUDA_BUILD="1"))
        c.step("tests-cuda", 270, BENCH_RESERVE, "tests.log",
               [PY, "-m", "pytest", "tests", "-m", "cuda", "-v", "-rfE", "--tb=short", "--maxfail", "10"])

    def sanitizer():
        smoke = [PY, "benchmarks/smoke.py", "--device", "cuda"]
        c.step("smoke", 120, BENCH_RESERVE + 60, "sanitizer.log",
               smoke + ["--scope", "default", "--large", "--jobs", "8", "--max-seconds", "@MAXSEC@"])
        csan = shutil.which("compute-sanitizer") or next(
            (str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin/compute-sanitizer",)
             if p.exists()), None)
        for tool, cap, scope in (("memcheck", 180, "default"), ("racecheck", 75, "quick"), ("initcheck", 75, "quick")):
            if csan is None:
                c.record(tool, "skipped", "-", 0, "compute-sanitizer not found")
                continue
            extra = ["--no-fill"] if tool == "initcheck" else []  # the smoke's NaN fill would hide what initcheck seeks
            c.step(tool, cap, BENCH_RESERVE, "sanitizer.log",
                   [csan, "--tool", tool, "--error-exitcode", "1", "--print-limit", "20", "--report-api-errors", "no",
                    *smoke, "--scope", scope, *extra, "--max-seconds", "@MAXSEC@"],
                   dict(PYTORCH_NO_CUDA_MEMORY_CACHING="1"))  # out-of-bounds inside allocator blocks must show

    if os.environ.get("VKERNELS_GPU_PARALLEL", "1") == "1":
        th = threading.Thread(target=tests)
        th.start()
        sanitizer()
        th.join()
    else:
        tests()
        sanitizer()

    args = os.environ.get("VKERNELS_GPU_BENCH_ARGS", "").split()
    if c.step("bench", 300, 0, "bench.log", [PY, "-m", "benchmarks", "--device", "cuda", "--out", str(out / "bench"),
                                             *args]) or (out / "bench" / "results.csv").exists():
        from benchmarks.record import record  # a run cut short still records the cases it finished

        folder = record(out / "bench")
        shutil.copytree(folder, out / "results" / folder.name, dirs_exist_ok=True)
        c.say(f"recorded in {folder} (copied to {out / 'results' / folder.name})")
    c.write_summary()
    print((out / "summary.md").read_text())
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
