#!/usr/bin/env bash
# benchmarks/gpu_check.sh [OUT_DIR]: one-shot check of vkernels on a lent GPU machine (H100/H200), < 8 minutes.
#
# Run from anywhere; it works in the repository root. Every step runs under `timeout` inside one overall budget, and
# a failed step never stops the later independent ones (a failed build skips the GPU steps). Steps and outputs:
#   env          OUT/env.txt        nvidia-smi, python/torch/triton/nvcc/compute-sanitizer versions, commit, tree hash
#   gpu          OUT/env.txt        torch sees a GPU? its compute capability (no GPU: stop here, exit 3, nothing built)
#   build        OUT/build.log      build in place for exactly this GPU's arch (VKERNELS_CUDA=1, MAX_JOBS=nproc),
#                                   check the CUDA kernels registered, then cuobjdump's per-kernel resource usage
#   info         OUT/env.txt        python -m vkernels info
#   tests-build  OUT/tests.log      tests/test_build.py with VKERNELS_REQUIRE_CUDA_BUILD=1
#   tests-cuda   OUT/tests.log      pytest -m cuda (the CUDA tests, including the >2**31-element "large" ones)
#   smoke        OUT/sanitizer.log  benchmarks/smoke.py: every CUDA/Triton kernel variant checked against the
#                                   reference, plus >2**31-element cases, in 8 parallel shards (which also fills
#                                   Triton's on-disk cache, so the sanitizer runs below load rather than compile)
#   memcheck / racecheck / initcheck   OUT/sanitizer.log   the smoke under compute-sanitizer (PYTORCH_NO_CUDA_MEMORY_
#                                   CACHING=1 so out-of-bounds accesses inside the caching allocator's blocks show)
#   bench        OUT/results.csv, OUT/results.json, one PNG per op   python -m benchmarks --device cuda (run alone)
#   summary      OUT/summary.md     one line per step (status, exit code, seconds), commit, GPU, bias_act targets;
#                                   rewritten after every step and printed at the end
# The tests run at the same time as the smoke/sanitizer chain (separate processes on the one GPU); the benchmark runs
# after both, alone. OUT ends with at most 8 files (the device tool returns no more): what does not fit is packed
# into OUT/bench-extra.tar.
#
# Environment: VKERNELS_GPU_OUT (OUT_DIR when no argument; default ./.gpu-out), VKERNELS_COMMIT (the commit id, for a
# tree that arrives without .git), VKERNELS_GPU_BUDGET (seconds for all steps, default 450), PYTHON (default: the
# python3/python that imports torch), CUDA_HOME (else resolved from nvcc like setup.py does), VKERNELS_GPU_ARCH (e.g.
# 9.0; default: the GPU's own), VKERNELS_GPU_PARALLEL=0 (tests and sanitizer one after the other),
# VKERNELS_TEST_WORKERS (pytest-xdist workers, default 4; 0 = no xdist), VKERNELS_SMOKE_JOBS (default 8),
# VKERNELS_SKIP (space-separated step names to skip, e.g. "initcheck bench"; "build" reuses the module built by an
# earlier run on the same warm machine), VKERNELS_GPU_BENCH_OPS (comma-separated ops for the bench step, in order).
# Typical device call: VKERNELS_COMMIT=<sha> bash benchmarks/gpu_check.sh "$OUT"   (timeout_s about 540)
# `gpu_check.sh --hash` prints the source-tree hash that env.txt records (compare it with a local checkout).
#
# Exit status: 0 every step ran and passed (or VKERNELS_SKIP named it); 1 a step failed, timed out or had no time
# left to start; 2 usage error; 3 no GPU (nothing was built).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 2
cd "$ROOT" || exit 2

