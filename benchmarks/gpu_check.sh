#!/usr/bin/env bash
# benchmarks/gpu_check.sh [OUT_DIR]: build, test, sanitize and benchmark vkernels on a GPU machine in one go.
# The steps live in benchmarks/gpu_check.py (`--help` lists them); this wrapper only finds a Python that has torch.
# Nothing is downloaded: the build is `pip install --no-build-isolation --no-deps --no-index -e .`.
# Results: OUT_DIR/summary.md, logs, OUT_DIR/bench/, and benchmarks/results/<card>/ (copied to OUT_DIR/results/).
# Typical device call: VKERNELS_COMMIT=<sha> bash benchmarks/gpu_check.sh "$OUT"   (timeout_s about 540)
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
for py in ${PYTHON:-} python3 python; do
  if command -v "$py" >/dev/null && "$py" -c "import torch" 2>/dev/null; then
    exec "$py" benchmarks/gpu_check.py "$@"
  fi
done
echo "gpu_check: no python with torch found (set PYTHON)" >&2
exit 2
