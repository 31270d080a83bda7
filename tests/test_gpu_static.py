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


def _cfg(gs, flag=False, ptr="*fp32", arch=90, block=64):
    return gs.Config(kernel="m:k", arch=arch, signature={"x": ptr, "n": "i32", "BLOCK": "constexpr",
                                                         "INT64": "constexpr"},
                     constexprs={(2,): block, (3,): flag}, attrs={}, options={}, num_warps=4, num_stages=3,
                     declared=[(2,), (3,)], cases=["op: a case"])


def test_index64_branches_are_derived_and_their_absence_fails():
    gs = _tool()
    recorded = [_cfg(gs, block=b, ptr=p) for b in (64, 256) for p in ("*fp32", "*fp16")]
    derived = gs.derive_index64(recorded)
    assert [(c.constexprs[(3,)], c.constexprs[(2,)], c.derived, c.origin()) for c in derived] == [
        (True, b, "INT64=True", "derived (INT64=True)") for b in (64, 256) for _ in range(2)]
    assert all(d.signature == r.signature and d.num_warps == r.num_warps for d, r in zip(derived, recorded))
    assert gs.derive_index64(recorded + [_cfg(gs, flag=True)]) == derived[1:]  # a recorded INT64=True is not repeated
    picked = gs.ci_subset(recorded + derived)
    assert {(c.dtype_class(), c.constexprs[(3,)]) for c in picked} == {
        ("fp32", False), ("fp32", True), ("16bit", False), ("16bit", True)}
    assert gs.index64_gaps(recorded, picked) == []
    gaps = gs.index64_gaps(recorded, recorded)  # nothing compiled with INT64=True: one gap per dtype class
    assert len(gaps) == 2 and all("INT64=True compiled by no configuration" in g for g in gaps)
    summary = dict(failures=[], coverage=[], index64=gaps, case_errors=[], grid_errors=[], raw=[])
    assert gs.n_failures(summary) == 2


def test_ci_covers_the_64bit_branch_in_every_tile_and_warp_count():
    """CI compiles the INT64=True branch with every tile shape and num_warps the launchers chose, not only once per
    dtype class (its int64 arithmetic spills in some combinations and not in others)."""
    gs = _tool()
    recorded = [_cfg(gs, block=b) for b in (64, 256)]
    recorded.append(gs.replace(_cfg(gs, block=64), num_warps=8, options={"num_warps": 8}))
    picked = gs.ci_cover(recorded, gs.ci_subset(gs.derive_index64(recorded)))
    on = sorted((c.constexprs[(2,)], c.num_warps) for c in picked if c.constexprs[(3,)])
    assert {b for b, _ in on} == {64, 256} and {w for _, w in on} == {4, 8}
    assert len(gs.ci_subset(recorded + gs.derive_index64(recorded))) < len(picked)


def test_every_64bit_index_constexpr_of_the_kernels_is_known():
    """The check derives INT64=True configurations by name: every constexpr of a launched kernel whose name says 64
    must be a 64-bit-index flag (INDEX64_RE) or a float64 one (FLOAT64_RE), and the kernels that have one are found.
    The CI run below then fails if a kernel x arch x dtype class with such a flag compiles no configuration with it
    on (index64_gaps)."""
    import ast
    gs = _tool()
    found = gs.index64_params()
    assert "vkernels.triton.bias_act:_bias_act_kernel" in found and all(v == ["INT64"] for v in found.values())
    unknown = []
    for path in sorted((ROOT / "vkernels" / "triton").glob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.FunctionDef):
                for a in n.args.args:
                    if a.annotation is not None and ast.unparse(a.annotation).endswith("constexpr") \
                            and "64" in a.arg and not (gs.INDEX64_RE.match(a.arg) or gs.FLOAT64_RE.match(a.arg)):
                        unknown.append(f"{path.name}:{n.name}({a.arg})")
    assert not unknown, f"classify these constexprs in tools/gpu_static.py (INDEX64_RE or FLOAT64_RE): {unknown}"


def test_csv_round_trip_for_merge(tmp_path):
    """--merge keeps rows of an earlier whole-set CSV: read back, they give the same CSV and the same verdicts."""
    gs = _tool()
    rows = []
    for cfg, res in [(_cfg(gs), gs.Result(ok=True, regs=40, shared=128)),
                     (_cfg(gs, ptr="*fp64", arch=80), gs.Result(ok=True, regs=90, spill_stores=100, spill_loads=60)),
                     (gs.derive_index64([_cfg(gs, ptr="*bf16")])[0], gs.Result(ok=True, regs=30, mma=True)),
                     (_cfg(gs, block=256), gs.Result(ok=False, error="CompilationError: at 3:4\nmore"))]:
        rows.append((cfg, res, gs.violations(cfg, res)))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    gs.write_csv(rows, a, "abc1234")
    back = gs.read_csv(a)
    gs.write_csv([(c, r, gs.violations(c, r)) for c, r, _ in back], b, "other")
    assert a.read_text() == b.read_text()
    assert sorted(bool(gs.violations(c, r)) for c, r, _ in back) == [False, False, True, True]
    assert {c.origin() for c, _, _ in back} == {"recorded", "derived (INT64=True)"}


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


def test_reuse_compares_a_kernels_sources_with_what_it_imports():
    """--reuse takes an earlier result only while the kernel's module and the vkernels.triton modules it imports
    (shared @jit helpers) are unchanged: the list it diffs must follow the imports."""
    gs = _tool()
    files = gs._kernel_sources("vkernels.triton.upsample_norm_act_backward")
    assert {"vkernels/triton/upsample_norm_act_backward.py", "vkernels/triton/_activation.py",
            "vkernels/triton/_norm_act.py"} <= set(files)
    assert "vkernels/triton/infonce_bank_loss.py" not in files
