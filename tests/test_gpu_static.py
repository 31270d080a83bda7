"""The static GPU compile check in its CI mode (tools/gpu_static.py --ci): every launched Triton kernel x constexpr
branch x dtype class, recorded from the public ops with the launchers tuned for sm_80 and sm_90, compiled for both
without a GPU; no compile error, no spill (fp64: at most 128 B), shared memory within the per-block limit, every
launch through vkernels/triton/_launch.launch; the CUDA C++ kernels of the built extension by the same rule. The whole
set is `make gpu-static`."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gpu_static.py"


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_static", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_occupancy_follows_cuda_rules():
    gs = _tool()
    assert gs.occupancy(255, 0, 4, 90) == 8  # 255 registers -> 8192 per warp -> 8 warps
    assert gs.occupancy(32, 0, 4, 90) == 64  # limited by 64 warps per SM
    assert gs.occupancy(64, 100_000, 8, 80) == 8  # one 100 KB block fits in 164 KiB
    assert gs.occupancy(64, 100_000, 8, 90) == 16  # two fit in 228 KiB


def test_ci_subset_covers_every_branch_value_and_tile_shape():
    gs = _tool()

    def cfg(block, flag, ptr="*fp32", arch=90):
        return gs.Config(kernel="m:k", arch=arch, signature={"x": ptr, "BLOCK": "constexpr", "F": "constexpr"},
                         constexprs={(1,): block, (2,): flag}, attrs={}, options={}, num_warps=4, num_stages=3,
                         declared=[(1,), (2,)])

    picked = gs.ci_subset([cfg(64, True), cfg(256, True), cfg(64, False), cfg(64, True, "*fp16"),
                           cfg(64, True, "*bf16"), cfg(64, True, arch=80)])
    got = sorted((c.arch, c.dtype_class(), c.constexprs[(2,)], c.constexprs[(1,)]) for c in picked)
    assert got == [(80, "fp32", True, 64), (90, "16bit", True, 64), (90, "fp32", False, 64), (90, "fp32", True, 256)]


def test_triton_and_cuda_kernels_compile_for_sm80_sm90_within_limits():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(TOOL), "run", "--ci", "--strict-launch"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"static GPU check failed:\n{proc.stdout[-20000:]}\n{proc.stderr[-3000:]}", pytrace=False)


def test_cuda_resource_usage_rule():
    gs = _tool()
    text = """
Fatbin elf code:
================
arch = sm_80
Resource usage:
 Function _Z3bigIdEvPT_:
  REG:32 STACK:512 SHARED:32768 LOCAL:0 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z4axpyPfPKffi:
  REG:10 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:376 TEXTURE:0 SURFACE:0 SAMPLER:0
arch = sm_90
Resource usage:
 Function _Z4axpyPfPKffi:
  REG:10 STACK:8 SHARED:240000 LOCAL:0 CONSTANT[0]:376 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    rows = gs.parse_resource_usage(text)
    assert [(r["kernel"], r["arch"], r["regs"], r["stack"]) for r in rows] == [
        ("void big<double>(double*)", 80, 32, 512), ("axpy(float*, float const*, float, int)", 80, 10, 0),
        ("axpy(float*, float const*, float, int)", 90, 10, 8)]
    verdicts = [gs.cuda_violations(r) for r in rows]
    assert len(verdicts[0]) == 1 and "512 B" in verdicts[0][0]  # fp64: over the 128 B allowance
    assert verdicts[1] == []
    assert len(verdicts[2]) == 2  # any stack in a non-fp64 kernel, and shared memory over sm_90's limit