source_hash() {  # sha256 over the sources that decide what is built and run (no build outputs, no git needed)
  find setup.py pyproject.toml csrc vkernels tests benchmarks -type f \
      \( -name '*.py' -o -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' -o -name '*.toml' \
         -o -name '*.sh' \) -not -path '*/__pycache__/*' 2>/dev/null |
    LC_ALL=C sort | xargs -r sha256sum | sha256sum | cut -c1-16
}

case "${1:-}" in
  -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  --hash) source_hash; exit 0 ;;
  -*) echo "usage: $0 [OUT_DIR] | --hash | --help" >&2; exit 2 ;;
esac

OUT=${1:-${VKERNELS_GPU_OUT:-./.gpu-out}}
if ! mkdir -p "$OUT" || ! OUT=$(cd "$OUT" && pwd); then echo "gpu_check: cannot create $OUT" >&2; exit 2; fi
BUDGET=${VKERNELS_GPU_BUDGET:-450}
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
BENCH_MIN=120     # seconds kept back for the benchmark while earlier steps run
MIN_STEP=20       # a step is not started with less time than this
PARALLEL=${VKERNELS_GPU_PARALLEL:-1}
SKIP=" ${VKERNELS_SKIP:-} "
NPROC=$(nproc 2>/dev/null || echo 4)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.tsv"
: >"$STEPS"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# This script's own files from an earlier run in the same OUT would be mistaken for this run's.
rm -rf "$OUT/bench-stage"
rm -f "$OUT"/{env.txt,build.log,tests.log,sanitizer.log,summary.md,results.csv,results.json,bench.log,bench-extra.tar}
rm -f "$OUT"/*.png 2>/dev/null

say() { echo "[gpu_check +$(($(date +%s) - T0))s] $*"; }

# record NAME STATUS RC SECONDS NOTE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$STEPS"; }

# run_step NAME CAP RESERVE LOG CMD...: run CMD under timeout min(CAP, time left - RESERVE), appending to LOG.
# An argument @MAXSEC@ becomes the step's limit minus 15 s (smoke.py stops itself then and still reports).
# Returns CMD's exit status; 0 when VKERNELS_SKIP names the step (for build: use the module already built here);
# 125 when too little time is left to start it.
run_step() {
  local name=$1 cap=$2 reserve=$3 log=$4; shift 4
  if [[ "$SKIP" == *" $name "* ]]; then
    record "$name" skipped - 0 "VKERNELS_SKIP"; say "$name: skipped (VKERNELS_SKIP)"; return 0
  fi
  local now left t start rc dur note="" status a
  now=$(date +%s); left=$((DEADLINE - now - reserve)); t=$((cap < left ? cap : left))
  if ((t < MIN_STEP)); then
    record "$name" skipped - 0 "no time left (${left}s after the reserve)"
    say "$name: skipped, no time left"; return 125
  fi
  local args=()
  for a in "$@"; do
    if [[ "$a" == "@MAXSEC@" ]]; then args+=("$((t > 30 ? t - 15 : t / 2))"); else args+=("$a"); fi
  done
  say "$name: start (limit ${t}s)"
  {
    echo
    echo "######## $name: ${args[*]}"
    echo "######## limit ${t}s, started $(date -u +%H:%M:%S) UTC"
  } >>"$log"
  start=$(date +%s)
  timeout -k 5 "$t" "${args[@]}" >>"$log" 2>&1 </dev/null
  rc=$?
  dur=$(($(date +%s) - start))
  if ((rc == 0)); then status=ok
  elif ((rc == 124 || rc == 137)); then status=TIMEOUT; note="killed at the ${t}s limit"
  else status=FAIL
  fi
  echo "######## $name: exit $rc after ${dur}s $note" >>"$log"
  record "$name" "$status" "$rc" "$dur" "$note"
  say "$name: $status (exit $rc, ${dur}s)${note:+ $note}"
  write_summary
  return "$rc"
}

skip_rest() {  # skip_rest REASON NAME...
  local why=$1 n; shift
  for n in "$@"; do record "$n" skipped - 0 "$why"; done
}

# ---------------------------------------------------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------------------------------------------------
pick_python() {
  local c
  for c in ${PYTHON:-} python3 python; do
    if command -v "$c" >/dev/null 2>&1 && timeout 120 "$c" -c 'import torch' >/dev/null 2>&1; then
      command -v "$c"; return 0
    fi
  done
  command -v "${PYTHON:-python3}" || echo python3
}

resolve_cuda_home() {  # as setup.py's _cuda_home: the nvcc on PATH may be a shim script that execs the real one
  local nv tok real
  for tok in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
    [[ -n "$tok" && -x "$tok/bin/nvcc" ]] && { echo "$tok"; return 0; }
  done
  nv=$(command -v nvcc 2>/dev/null)
  if [[ -n "$nv" ]]; then
    if [[ "$(head -c 2 "$nv" 2>/dev/null)" == "#!" ]]; then
      for tok in $(head -c 4096 "$nv" | tr -s " \t\"'=;:()" '\n'); do
        if [[ "$tok" == */bin/nvcc && -x "$tok" && "$tok" != "$nv" ]]; then
          dirname "$(dirname "$tok")"; return 0
        fi
      done
    fi
    real=$(readlink -f "$nv")
    [[ -x "$(dirname "$(dirname "$real")")/bin/nvcc" ]] && { dirname "$(dirname "$real")"; return 0; }
  fi
  for tok in /usr/local/cuda /usr/local/cuda-*; do
    [[ -x "$tok/bin/nvcc" ]] && { echo "$tok"; return 0; }
  done
  return 1
}

