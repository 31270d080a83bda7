# `make test` and `make bench` set everything up on a fresh machine (venv, torch, build) and then run.
# `make bench`: one headline case per op (minutes); `make bench-full`: every case; options pass through ARGS,
# e.g. make bench ARGS="--ops bias_act --quick".
# Environment knobs: VKERNELS_CUDA=auto|0|1 (build CUDA sources), TORCH_CUDA_ARCH_LIST, MAX_JOBS, PYTHON.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1
SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h')

ARGS ?=

.PHONY: test test-full test-times bench bench-full build info clean gpu-static

test: $(VENV)/.built
	$(PY) -m pytest tests -q

# The full matrices: every interpreter (impl="triton") combination that `ci_cover` markers thin out in `make test`,
# and the full hypothesis example counts.
test-full: $(VENV)/.built
	VKERNELS_TEST_FULL=1 $(PY) -m pytest tests -q

# `make test` with each test's time written to test-times.tsv and the per-file totals printed at the end.
test-times: $(VENV)/.built
	VKERNELS_TEST_TIMES=test-times.tsv $(PY) -m pytest tests -q

bench: $(VENV)/.built
	$(PY) -m benchmarks $(ARGS)

bench-full: $(VENV)/.built
	$(PY) -m benchmarks --full $(ARGS)

# Every Triton kernel configuration the launchers choose, compiled for sm_80 and sm_90 without a GPU, and the
# CUDA C++ kernels' resource usage: regenerates docs/gpu-static.md and docs/gpu-static.csv (run before a kernel
# change lands; CI runs the --ci subset through tests/test_gpu_static.py).
gpu-static: $(VENV)/.built
	$(PY) tools/gpu_static.py report

info: $(VENV)/.built
	$(PY) -m vkernels info

build: $(VENV)/.built

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" numpy tqdm pytest pytest-timeout hypothesis ninja pybind11 matplotlib scikit-learn scikit-image
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	@$(PY) setup.py plan
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build *.egg-info vkernels/_C*.so