find_tool() {  # find_tool NAME: on PATH, else under CUDA_HOME or the driver's folder
  local d
  command -v "$1" 2>/dev/null && return 0
  for d in "${CUDA_HOME_RES:-/nonexistent}/bin" "${CUDA_HOME_RES:-/nonexistent}/$1" /usr/local/cuda/bin \
           /usr/local/nvidia/bin /usr/bin; do
    [[ -x "$d/$1" ]] && { echo "$d/$1"; return 0; }
  done
  return 1
}

PY=$(pick_python)
CUDA_HOME_RES=$(resolve_cuda_home || true)
NVSMI=$(find_tool nvidia-smi || true)
CSAN=$(find_tool compute-sanitizer || true)
CUOBJDUMP=$(find_tool cuobjdump || true)

if [[ -n "${VKERNELS_COMMIT:-}" ]]; then
  COMMIT="$VKERNELS_COMMIT (from VKERNELS_COMMIT)"
elif git rev-parse --verify -q HEAD >/dev/null 2>&1; then
  COMMIT=$(git rev-parse --short=12 HEAD)
  n=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)
  ((n > 0)) && COMMIT="$COMMIT + $n modified tracked files"
else
  COMMIT="unknown (no .git or no commit here; set VKERNELS_COMMIT)"
fi
SRC_HASH=$(source_hash)
GPU_NAME="none"
ARCH=""
BUILD_OK=0

# ---------------------------------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------------------------------
ORDER="env gpu build info tests-build tests-cuda smoke memcheck racecheck initcheck bench"

write_summary() {
  local f="$OUT/summary.md" tmp="$OUT/.summary.md.tmp.$BASHPID" name line st note failed="" notrun="" elapsed
  elapsed=$(($(date +%s) - T0))
  for name in $ORDER; do
    line=$(awk -F'\t' -v n="$name" '$1 == n' "$STEPS" | tail -1)
    st=$(cut -f2 <<<"$line"); note=$(cut -f5 <<<"$line")
    [[ "$st" == FAIL || "$st" == TIMEOUT ]] && failed="$failed $name"
    [[ -z "$line" || ("$st" == skipped && "$note" != VKERNELS_SKIP) ]] && notrun="$notrun $name"
  done
  {
    echo "# vkernels GPU check"
    echo
    if [[ -n "$failed" ]]; then echo "**Result: FAIL** (failed:$failed${notrun:+; not run:$notrun})"
    elif [[ -n "$notrun" ]]; then echo "**Result: INCOMPLETE** (nothing failed; not run:$notrun)"
    else echo "**Result: PASS** (every step ran and passed, apart from any that VKERNELS_SKIP named)"; fi
    echo
    echo "- commit: $COMMIT; source hash $SRC_HASH (\`benchmarks/gpu_check.sh --hash\`)"
    echo "- GPU: $GPU_NAME${ARCH:+ (built for sm_${ARCH/./})}"
    echo "- versions: $(grep -m1 '^versions:' "$OUT/env.txt" 2>/dev/null | cut -d' ' -f2-)"
    echo "- time: ${elapsed}s of a ${BUDGET}s budget; written $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "| step | status | exit | seconds | note | log |"
    echo "|---|---|---|---|---|---|"
    for name in $ORDER; do
      line=$(awk -F'\t' -v n="$name" '$1 == n' "$STEPS" | tail -1)
      if [[ -z "$line" ]]; then echo "| $name | not run | | | | |"; continue; fi
      IFS=$'\t' read -r _ st rc secs note <<<"$line"
      echo "| $name | $st | $rc | $secs | $note | $(log_of "$name") |"
    done
    echo
    if [[ -s "$OUT/build.log" ]]; then
      echo "## build"
      if ((BUILD_OK)); then
        grep -E '^(vkernels\._C|kernels:)' "$OUT/build.log" | tail -3 | sed 's/^/    /'
        echo "    warnings in build.log: $(grep -ciE 'warning' "$OUT/build.log")"
      else
        grep -m5 -E '(error|Error|ERROR)' "$OUT/build.log" | cut -c1-300 | sed 's/^/    /'
        echo "    ... last lines of build.log:"
        grep -v '^######## limit' "$OUT/build.log" | tail -15 | cut -c1-300 | sed 's/^/    /'
      fi
      echo
    fi
    if [[ -s "$OUT/tests.log" ]]; then
      echo "## tests"
      grep -E '^(FAILED|ERROR) ' "$OUT/tests.log" | head -15 | cut -c1-300 | sed 's/^/    /'
      grep -E '(passed|failed|error|skipped|deselected|no tests ran).* in [0-9.]+s' "$OUT/tests.log" |
        tail -2 | sed 's/^/    /'
      echo
    fi
    if [[ -s "$OUT/sanitizer.log" ]]; then
      echo "## smoke / compute-sanitizer"
      # Per run: its exit line, the smoke's verdict, the sanitizer's error count, the first failures.
      awk '/^######## limit/ {next}
           /^######## [a-z]+: exit/ {print "[" sec "] " substr($0, 10); next}
           /^######## [a-z]+: / {sec = $2; sub(":", "", sec); next}
           /^smoke: (PASS|FAIL|INCOMPLETE|[0-9]+ shards)|^========= (ERROR|RACECHECK) SUMMARY/ {print "[" sec "] " $0; next}
           /^FAIL |^========= (Invalid|Uninitialized|Race|Error|Program hit)/ {if (nf[sec]++ < 3) print "[" sec "] " $0}' \
        "$OUT/sanitizer.log" | cut -c1-300 | sed 's/^/    /'
      echo
    fi
    if [[ -s "$WORK/bench.log" ]]; then
      echo "## bias_act targets (benchmark output)"
      # python -m benchmarks prints a "## <op>" section per op: table rows, then "target <provider>: ... MET|MISSED"
      # lines after each case; its progress lines ("  <op> <size> <dtype> ...") go to stderr, here in the same log.
      awk '/^## / {on = ($0 == "## bias_act")} /^wrote |^!!! [0-9]+ case/ {on = 0}
           on && /^size |^[0-9]+(x[0-9]+)*|^ *target |FAILED/' "$WORK/bench.log" | head -60 | cut -c1-300 |
        sed 's/^/    /'
      grep -E '^ *target .*: (MET|MISSED)' "$WORK/bench.log" | awk '{n[/: MISSED/ ? "missed" : "met"]++}
        END {printf "    targets over all ops: %d met, %d missed\n", n["met"], n["missed"]}'
      echo
      echo "## benchmark output (last 150 lines; the full log is in bench-extra.tar when that exists)"
      tail -150 "$WORK/bench.log" | cut -c1-300 | sed 's/^/    /'
      echo
    fi
  } >"$tmp" 2>/dev/null
  mv -f "$tmp" "$f"
}

log_of() {
  case "$1" in
    env|gpu|info) echo env.txt ;;
    build) echo build.log ;;
    tests-*) echo tests.log ;;
    smoke|memcheck|racecheck|initcheck) echo sanitizer.log ;;
    bench) echo "summary.md (below), results.*" ;;
  esac
}

# ---------------------------------------------------------------------------------------------------------------------
# 1. environment
# ---------------------------------------------------------------------------------------------------------------------
say "env -> $OUT/env.txt"
t_env=$(date +%s)
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   host: $(hostname 2>/dev/null)   user: $(id -un 2>/dev/null)"
  echo "commit: $COMMIT"
  echo "source hash: $SRC_HASH"
  echo "uname: $(uname -srm)"
  echo "cpus: $NPROC   memory: $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')   disk free here: $(df -h . 2>/dev/null | awk 'NR == 2 {print $4}')"
  echo "python: $PY"
  echo "CUDA_HOME (resolved): ${CUDA_HOME_RES:-NOT FOUND}"
  echo "nvidia-smi: ${NVSMI:-NOT FOUND}   compute-sanitizer: ${CSAN:-NOT FOUND}   cuobjdump: ${CUOBJDUMP:-NOT FOUND}"
  echo
  echo "== versions"
  timeout 120 "$PY" - <<'EOF' 2>&1
import importlib.metadata as md, platform, sys
def v(name):
    try:
        return md.version(name)
    except Exception:
        return "-"
try:
    import torch
    tv = f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
except Exception as e:
    tv = f"import failed: {e}"
print(f"versions: python {platform.python_version()} | torch {tv} | triton {v('triton')} | numpy {v('numpy')}")
print("test/bench packages: " + ", ".join(f"{n} {v(n)}" for n in (
    "pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "matplotlib", "ninja", "pybind11", "setuptools")))
EOF
  if [[ -n "$CUDA_HOME_RES" ]]; then
    echo "nvcc: $(timeout 30 "$CUDA_HOME_RES/bin/nvcc" --version 2>&1 | grep -iE 'release' | head -1)"
  fi
  [[ -n "$CSAN" ]] && echo "compute-sanitizer: $(timeout 30 "$CSAN" --version 2>&1 | grep -iE 'version' | head -1)"
  echo "gcc: $(gcc --version 2>/dev/null | head -1)   ninja: $(ninja --version 2>/dev/null)"
  echo
  echo "== nvidia-smi -L"
  [[ -n "$NVSMI" ]] && timeout 30 "$NVSMI" -L 2>&1
  echo
  echo "== nvidia-smi --query-gpu"
  if [[ -n "$NVSMI" ]]; then
    timeout 30 "$NVSMI" --format=csv --query-gpu=index,name,driver_version,memory.total,memory.used,compute_cap,pstate,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,persistence_mode,mig.mode.current,ecc.mode.current 2>&1 ||
      timeout 30 "$NVSMI" --format=csv --query-gpu=index,name,driver_version,memory.total,memory.used 2>&1
    echo
    timeout 30 "$NVSMI" 2>&1 | head -25
  fi
  echo
  echo "== environment"
  env | grep -E '^(CUDA|TORCH|TRITON|PYTORCH|VKERNELS|MAX_JOBS|NVIDIA|LD_LIBRARY_PATH|PATH=)' | sort
} >>"$OUT/env.txt" 2>&1
record env ok 0 $(($(date +%s) - t_env)) ""
write_summary

# ---------------------------------------------------------------------------------------------------------------------
# 2. GPU? which arch? then build
# ---------------------------------------------------------------------------------------------------------------------
t_gpu=$(date +%s)
probe=$(timeout 120 "$PY" -c '
import torch
if not torch.cuda.is_available():
    print("none")
else:
    p = torch.cuda.get_device_properties(0)
    c = torch.cuda.get_device_capability(0)
    print(f"{c[0]}.{c[1]}|{p.name}, {p.total_memory // 2**20} MiB, {p.multi_processor_count} SMs, sm_{c[0]}{c[1]}")
' 2>>"$OUT/env.txt" | tail -1)
if [[ -z "$probe" || "$probe" == none ]]; then
  echo "gpu probe: no CUDA GPU visible to torch (${probe:-python failed})" >>"$OUT/env.txt"
  record gpu FAIL 3 $(($(date +%s) - t_gpu)) "no CUDA GPU visible to torch: nothing built or run"
  skip_rest "no GPU" build info tests-build tests-cuda smoke memcheck racecheck initcheck bench
  write_summary
  say "no CUDA GPU visible to torch ($PY): nothing built; see $OUT/summary.md"
  cat "$OUT/summary.md"
  exit 3
fi
ARCH=${VKERNELS_GPU_ARCH:-${probe%%|*}}
GPU_NAME=${probe#*|}
echo "gpu probe: $GPU_NAME; building for TORCH_CUDA_ARCH_LIST=$ARCH" >>"$OUT/env.txt"
record gpu ok 0 $(($(date +%s) - t_gpu)) "$GPU_NAME"
say "gpu: $GPU_NAME -> TORCH_CUDA_ARCH_LIST=$ARCH"

build_env=(env VKERNELS_CUDA=1 "TORCH_CUDA_ARCH_LIST=$ARCH" "MAX_JOBS=$NPROC")
[[ -n "$CUDA_HOME_RES" ]] && build_env+=("CUDA_HOME=$CUDA_HOME_RES" "PATH=$CUDA_HOME_RES/bin:$PATH")
# Reserve for the later steps, but never so much that a small VKERNELS_GPU_BUDGET leaves the build no time.
build_reserve=$((BENCH_MIN + 120 < BUDGET / 3 ? BENCH_MIN + 120 : BUDGET / 3))
if run_step build 300 "$build_reserve" "$OUT/build.log" "${build_env[@]}" "$PY" setup.py build_ext --inplace; then
  # A build that "succeeds" without the CUDA kernels proves nothing: check they are compiled in and registered.
  if timeout 120 "$PY" -c '
import torch, vkernels
from vkernels import _backend as b
assert b._C is not None, f"vkernels._C did not import: {b.C_ERROR}"
assert b._C.with_cuda, "vkernels._C was built without CUDA kernels"
assert torch._C._dispatch_has_kernel_for_dispatch_key("vkernels::bias_act", "CUDA"), "no CUDA kernel registered"
print(f"vkernels._C: {b._C.__file__} (CUDA kernels: yes); cuda impls: {vkernels.available_impls(\"bias_act\", \"cuda\")}")
' >>"$OUT/build.log" 2>&1; then
    BUILD_OK=1
  else
    echo "######## build: the built module lacks its CUDA kernels (see above)" >>"$OUT/build.log"
    record build FAIL 1 0 "built, but the CUDA kernels are missing or do not import"
  fi
  so=$(find vkernels -maxdepth 1 -name '_C*.so' -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -1 | cut -d' ' -f2-)
  if [[ -n "$so" && -n "$CUOBJDUMP" ]]; then
    res=$(timeout 60 "$CUOBJDUMP" --dump-resource-usage "$so" 2>&1)
    {
      echo
      echo "######## cuobjdump --dump-resource-usage $so"
      echo "$res"
      nfun=$(grep -c 'Function' <<<"$res")
      maxreg=$(grep -o 'REG:[0-9]*' <<<"$res" | cut -d: -f2 | sort -n | tail -1)
      nspill=$(grep 'Function' <<<"$res" | grep -cE 'STACK:[1-9]|LOCAL:[1-9]')
      echo "kernels: $nfun in $so; max registers/thread ${maxreg:-?}; with stack or local memory (spills?): $nspill"
    } >>"$OUT/build.log"
  fi
else
  echo "######## build failed: GPU steps skipped" >>"$OUT/build.log"
fi
write_summary

run_step info 30 $((BENCH_MIN + 60)) "$OUT/env.txt" "$PY" -m vkernels info

if ((!BUILD_OK)); then
  why="build failed"
  [[ "$(awk -F'\t' '$1 == "build"' "$STEPS" | tail -1 | cut -f2)" == skipped ]] && why="build not run"
  skip_rest "$why" tests-build tests-cuda smoke memcheck racecheck initcheck bench
  write_summary
  say "$why: GPU steps skipped; see $OUT/build.log"
  cat "$OUT/summary.md"
  exit 1
fi

# ---------------------------------------------------------------------------------------------------------------------
# 3. tests  ||  4. smoke + compute-sanitizer
# ---------------------------------------------------------------------------------------------------------------------
tests_chain() {
  local reserve=$1 topt=() xopt=() w=${VKERNELS_TEST_WORKERS:-4}
  "$PY" -c 'import pytest_timeout' 2>/dev/null && topt=(--timeout 240)
  if ((w > 1)) && "$PY" -c 'import xdist' 2>/dev/null; then xopt=(-n "$w"); fi
  run_step tests-build 90 "$reserve" "$OUT/tests.log" env VKERNELS_REQUIRE_CUDA_BUILD=1 \
    "$PY" -m pytest tests/test_build.py -q -rfE -p no:cacheprovider ${topt[@]+"${topt[@]}"}
  # -v (not -q): if the step is killed at its limit, the log still names every test that finished and how.
  run_step tests-cuda 270 "$reserve" "$OUT/tests.log" "$PY" -m pytest tests -m cuda -v -rfE --tb=short \
    --maxfail 10 -p no:cacheprovider ${topt[@]+"${topt[@]}"} ${xopt[@]+"${xopt[@]}"}
}

sanitizer_chain() {
  local reserve=$1 log="$OUT/sanitizer.log" smoke=(benchmarks/smoke.py --device cuda)
  local cs_common=(--error-exitcode 1 --print-limit 20 --report-api-errors no)
  # Plain run first: checks every variant without the sanitizer's slowdown, compiling the Triton variants in
  # parallel shards into Triton's on-disk cache, which the sanitizer runs then load instead of compiling.
  # --large adds the >2**31-element cases (64-bit index paths of both impls; ~13 GB in one shard).
  run_step smoke 120 $((reserve + 60)) "$log" "$PY" "${smoke[@]}" --scope default --large \
    --jobs "${VKERNELS_SMOKE_JOBS:-8}" --max-seconds @MAXSEC@
  if [[ -z "$CSAN" ]]; then
    echo "compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)" >>"$log"
    skip_rest "compute-sanitizer not found" memcheck racecheck initcheck
    return
  fi
  run_step memcheck 180 "$reserve" "$log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$CSAN" --tool memcheck \
    "${cs_common[@]}" "$PY" "${smoke[@]}" --scope default --max-seconds @MAXSEC@
  # Our kernels use no shared memory yet, so racecheck mostly proves the tool runs; quick scope keeps it cheap.
  run_step racecheck 75 "$reserve" "$log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$CSAN" --tool racecheck \
    "${cs_common[@]}" "$PY" "${smoke[@]}" --scope quick --max-seconds @MAXSEC@
  # --no-fill: the smoke's NaN fill of new tensors would initialize exactly the memory initcheck must watch.
  run_step initcheck 75 "$reserve" "$log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$CSAN" --tool initcheck \
    "${cs_common[@]}" "$PY" "${smoke[@]}" --scope quick --no-fill --max-seconds @MAXSEC@
}

if [[ "$PARALLEL" == 1 ]]; then
  say "tests run in the background while the smoke/sanitizer chain runs"
  tests_chain "$BENCH_MIN" &
  tests_pid=$!
  sanitizer_chain "$BENCH_MIN"
  wait "$tests_pid"
else
  tests_chain $((BENCH_MIN + 150))
  sanitizer_chain "$BENCH_MIN"
fi

# ---------------------------------------------------------------------------------------------------------------------
# 5. benchmarks (alone on the GPU)
# ---------------------------------------------------------------------------------------------------------------------
STAGE="$OUT/bench-stage"  # inside OUT: if the whole command is killed, partial results still come back
mkdir -p "$STAGE"
# The step has minutes, not the hour every op would take: ops run in the order of VKERNELS_GPU_BENCH_OPS (default:
# the memory-bound GAN ops whose H100 bandwidth target is the first open question, then the GEMM-bound pooling ops),
# and the harness writes rows case by case, so a step killed at its limit still returns what it measured.
BENCH_OPS=${VKERNELS_GPU_BENCH_OPS:-bias_act,upsample_norm_act,spade_norm_act,pixel_norm,upfirdn2d,filtered_lrelu,modulated_conv2d,compact_bilinear_pooling,infonce_bank_loss,bilinear_pooling,random_maclaurin_pooling,isqrt_cov}
if [[ -z "${VKERNELS_GPU_BENCH_OPS:-}" ]]; then  # ops benchmarked since this list was written go last, not missing
  for f in benchmarks/bench_*.py; do
    op=${f#benchmarks/bench_}; op=${op%.py}
    [[ ",$BENCH_OPS," == *",$op,"* ]] || BENCH_OPS="$BENCH_OPS,$op"
  done
fi
run_step bench 180 0 "$WORK/bench.log" "$PY" -m benchmarks --device cuda --ops "$BENCH_OPS" --out "$STAGE"

# Fit OUT into 8 files: the logs, then results.csv/json, then plots and the rest; overflow -> bench-extra.tar.
finalize_outputs() {
  local core=0 slots f cand=() keep=() rest=()
  for f in env.txt build.log tests.log sanitizer.log summary.md; do [[ -e "$OUT/$f" ]] && core=$((core + 1)); done
  slots=$((8 - core))
  [[ -s "$STAGE/results.csv" ]] && cand+=("$STAGE/results.csv")
  [[ -s "$STAGE/results.json" ]] && cand+=("$STAGE/results.json")
  while IFS= read -r f; do cand+=("$f"); done < <(find "$STAGE" -maxdepth 1 -type f -name '*.png' | LC_ALL=C sort)
  while IFS= read -r f; do
    case "$f" in "$STAGE/results.csv"|"$STAGE/results.json"|*.png) ;; *) cand+=("$f") ;; esac
  done < <(find "$STAGE" -mindepth 1 -maxdepth 1 -type f ! -name '*.png' | LC_ALL=C sort)
  while IFS= read -r f; do rest+=("$f"); done < <(find "$STAGE" -mindepth 1 -maxdepth 1 ! -type f | LC_ALL=C sort)
  # The benchmark's console output goes into summary.md (its last 150 lines); in full only into a tar made anyway.
  if ((${#cand[@]} <= slots - (${#rest[@]} > 0))); then  # folders the benchmark made always go into the tar
    keep=(${cand[@]+"${cand[@]}"})
  else
    keep=("${cand[@]:0:slots-1}")
    rest+=("${cand[@]:slots-1}")
  fi
  for f in ${keep[@]+"${keep[@]}"}; do mv -f "$f" "$OUT/"; done
  if ((${#rest[@]})); then
    mkdir -p "$WORK/extra"
    for f in "${rest[@]}"; do mv -f "$f" "$WORK/extra/"; done
    [[ -s "$WORK/bench.log" ]] && cp "$WORK/bench.log" "$WORK/extra/bench.log"
    tar -cf "$OUT/bench-extra.tar" -C "$WORK/extra" .
  fi
  rm -rf "$STAGE"
  # The device tool returns files of at most 16 MiB: keep the head and the tail of any longer log.
  for f in "$OUT"/*.log "$OUT"/*.txt; do
    [[ -f "$f" ]] || continue
    if (($(stat -c %s "$f") > 15 * 1024 * 1024)); then
      { head -c 7000000 "$f"; printf '\n\n######## [gpu_check: %s truncated to head + tail]\n\n' "$(basename "$f")"
        tail -c 7000000 "$f"; } >"$f.tmp" && mv -f "$f.tmp" "$f"
    fi
  done
}
finalize_outputs
write_summary

echo
say "done; $(find "$OUT" -type f | wc -l) files in $OUT"
ls -la "$OUT"
echo
cat "$OUT/summary.md"
# 0 only when every step ran and passed (or VKERNELS_SKIP named it).
if awk -F'\t' '$2 == "FAIL" || $2 == "TIMEOUT" || ($2 == "skipped" && $5 != "VKERNELS_SKIP") {bad = 1}
               END {exit !bad}' "$STEPS"; then exit 1; fi
exit 0
