"""Static GPU check: compile every Triton kernel the launchers would launch for sm_80 and sm_90, without a GPU.

Phases (each a function below, run as `python tools/gpu_static.py [run|report] ...`):
  RECORD      a child process with TRITON_INTERPRET=1 runs every op's static cases (`gpu_static_cases()` in
              tests/test_<op>.py: public ops with impl="triton", forward / backward / double backward) inside
              `_launch.tune_for(arch)`, so launchers pick the blocks and num_warps they would pick on that GPU, and
              `_launch.recording()` sees every launch. Kernels are not run (a launch's configuration depends on
              shapes, dtypes and strides, not values); --execute runs them too. Launches made outside
              _launch.launch are seen through the interpreter's run() (listed; failures with --strict-launch).
  SPECIALISE  each launch becomes a compile key exactly as Triton's runtime makes it on a CUDA device: the binder
              Triton builds for the kernel (create_function_from_signature) for a CUDA backend, then
              JITFunction._pack_args: signature types, 16-byte pointer alignment, ints divisible by 16, ints == 1 as
              constexprs, the constexprs, num_warps / num_stages. Keys are deduplicated.
  COMPILE     fresh child processes without TRITON_INTERPRET (kernels are JITFunctions) run
              triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)) with an empty cache; ptxas' -v log
              gives registers, spills and stack, metadata.shared the shared memory, the PTX the tensor-core use.
  CHECK       a compile error, any spill in fp16/bf16/fp32 configurations (fp64: more than 128 B), shared memory over
              the per-block limit of the arch the launcher chose for, a launched kernel that no case recorded, a case
              that failed, a launch that bypassed vkernels/triton/_launch.launch.
  CUDA C++    the same spill / shared-memory rule for csrc/ops/cuda kernels, from `cuobjdump --dump-resource-usage`
              on the built extension.
  REPORT      docs/gpu-static.md + docs/gpu-static.csv: every kernel x configuration x arch, and the H100 roofline of
              the headline ops at their benchmark sizes (bytes / FLOPs from benchmarks/bench_<op>.py).

`--ci` compiles a subset: per kernel x arch x dtype class, configurations (largest tiles first) until every
constexpr value, tile shape, num_warps and num_stages appears, once among the recorded configurations and once among
the derived INT64=True ones. The full set is `make gpu-static`.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import importlib
import io
import json
import math
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHS = (80, 90)
SMEM_PER_BLOCK = {80: 166_912, 90: 232_448}  # opt-in maximum per block
SMEM_PER_SM = {80: 167_936, 90: 233_472}  # 164 KiB / 228 KiB
SMEM_RESERVED_PER_BLOCK = 1024  # the driver's per-block reservation on sm_80+
REGS_PER_SM, MAX_WARPS_PER_SM, MAX_BLOCKS_PER_SM, REG_ALLOC_UNIT = 65_536, 64, 32, 256
FP64_SPILL_LIMIT = 128
_FLOAT_CLASS = {"fp64": "fp64", "fp32": "fp32", "fp16": "16bit", "bf16": "16bit"}
# Constexpr flags that switch a kernel's index arithmetic to 64 bits. Launchers set them only for tensors past 2^31
# elements, which no recorded case has, so every recorded configuration with one off is also compiled with it on
# (a "derived" configuration). Names with "64" must match one of these two patterns (tests/test_gpu_static.py).
INDEX64_RE = re.compile(r"^(INT64|I64|IDX64|INDEX64|OFFS64|USE_INT64|NEED_INT64|BIG|BIG_INDEX|LARGE|LARGE_INDEX)$")
FLOAT64_RE = re.compile(r"^(F64|FP64|IS_F64|IS_FP64|DOUBLE)$")


# ----------------------------------------------------------------------------------------------------------------
# Records and results
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Config:
    """One compile key: what Triton's runtime would compile for one launch on a CUDA device of `arch`."""
    kernel: str  # module:qualname
    arch: int
    signature: dict  # arg name -> "*fp32" | "i32" | "constexpr" ...
    constexprs: dict  # path tuple -> value (values already made picklable, see _portable)
    attrs: dict  # path tuple -> [[attr, value]]
    options: dict  # num_warps / num_stages / ... as the launcher passed them
    num_warps: int
    num_stages: int
    declared: list = field(default_factory=list)  # paths of the tl.constexpr parameters (others: ints == 1)
    cases: list = field(default_factory=list)  # "op: label" of the cases that launched it
    via: set = field(default_factory=set)  # "launch" (through _launch.launch) and/or "raw"
    derived: str = ""  # "" when a case launched it; else what was changed from a recorded one ("INT64=True")
    commit: str = ""  # set when the result was reused from an earlier run's CSV (--reuse): that run's commit

    def key(self):
        return (self.kernel, self.arch, repr(sorted(self.signature.items())), repr(sorted(self.constexprs.items())),
                repr(sorted(self.attrs.items())), repr(sorted(self.options.items())))

    @property
    def name(self):
        return self.kernel.split(":")[1]

    def dtype_class(self):
        """16bit when any pointer argument is fp16/bf16 (16-bit data, whatever the accumulators: random_maclaurin's
        kernels take fp32 weights first), else fp64 or fp32: the type of the first floating-point pointer argument
        (by the kernels' convention the output or the main input; scalar, filter and accumulator pointers come
        later)."""
        if any(isinstance(t, str) and t[1:] in ("fp16", "bf16") for t in self.signature.values()):
            return "16bit"
        for t in self.signature.values():
            if isinstance(t, str) and t[1:] in _FLOAT_CLASS:
                return _FLOAT_CLASS[t[1:]]
        return "fp32"

    def constexpr_text(self, declared_only=False):
        """NAME=value of the constexprs; ints the runtime specialised to 1 come after "|" (or not at all)."""
        names = list(self.signature)
        declared = {tuple(p) for p in self.declared}
        parts, ones = [], []
        for path, v in sorted(self.constexprs.items()):
            n = names[path[0]] if len(path) == 1 and path[0] < len(names) else str(path)
            (parts if path in declared or not declared else ones).append(f"{n}={v}")
        if declared_only or not ones:
            return " ".join(parts)
        return " ".join(parts) + " | " + " ".join(ones)

    def param_name(self, path) -> str:
        names = list(self.signature)
        return names[path[0]] if len(path) == 1 and path[0] < len(names) else str(path)

    def index64_paths(self) -> list:
        return [tuple(p) for p in self.declared if INDEX64_RE.match(self.param_name(tuple(p)))]

    def origin(self) -> str:
        return f"derived ({self.derived})" if self.derived else "recorded"

    def ops(self) -> list[str]:
        return sorted({c.split(":")[0] for c in self.cases})

    def types_text(self):
        return ",".join(sorted({t[1:] for t in self.signature.values() if isinstance(t, str) and t.startswith("*")}))


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    regs: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    shared: int = 0
    mma: bool = False
    wgmma: bool = False
    seconds: float = 0.0  # wall time of the compile
    cpu_seconds: float = 0.0  # CPU time of the compile, ptxas included: what an idle machine would take

    @property
    def spills(self):
        return self.spill_stores + self.spill_loads


@dataclass
class SavedConfig:
    """A compiled configuration read back from a report CSV: what the report and the rules need (not enough to
    compile it again). `--merge` keeps these rows for the kernels a run does not recompile."""
    kernel: str
    arch: int
    dtypes: str
    constexprs: str
    num_warps: int
    num_stages: int
    dclass: str
    op_names: list
    cases: list
    derived: str
    commit: str

    name = Config.name
    origin = Config.origin

    def types_text(self):
        return self.dtypes

    def constexpr_text(self, declared_only=False):
        return self.constexprs.split(" | ")[0] if declared_only else self.constexprs

    def dtype_class(self):
        return self.dclass

    def ops(self):
        return list(self.op_names)

    def index64_paths(self):
        return []


def read_csv(path) -> list[tuple]:
    """(SavedConfig, Result) for every row of a CSV written by write_csv."""
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            missing = {"dtype_class", "ops", "commit", "origin"} - set(r)
            if missing:
                raise SystemExit(f"{path}: no column(s) {sorted(missing)}; written by an older gpu_static, rerun the "
                                 f"whole set")
            origin = r["origin"]
            cfg = SavedConfig(kernel=r["kernel"], arch=int(r["arch"].removeprefix("sm_")), dtypes=r["dtypes"],
                              constexprs=r["constexprs"], num_warps=int(r["num_warps"]),
                              num_stages=int(r["num_stages"]), dclass=r["dtype_class"],
                              op_names=[o for o in r["ops"].split(";") if o],
                              cases=[c for c in r["cases"].split("; ") if c],
                              derived=origin[len("derived ("):-1] if origin.startswith("derived") else "",
                              commit=r["commit"])
            tc = r["tensor_cores"]
            res = Result(ok=r["ok"] == "1", error=r["error"], regs=int(r["regs"]),
                         spill_stores=int(r["spill_stores"]), spill_loads=int(r["spill_loads"]), stack=int(r["stack"]),
                         shared=int(r["shared"]), mma=tc in ("mma", "wgmma"), wgmma=tc == "wgmma")
            rows.append((cfg, res, r["triton"]))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# RECORD + SPECIALISE (child process, TRITON_INTERPRET=1)
# ----------------------------------------------------------------------------------------------------------------

def discover_cases(ops_filter: str | None):
    """(op, module) for every tests/test_<op>.py that defines gpu_static_cases (no central list of ops)."""
    sys.path.insert(0, str(ROOT / "tests"))
    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        op = path.stem[len("test_"):]
        if ops_filter and not any(s in op for s in ops_filter.split(",")):
            continue
        if "def gpu_static_cases" not in path.read_text():
            continue
        found.append((op, importlib.import_module(path.stem)))
    return found


class _Specialiser:
    """Turns a recorded launch into a Config with Triton's own runtime binder for a CUDA target."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend
        self._backends = {a: make_backend(GPUTarget("cuda", a, 32)) for a in ARCHS}
        self._jit = {}
        self._binders = {}

    def jit_function(self, kernel):
        from triton.runtime.jit import JITFunction
        if isinstance(kernel, JITFunction):
            return kernel
        if kernel not in self._jit:  # an InterpretedFunction: the same function and decorator arguments
            self._jit[kernel] = JITFunction(kernel.fn, **getattr(kernel, "kwargs", {}))
        return self._jit[kernel]

    def __call__(self, kernel, arch, args, kwargs) -> Config:
        from triton.runtime.jit import create_function_from_signature
        jf = self.jit_function(kernel)
        backend = self._backends[arch]
        if (kernel, arch) not in self._binders:
            self._binders[kernel, arch] = create_function_from_signature(jf.signature, jf.params, backend)
        bound, specialization, opts = self._binders[kernel, arch](*args, **kwargs)
        options, signature, constexprs, attrs = jf._pack_args(backend, dict(kwargs), bound, specialization, opts)
        return Config(kernel=f"{jf.fn.__module__}:{jf.fn.__qualname__}", arch=arch, signature=dict(signature),
                      constexprs={k: _portable(v) for k, v in constexprs.items()},
                      attrs={k: [list(a) for a in v] for k, v in attrs.items()}, options=dict(opts),
                      num_warps=options.num_warps, num_stages=options.num_stages,
                      declared=[(p.num,) for p in jf.params if p.is_constexpr])


def _portable(v):
    """A constexpr value that survives pickling into a process where kernels are JITFunctions."""
    fn = getattr(v, "fn", None)
    if fn is not None and callable(fn) and hasattr(v, "arg_names"):
        return ("__jit__", fn.__module__, fn.__qualname__)
    if type(v).__name__ == "dtype" and type(v).__module__.startswith("triton"):
        return ("__tl_dtype__", str(v))
    return v


def _unportable(v):
    if isinstance(v, tuple) and len(v) == 3 and v[0] == "__jit__":
        return getattr(importlib.import_module(v[1]), v[2])
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__tl_dtype__":
        import triton.language as tl
        return tl.dtype(v[1])
    return v


@contextlib.contextmanager
def _launch_hook(callback, execute: bool):
    """Hook the interpreter's run(), the one path every launch takes: (1) record launches made as kernel[grid](...)
    outside _launch.launch (kernels not yet migrated to it; those through launch() are recorded by its own
    recording()); (2) unless `execute`, skip running the kernel: a launch's configuration depends on shapes, dtypes
    and strides, not on values, so the check needs no results and the interpreter's cost goes away."""
    from triton.runtime.interpreter import InterpretedFunction
    from vkernels.triton import _launch
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        if sys._getframe(2).f_code is not _launch.launch.__code__ and not warmup:  # run <- __getitem__ <- caller
            g = grid(kwargs) if callable(grid) else grid
            callback(self, tuple(int(v) for v in g) + (1,) * (3 - len(g)), args, kwargs)
        if execute:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        return None

    InterpretedFunction.run = run
    try:
        yield
    finally:
        InterpretedFunction.run = original


def record(ops_filter: str | None, full: bool, execute: bool = False) -> dict:
    """Run the cases for every arch and return {"configs": [Config], "case_errors": [...], "grid_errors": [...]}."""
    import torch
    from vkernels.triton import _launch

    torch.set_num_threads(1)
    spec = _Specialiser()
    configs: dict = {}
    case_errors, grid_errors = [], []
    current = {"arch": None, "case": None}

    def on_launch(via):
        def cb(kernel, grid, args, kwargs):
            cfg = spec(kernel, current["arch"], args, kwargs)
            cfg = configs.setdefault(cfg.key(), cfg)
            if current["case"] not in cfg.cases:
                cfg.cases.append(current["case"])
            cfg.via.add(via)
            if via == "raw" and (grid[1] > _launch.MAX_GRID[1] or grid[2] > _launch.MAX_GRID[2]):
                grid_errors.append((cfg.name, current["case"], grid))
        return cb

    cases = [(op, label, thunk) for op, mod in discover_cases(ops_filter) for label, thunk in mod.gpu_static_cases(full)]
    for arch in ARCHS:
        current["arch"] = arch
        with _launch.tune_for(arch), _launch.recording(on_launch("launch")), \
                _launch_hook(on_launch("raw"), execute):
            for op, label, thunk in cases:
                current["case"] = f"{op}: {label}"
                try:
                    thunk()
                except Exception as e:  # a case that cannot run hides its launches: a failure of the check
                    case_errors.append((arch, current["case"], f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
    return {"configs": list(configs.values()), "case_errors": case_errors, "grid_errors": grid_errors,
            "n_cases": len(cases)}


def derive_index64(configs: list[Config]) -> list[Config]:
    """For every configuration with 64-bit-index constexprs (INDEX64_RE) off, the same configuration with them on:
    what the launcher would launch for the same dtypes, options and tiles on tensors past 2^31 elements. Every other
    specialisation is kept as recorded; a real launch that large would also pass its element count (and maybe an
    outer stride) as an i64 scalar instead of i32, which this does not model. Configurations a case recorded are not
    repeated."""
    seen = {c.key() for c in configs}
    out = []
    for cfg in configs:
        off = [p for p in cfg.index64_paths() if cfg.constexprs.get(p) in (False, 0)]
        if not off:
            continue
        new = replace(cfg, constexprs={**cfg.constexprs, **{p: True for p in off}}, cases=list(cfg.cases),
                      via=set(cfg.via), derived=" ".join(f"{cfg.param_name(p)}=True" for p in off))
        if new.key() not in seen:
            seen.add(new.key())
            out.append(new)
    return out


def index64_gaps(recorded: list[Config], compiled: list[Config]) -> list[str]:
    """kernel x arch x dtype class groups (of the recorded ones) with a 64-bit-index constexpr that no compiled
    configuration turns on."""
    on = {(c.kernel, c.arch, c.dtype_class(), p) for c in compiled for p in c.index64_paths() if c.constexprs.get(p)}
    gaps = []
    for c in recorded:
        for p in c.index64_paths():
            if (c.kernel, c.arch, c.dtype_class(), p) not in on:
                gaps.append(f"{c.kernel} sm_{c.arch} {c.dtype_class()}: {c.param_name(p)}=True compiled by no "
                            f"configuration")
                on.add((c.kernel, c.arch, c.dtype_class(), p))
    return gaps


def index64_params() -> dict:
    """module:kernel -> names of its 64-bit-index constexpr parameters, for every launched kernel (from the source)."""
    out = {}
    launched = launched_kernels()
    for path in sorted((ROOT / "vkernels" / "triton").glob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            key = f"vkernels.triton.{path.stem}:{getattr(n, 'name', '')}"
            if isinstance(n, ast.FunctionDef) and key in launched:
                names = [a.arg for a in n.args.args if a.annotation is not None
                         and ast.unparse(a.annotation).endswith("constexpr") and INDEX64_RE.match(a.arg)]
                if names:
                    out[key] = names
    return out


def launched_kernels() -> dict:
    """module:name of every @triton.jit function in vkernels/triton that a launcher launches (kernel[grid](...) or
    launch(kernel, ...)), found in the source: the kernels the cases must cover."""
    out = {}
    for path in sorted((ROOT / "vkernels" / "triton").glob("*.py")):
        tree = ast.parse(path.read_text())
        jitted = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                  and any("jit" in ast.unparse(d) for d in n.decorator_list)}
        launched = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in jitted:
                launched.add(n.value.id)
            if isinstance(n, ast.Call) and ast.unparse(n.func).split(".")[-1] == "launch" and n.args:
                a = n.args[0]
                if isinstance(a, ast.Name) and a.id in jitted:
                    launched.add(a.id)
        for name in launched:
            out[f"vkernels.triton.{path.stem}:{name}"] = path.name
    return out


# ----------------------------------------------------------------------------------------------------------------
# COMPILE (worker processes, no TRITON_INTERPRET)
# ----------------------------------------------------------------------------------------------------------------

_PTXAS_RE = {
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "regs": re.compile(r"Used (\d+) registers"),
}


def _worker_init(cache_dir):
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    sys.path.insert(0, str(ROOT))


def _ptxas_log_knob(on: bool):
    """Make Triton print ptxas' -v log (it runs ptxas -v and throws the log away otherwise)."""
    try:
        from triton import knobs
        knobs.nvidia.dump_ptxas_log = on
        return True
    except (ImportError, AttributeError):
        os.environ["TRITON_DUMP_PTXAS_LOG"] = "1" if on else "0"
        return True


def compile_one(cfg: Config) -> Result:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import resource
    t0, c0 = time.perf_counter(), _cpu_time(resource)
    res = Result()
    module, name = cfg.kernel.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
        constexprs = {k: _unportable(v) for k, v in cfg.constexprs.items()}
        src = _ast_source(ASTSource, fn, cfg.signature, constexprs, cfg.attrs)
        _ptxas_log_knob(True)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", cfg.arch, 32), options=dict(cfg.options))
        text = log.getvalue()
        for k, rx in _PTXAS_RE.items():
            m = rx.search(text)
            if m is None:
                raise RuntimeError(f"no '{k}' in ptxas' log: {text[:500]!r}")
            setattr(res, k, int(m.group(1)))
        res.shared = int(compiled.metadata.shared)
        ptx = compiled.asm["ptx"]
        res.wgmma = "wgmma.mma_async" in ptx
        res.mma = res.wgmma or re.search(r"\bmma\.sync", ptx) is not None
        res.ok = True
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        lines = [ln for ln in msg.splitlines() if ln.strip()]
        # the head names the kernel line, the tail says what the compiler objected to
        res.error = "\n".join(lines if len(lines) <= 16 else lines[:8] + ["..."] + lines[-8:])[:3000]
    res.seconds = time.perf_counter() - t0
    res.cpu_seconds = _cpu_time(resource) - c0
    return res


def _cpu_time(resource):
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _ast_source(ASTSource, fn, signature, constexprs, attrs):
    import inspect
    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in params:
        return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return ASTSource(fn=fn, signature=signature, constants=constexprs, attrs=attrs)  # older spelling


def compile_all(configs: list[Config], jobs: int, progress=True, partial_csv=None, commit="") -> list[Result]:
    """Compile in `jobs` spawned workers with a fresh, empty Triton cache (no result is reused). With partial_csv,
    each result is also appended there as it comes (an interrupted run's work can be taken back with --reuse)."""
    partial = None
    if partial_csv:
        partial = open(partial_csv, "w", newline="")
        writer = csv.DictWriter(partial, fieldnames=CSV_FIELDS)
        writer.writeheader()
    import multiprocessing as mp
    if not configs:
        return []
    env_interp = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-static-cache-") as cache:
            ctx = mp.get_context("spawn")
            with ctx.Pool(jobs, initializer=_worker_init, initargs=(cache,)) as pool:
                out = []
                order = sorted(range(len(configs)), key=lambda i: configs[i].kernel)
                done = {}
                t0 = time.perf_counter()
                for n, (i, r) in enumerate(pool.imap_unordered(_compile_indexed, [(i, configs[i]) for i in order],
                                                               chunksize=1), 1):
                    done[i] = r
                    if partial:
                        writer.writerow(csv_row(configs[i], r, violations(configs[i], r), commit))
                        partial.flush()
                    if progress and (n % 25 == 0 or n == len(configs)):
                        print(f"  compiled {n}/{len(configs)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
                out = [done[i] for i in range(len(configs))]
    finally:
        if env_interp is not None:
            os.environ["TRITON_INTERPRET"] = env_interp
        if partial:
            partial.close()
    return out


def _compile_indexed(item):
    i, cfg = item
    return i, compile_one(cfg)


# ----------------------------------------------------------------------------------------------------------------
# CHECK
# ----------------------------------------------------------------------------------------------------------------

def occupancy(regs: int, shared: int, num_warps: int, arch: int) -> int:
    """Resident warps per SM from registers, shared memory and warps per block (CUDA occupancy rules)."""
    if regs <= 0:
        return 0
    regs_per_warp = math.ceil(regs * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (REGS_PER_SM // regs_per_warp) // num_warps
    by_smem = SMEM_PER_SM[arch] // (shared + SMEM_RESERVED_PER_BLOCK) if shared else MAX_BLOCKS_PER_SM
    by_warps = MAX_WARPS_PER_SM // num_warps
    return min(by_regs, by_smem, by_warps, MAX_BLOCKS_PER_SM) * num_warps


def violations(cfg: Config, res: Result) -> list[str]:
    """What fails the check for one compiled configuration (empty when it passes)."""
    if not res.ok:
        return ["compile error: " + res.error.splitlines()[0][:200] if res.error else "compile error"]
    out = []
    limit = FP64_SPILL_LIMIT if cfg.dtype_class() == "fp64" else 0
    if res.spills > limit:
        out.append(f"spills {res.spills} B (stores {res.spill_stores} + loads {res.spill_loads}; limit {limit})")
    if res.shared > SMEM_PER_BLOCK[cfg.arch]:
        out.append(f"shared memory {res.shared} B > {SMEM_PER_BLOCK[cfg.arch]} B per block on sm_{cfg.arch}")
    return out


def ci_subset(configs: list[Config], ones: bool = False) -> list[Config]:
    """A covering subset: per kernel x arch x dtype class (fp16 and bf16 are one), every value that any declared
    constexpr takes (branch flags, activation / mode enums, filter sizes), every tile shape and every num_warps /
    num_stages the launchers chose appear in at least one compiled configuration. Greedy: the configuration that
    covers the most values not yet covered, larger tiles first on ties. Combinations are not all compiled: that is
    the full set (`make gpu-static`). `ones`: also every pattern of integer arguments specialised to 1."""
    groups = {}
    for cfg in configs:
        groups.setdefault((cfg.kernel, cfg.arch, cfg.dtype_class()), []).append(cfg)
    picked = []
    for group in groups.values():
        features = {id(c): _branch_values(c, ones) for c in group}
        todo = set().union(*features.values())
        while todo:
            best = max(group, key=lambda c: (len(features[id(c)] & todo), _tile_size(c), c.num_warps))
            picked.append(best)
            todo -= features[id(best)]
    return picked


def derived_subset(derived: list[Config]) -> list[Config]:
    """The derived INT64=True configurations compiled by default: covering on their own (not one per group among
    the recorded ones), with every pattern of unit-specialised arguments too. The 64-bit branch's spills depend on
    the tile, the warps and on which index terms a 1 removed (upfirdn2d's up=down=1 pass spilled, its other passes
    did not)."""
    return ci_subset(derived, ones=True)


def ci_cover(recorded: list[Config], derived: list[Config]) -> list[Config]:
    """What CI compiles: the covering subset of the recorded configurations and `derived_subset` of the derived
    ones (`derived` is already that unless --derive-all)."""
    return ci_subset(recorded) + derived_subset(derived)


def _tile_size(cfg: Config) -> int:
    return math.prod(v for v in cfg.constexprs.values() if _is_tile(v))


def _is_tile(v) -> bool:
    # Block shapes are the constexpr ints >= 16; flags, enums and unit strides are smaller or not ints.
    return isinstance(v, int) and not isinstance(v, bool) and v >= 16


def _branch_values(cfg: Config, ones: bool = False) -> set:
    declared = {tuple(p) for p in cfg.declared}
    vals = {(path, repr(v)) for path, v in cfg.constexprs.items() if not _is_tile(v) and path in declared}
    vals.add(("tiles", tuple(sorted((p, v) for p, v in cfg.constexprs.items() if _is_tile(v)))))
    if ones:  # integer arguments equal to 1 are specialised away (a factor of 1, a unit stride): other code
        vals.add(("ones", tuple(sorted(p for p in cfg.constexprs if p not in declared))))
    return vals | {("num_warps", cfg.num_warps), ("num_stages", cfg.num_stages)}


# ----------------------------------------------------------------------------------------------------------------
# CUDA C++ kernels (ptxas resource usage of the built extension)
# ----------------------------------------------------------------------------------------------------------------

def cuobjdump() -> Path | None:
    """cuobjdump from the CUDA toolkit behind nvcc (CUDA_HOME or the folder a PATH shim execs, as setup.py finds it),
    else the copy Triton bundles."""
    import importlib.util
    import shutil
    try:  # setup.py's own _cuda_home (importing setup.py would run setup(), so only that function is taken)
        tree = ast.parse((ROOT / "setup.py").read_text())
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_cuda_home")
        ns = {"os": os, "shutil": shutil}
        exec(compile(ast.Module([fn], []), "setup.py", "exec"), ns)
        home = ns["_cuda_home"]()
    except Exception:
        home = os.environ.get("CUDA_HOME")
    if home and (Path(home) / "bin" / "cuobjdump").exists():
        return Path(home) / "bin" / "cuobjdump"
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.exists():
            return bundled
    return None


_CUOBJ_FN = re.compile(r"Function (\S+):")
_CUOBJ_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def cuda_resources(so=None) -> tuple[list[dict], str]:
    """One row per (CUDA kernel, sm_XX) of vkernels/_C*.so, or ([], why not)."""
    so = [so] if so else sorted((ROOT / "vkernels").glob("_C*.so"))
    if not so:
        return [], "no vkernels/_C*.so built"
    tool = cuobjdump()
    if tool is None:
        return [], "no cuobjdump (neither in the CUDA toolkit nor bundled with Triton)"
    out = subprocess.run([str(tool), "--dump-resource-usage", str(so[0])], capture_output=True, text=True)
    if out.returncode != 0:
        return [], f"cuobjdump failed: {out.stderr.strip()[:200]}"
    return parse_resource_usage(out.stdout), ""


def parse_resource_usage(text: str) -> list[dict]:
    """cuobjdump --dump-resource-usage output -> [{kernel, arch, regs, stack, shared, local}]."""
    rows, arch = [], None
    for line in text.splitlines():
        m = re.search(r"arch = sm_(\d+)", line)
        if m:
            arch = int(m.group(1))
        m = _CUOBJ_FN.search(line)
        if m:
            rows.append({"kernel": _demangle(m.group(1)), "arch": arch})
            continue
        m = _CUOBJ_RES.search(line)
        if m and rows:
            r = rows[-1]
            r.update(regs=int(m.group(1)), stack=int(m.group(2)), shared=int(m.group(3)), local=int(m.group(4)))
    return [r for r in rows if "regs" in r]


def _demangle(name: str) -> str:
    try:
        out = subprocess.run(["c++filt", name], capture_output=True, text=True)
        return out.stdout.strip() or name
    except OSError:
        return name


def cuda_violations(row: dict) -> list[str]:
    """cuobjdump gives ptxas' allocation but no spill count: a stack frame is local memory, where ptxas puts spilled
    registers (and local arrays), so the spill rule applies to it (fp64 kernels: up to 128 B, as in Triton's rule).
    SHARED is static shared memory; dynamic shared memory is sized at launch and not seen here."""
    out = []
    limit = FP64_SPILL_LIMIT if "double" in row["kernel"] else 0
    if row["stack"] + row["local"] > limit:
        out.append(f"stack frame {row['stack']} B + local {row['local']} B (spills or local arrays; limit {limit})")
    if row.get("arch") in SMEM_PER_BLOCK and row["shared"] > SMEM_PER_BLOCK[row["arch"]]:
        out.append(f"static shared memory {row['shared']} B > {SMEM_PER_BLOCK[row['arch']]} B")
    return out


# ----------------------------------------------------------------------------------------------------------------
# REPORT
# ----------------------------------------------------------------------------------------------------------------

# H100 SXM datasheet peaks (dense, not measured): HBM3 bandwidth and FLOP/s per precision, with and without tensor
# cores. fp16/bf16 without tensor cores computes in fp32 in our kernels, so it gets the fp32 figure.
H100_BW = 3.35e12
H100_PEAK = {("16bit", True): 989e12, ("fp32", True): 495e12, ("fp64", True): 67e12,
             ("16bit", False): 67e12, ("fp32", False): 67e12, ("fp64", False): 34e12}
HEADLINE_OPS = ("infonce_bank_loss", "infonce_bank_partial", "compact_bilinear_pooling", "upsample_norm_act",
                "spade_norm_act", "filtered_lrelu", "bias_act", "upfirdn2d")
DOCS = ROOT / "docs"


def benchmark_cases(op: str):
    """The CUDA cases of benchmarks/bench_<op>.py (their headline sizes, bytes and FLOPs per call), built on the meta
    device so that no GPU and no memory is needed."""
    import torch
    from torch.overrides import TorchFunctionMode

    class CudaToMeta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "meta"
            if func is torch.Tensor.cuda:
                return args[0]
            if func is torch.Tensor.to:
                args = tuple("meta" if isinstance(a, (str, torch.device)) and str(a).startswith("cuda") else a
                             for a in args)
            return func(*args, **kwargs)

    sys.path.insert(0, str(ROOT))
    mod = importlib.import_module(f"benchmarks.bench_{op}")
    with CudaToMeta():
        return mod.cases("cuda", False)


def roofline_rows(rows) -> tuple[list[dict], list[str]]:
    """H100 roofline time of each headline op's benchmark case; the peak is the tensor-core one when the op's
    kernels for that dtype class use mma / wgmma on sm_90 (from this run's compiles)."""
    import torch
    tc = {}
    for cfg, res, _ in rows:
        if cfg.arch == 90 and res.ok:
            for op in cfg.ops():
                key = (op, cfg.dtype_class())
                tc[key] = tc.get(key, False) or res.mma
    out, notes = [], []
    for op in HEADLINE_OPS:
        try:
            cases = benchmark_cases(op)
        except Exception as e:
            notes.append(f"{op}: benchmark cases not built on meta ({type(e).__name__}: {str(e)[:120]})")
            continue
        for c in cases:
            cls = {torch.float64: "fp64", torch.float32: "fp32"}.get(c.dtype, "16bit")
            uses_tc = tc.get((op, cls), False)
            known = (op, cls) in tc  # else the op's kernels were not compiled in this run
            peak = H100_PEAK[cls, uses_tc]
            t_mem, t_flop = c.bytes / H100_BW, c.flops / peak
            out.append(dict(op=op, case=c.size, dtype=str(c.dtype).removeprefix("torch."), bytes=c.bytes,
                            flops=c.flops, peak=f"{peak / 1e12:.0f} TFLOP/s {'tensor' if uses_tc else 'no tensor'}"
                            + ("" if known else " (not compiled in this run)"),
                            t_mem_us=t_mem * 1e6, t_flop_us=t_flop * 1e6, t_us=max(t_mem, t_flop) * 1e6,
                            bound="memory" if t_mem >= t_flop else "compute"))
    return out, notes


def _per_kernel(rows):
    agg = {}
    for cfg, res, bad in rows:
        a = agg.setdefault((cfg.kernel, cfg.arch), dict(n=0, errors=0, spilling=0, smem=0, regs=0, spill=0,
                                                         shared=0, warps=None, tc=set(), bad=0))
        a["n"] += 1
        a["bad"] += bool(bad)
        if not res.ok:
            a["errors"] += 1
            continue
        a["spilling"] += res.spills > 0
        a["smem"] += res.shared > SMEM_PER_BLOCK[cfg.arch]
        a["regs"], a["spill"], a["shared"] = max(a["regs"], res.regs), max(a["spill"], res.spills), max(a["shared"],
                                                                                                       res.shared)
        w = occupancy(res.regs, res.shared, cfg.num_warps, cfg.arch)
        a["warps"] = w if a["warps"] is None else min(a["warps"], w)
        a["tc"].add("wgmma" if res.wgmma else "mma" if res.mma else "no")
    return agg


_HEAD = []


def _git_head():
    """The short commit hash of the kernels and cases compiled, with "+dirty" when vkernels/ or tests/ have
    uncommitted changes."""
    if not _HEAD:
        try:
            head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "vkernels", "tests"], cwd=ROOT,
                                   capture_output=True, text=True).stdout.strip()
            _HEAD.append(head + ("+dirty" if dirty else ""))
        except OSError:
            _HEAD.append("?")
    return _HEAD[0]


def _compare_other_triton(rows) -> list[str]:
    """Lines comparing this run with the CSV of a run under another Triton version (docs/gpu-static-triton-*.csv)."""
    import triton
    lines = []
    mine = {(r[0].kernel, f"sm_{r[0].arch}", r[0].types_text(), r[0].constexpr_text(), str(r[0].num_warps),
             str(r[0].num_stages)): r for r in rows}
    for path in sorted(DOCS.glob("gpu-static-triton-*.csv")):
        with open(path) as f:
            other = list(csv.DictReader(f))
        if not other or other[0]["triton"] == triton.__version__:
            continue
        ver = other[0]["triton"]
        n_bad = sum(1 for r in other if r["violations"])
        keys = {(r["kernel"], r["arch"], r["dtypes"], r["constexprs"], r["num_warps"], r["num_stages"])
                for r in other}
        absent = [k for k in mine if k not in keys]
        names = sorted({k[0].split(":")[1] for k in absent})
        lines += [f"### Triton {ver} (`{path.relative_to(ROOT)}`)", "",
                  f"It holds {len(mine) - len(absent)} of this report's {len(mine)} configurations"
                  + (f"; the other {len(absent)} (of {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}) "
                     f"were not compiled with {ver} (an interrupted run: `run --reuse` on this CSV completes it, "
                     "see docs/performance.md)." if absent else ".")
                  + f" Commits of its rows: {', '.join(sorted({r.get('commit') or '?' for r in other}))}.", "",
                  f"{len(other)} compiles: {sum(1 for r in other if r['ok'] == '0')} errors, "
                  f"{sum(1 for r in other if int(r['spill_stores']) + int(r['spill_loads']) > 0)} spilling, "
                  f"{sum(1 for r in other if int(r['shared']) > SMEM_PER_BLOCK[int(r['arch'][3:])])} over shared "
                  f"memory; {n_bad} configurations fail the check.", ""]
        diffs, n_verdict, n_spill = [], 0, 0
        for r in other:
            k = (r["kernel"], r["arch"], r["dtypes"], r["constexprs"], r["num_warps"], r["num_stages"])
            if k not in mine:
                continue
            cfg, res, bad = mine[k]
            o_spill = int(r["spill_stores"]) + int(r["spill_loads"])
            n_verdict += bool(r["violations"]) != bool(bad)
            n_spill += o_spill != res.spills
            if bool(r["violations"]) != bool(bad) or abs(int(r["regs"]) - res.regs) > 16 or o_spill != res.spills:
                diffs.append(f"| {cfg.name} | {r['arch']} | {r['dtypes']} | {r['constexprs'][:60]} | "
                             f"{r['regs']} / {res.regs} | {o_spill} / {res.spills} | {r['shared']} / {res.shared} | "
                             f"{r['violations'] or r['error'] or 'ok'} / {'; '.join(bad) or 'ok'} |")
        lines += [f"{len(diffs)} configurations differ by more than 16 registers, in spills or in the verdict: "
                  f"{n_verdict} in the verdict, {n_spill} in spills (fp64 within the allowance unless the verdict "
                  f"differs), the rest in register allocation only. {ver} / {triton.__version__}:", ""]
        if diffs:
            lines += ["| kernel | arch | dtypes | constexprs | regs | spill B | shared B | verdict |",
                      "|---|---|---|---|---|---|---|---|", *diffs[:80]]
            if len(diffs) > 80:
                lines.append(f"\n... and {len(diffs) - 80} more (compare the two CSVs).")
        else:
            lines.append("none.")
        lines.append("")
    return lines


def _proven_section(rows) -> list[str]:
    """What a clean run of this check proves without a GPU, and what it cannot."""
    import triton
    n_derived = sum(1 for c, _, _ in rows if c.derived)
    n_i64 = len({c.kernel for c, _, _ in rows if c.derived})
    mine = {_row_key(c) for c, _, _ in rows}
    versions = [f"triton {triton.__version__} for all {len(mine)} distinct configurations ({len(rows)} compiles)"]
    for path in sorted(DOCS.glob("gpu-static-triton-*.csv")):
        with open(path) as f:
            other = list(csv.DictReader(f))
        if other and other[0]["triton"] != triton.__version__:
            theirs = {(r["kernel"], r["arch"], r["dtypes"], r["constexprs"], r["num_warps"], r["num_stages"])
                      for r in other}
            n = sum(1 for k in mine if k in theirs)
            versions.append(f"triton {other[0]['triton']} for {n} of them")
    return [
        "## What this proves without a GPU, and what it does not", "",
        f"Proven, with {' and '.join(versions)} (the GPU machines run 3.6.0; see the last section): every configuration "
        "the launchers choose for the recorded op cases, on sm_80 and on sm_90, compiles with Triton's own compiler "
        "and ptxas; none spills registers (fp64: at most 128 B); each fits the per-block shared memory of the arch "
        "it was chosen for; every launch goes through `_launch.launch`, which keeps grid axes 1 and 2 within 65,535. "
        f"The 64-bit-index branches ({n_i64} kernels have an `INT64` constexpr) are reached only by tensors past "
        f"2^31 elements, which no case records: recorded configurations with `INT64=False` are compiled again with "
        f"`INT64=True`, all other specialisations unchanged ({n_derived} rows marked `derived (INT64=True)` in the "
        "CSV: per kernel x arch x dtype class, enough of them that every constexpr value, tile, num_warps, "
        "num_stages and pattern of arguments specialised to 1 is compiled with the flag on; CI compiles the same "
        "derived rows; `--derive-all` compiles every one). A real launch that large would "
        "also pass the element count, and maybe an outer stride, as an i64 scalar: not modelled. The CUDA C++ "
        "kernels' ptxas allocation (registers, stack, static shared memory) "
        "follows the same rule.", "",
        "Not proven: that any kernel computes the right values on a GPU (the tests run them in the Triton "
        "interpreter, which computes exactly where the GPU uses approximate exp / div / sqrt and TF32 tensor cores, "
        "and runs programs one after another, so races and ordering between programs are never exercised); speed "
        "(registers, occupancy and the roofline below are predictions, not measurements); shapes whose launcher "
        "choices no case records (the cases cover every branch and tile the launchers choose for them, not every "
        "shape); the CUDA C++ kernels' dynamic shared memory (sized at launch) and any runtime launch failure.", ""]


def write_report(summary, cuda_rows, cuda_note, scope="the whole set"):
    """docs/gpu-static.md + docs/gpu-static.csv from a full run."""
    import triton
    DOCS.mkdir(exist_ok=True)
    rows = summary["rows"]
    write_csv(rows, DOCS / "gpu-static.csv", summary["commit"])
    agg = _per_kernel(rows)
    n_err = sum(1 for _, r, _ in rows if not r.ok)
    n_spill = sum(1 for _, r, _ in rows if r.ok and r.spills)
    n_smem = sum(1 for c, r, _ in rows if r.ok and r.shared > SMEM_PER_BLOCK[c.arch])
    L = ["# Static GPU report", "",
         f"Generated by `python tools/gpu_static.py report` (`make gpu-static`) at commit {summary['commit']} with triton "
         f"{triton.__version__}, over {scope}, without a GPU: {summary['n_cases']} op cases were run through the Triton "
         f"interpreter with the launchers tuned for sm_80 and sm_90, every launch specialised by Triton's CUDA "
         f"binder, and each distinct configuration compiled for its arch (ptxas from Triton's bundle). Every "
         f"configuration is a row of [gpu-static.csv](gpu-static.csv).", "",
         f"**{len(rows)} compiles of {len({c.kernel for c, _, _ in rows})} kernels: {n_err} compile errors, "
         f"{n_spill} spilling, {n_smem} over the per-block shared memory limit; "
         f"{n_failures(summary)} violations of the check** (rules: no compile error; no spill for fp16/bf16/fp32, "
         f"at most {FP64_SPILL_LIMIT} B for fp64; shared memory within {SMEM_PER_BLOCK[80]:,} B on sm_80, "
         f"{SMEM_PER_BLOCK[90]:,} B on sm_90; every launched kernel recorded).", "",
         "Warps/SM is the occupancy the registers, shared memory and num_warps allow (65,536 registers, 64 warps, "
         "32 blocks per SM; 164 KiB / 228 KiB shared memory per SM with 1 KiB reserved per block).", ""]
    L += _proven_section(rows)
    table = failure_table(summary)
    if table:
        L += ["## Violations", "", "```", table, "```", ""]
    if summary["raw"]:
        L += ["Kernels still launched as `kernel[grid](...)` outside `_launch.launch` (recorded through the "
              "interpreter fallback): " + ", ".join(f"`{k}`" for k in summary["raw"]) + ".", ""]
    L += ["## Triton kernels", "",
          "| kernel | arch | configs | errors | spilling | over smem | max regs | max spill B | max shared B | "
          "min warps/SM | tensor cores |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (kernel, arch), a in sorted(agg.items()):
        L.append(f"| {kernel.replace('vkernels.triton.', '')} | sm_{arch} | {a['n']} | {a['errors']} | "
                 f"{a['spilling']} | {a['smem']} | {a['regs']} | {a['spill']} | {a['shared']} | "
                 f"{a['warps'] if a['warps'] is not None else '-'} | {'/'.join(sorted(a['tc'])) or '-'} |")
    L += ["", "## CUDA C++ kernels", ""]
    if cuda_rows:
        L += ["From `cuobjdump --dump-resource-usage` on the built extension (ptxas' allocation: local memory is "
              "where spills go).", "", "| kernel | arch | regs | stack B | local B | shared B | verdict |",
              "|---|---|---|---|---|---|---|"]
        for r in sorted(cuda_rows, key=lambda r: (r["kernel"], r["arch"] or 0)):
            bad = cuda_violations(r)
            L.append(f"| `{r['kernel'][:110]}` | sm_{r['arch']} | {r['regs']} | {r['stack']} | {r['local']} | "
                     f"{r['shared']} | {'; '.join(bad) or 'ok'} |")
    else:
        L.append(f"Not checked: {cuda_note}.")
    roof, notes = roofline_rows(rows)
    L += ["", "## H100 roofline of the headline ops at their benchmark sizes", "",
          "Bytes and FLOPs per call are the benchmark cases' own (`benchmarks/bench_<op>.py`, CUDA sizes). Peaks "
          "are H100 SXM datasheet figures, not measurements: HBM3 3.35 TB/s; dense fp16/bf16 tensor 989 TFLOP/s, "
          "tf32 tensor 495, fp32 non-tensor 67, fp64 tensor 67 / non-tensor 34. The tensor-core peak is used where "
          "the op's compiled sm_90 kernels for that dtype contain mma/wgmma. The first GPU run is compared with "
          "these times.", "",
          "| op | case | dtype | MB | GFLOP | peak used | memory µs | compute µs | roofline µs | bound |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in roof:
        L.append(f"| {r['op']} | {r['case']} | {r['dtype']} | {r['bytes'] / 1e6:.1f} | {r['flops'] / 1e9:.2f} | "
                 f"{r['peak']} | {r['t_mem_us']:.1f} | {r['t_flop_us']:.1f} | {r['t_us']:.1f} | {r['bound']} |")
    L += [f"\n{n}" for n in notes]
    other = _compare_other_triton(rows)
    if other:
        L += ["", "## Other Triton versions", "", *other]
    (DOCS / "gpu-static.md").write_text("\n".join(L) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------

def run_record_child(ops_filter, full, execute=False) -> dict:
    """RECORD in a child process with TRITON_INTERPRET=1 (kernels must be defined under it)."""
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        out = f.name
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_record", "--out", out] + (["--execute"] if execute else [])
    if ops_filter:
        cmd += ["--ops", ops_filter]
    if full:
        cmd += ["--full"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"recording failed (exit {proc.returncode})")
    with open(out, "rb") as f:
        data = pickle.load(f)
    os.unlink(out)
    data["configs"] = [Config(**c) for c in data["configs"]]
    return data


def _kernel_sources(module: str) -> list[str]:
    """vkernels/triton files a kernel's module is built from: the module and what it imports from vkernels.triton,
    transitively."""
    todo, seen = [module.rsplit(".", 1)[1]], set()
    while todo:
        name = todo.pop()
        path = ROOT / "vkernels" / "triton" / f"{name}.py"
        if name in seen or not path.exists():
            continue
        seen.add(name)
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("vkernels.triton"):
                todo += [n.module.rsplit(".", 1)[1]] if n.module != "vkernels.triton" else [a.name for a in n.names]
    return sorted(f"vkernels/triton/{n}.py" for n in seen)


def reusable_results(spec: str) -> dict:
    """`CSV[@commit]` -> {row key: (Result, commit)} of the rows that a compile now would repeat exactly: made with
    this Triton, at a commit (the row's, or @commit for CSVs without a commit column) whose kernel sources (the
    kernel's module and what it imports from vkernels.triton) equal the working tree's, and whose key is unique in
    the CSV (the key leaves out divisibility attributes)."""
    import triton
    path, _, commit_all = spec.partition("@")
    counts, rows = {}, []
    with open(path) as f:
        for r in csv.DictReader(f):
            k = (r["kernel"], r["arch"], r["dtypes"], r["constexprs"], r["num_warps"], r["num_stages"])
            counts[k] = counts.get(k, 0) + 1
            rows.append((k, r))
    same = {}
    out = {}
    for k, r in rows:
        commit = commit_all or r.get("commit", "")
        if counts[k] > 1 or r["triton"] != triton.__version__ or not commit or commit.endswith("+dirty"):
            continue
        module = r["kernel"].split(":")[0]
        if (commit, module) not in same:
            diff = subprocess.run(["git", "diff", "--quiet", commit, "--", *_kernel_sources(module)], cwd=ROOT)
            same[commit, module] = diff.returncode == 0
        if same[commit, module]:
            tc = r["tensor_cores"]
            out[k] = (Result(ok=r["ok"] == "1", error=r["error"], regs=int(r["regs"]),
                             spill_stores=int(r["spill_stores"]), spill_loads=int(r["spill_loads"]),
                             stack=int(r["stack"]), shared=int(r["shared"]), mma=tc in ("mma", "wgmma"),
                             wgmma=tc == "wgmma"), commit)
    return out


def _row_key(cfg) -> tuple:
    return (cfg.kernel, f"sm_{cfg.arch}", cfg.types_text(), cfg.constexpr_text(), str(cfg.num_warps),
            str(cfg.num_stages))


def _op_matches(op: str, ops_filter: str) -> bool:
    return any(s in op for s in ops_filter.split(","))


def check(ops_filter=None, kernels_filter=None, full=False, ci=False, jobs=2, csv_path=None, archs=ARCHS,
          verbose=True, execute=False, merge=None, reuse=None, derive_all=False, partial_csv=None):
    """The whole check; returns a summary dict (rows, failures, timings). With `merge` (a CSV of an earlier whole-set
    run with this Triton), every op's cases are recorded, the kernels that the ops in `ops_filter` launch (or define)
    are compiled in every configuration any op launches, and the CSV's rows of all other kernels are kept."""
    import triton
    base = []
    if merge:
        if not (ops_filter or kernels_filter) or ci or not full or archs != ARCHS:
            raise SystemExit("--merge takes --ops and/or --kernels, and the whole set of both archs (no "
                             "--ci/--quick/--arch)")
        base = read_csv(merge)
        versions = {v for _, _, v in base}
        if versions != {triton.__version__}:
            raise SystemExit(f"{merge} was made with triton {sorted(versions)}, this is {triton.__version__}")
    commit = _git_head()
    t0 = time.perf_counter()
    rec = run_record_child(None if merge else ops_filter, full, execute)
    t_rec = time.perf_counter() - t0
    configs = [c for c in rec["configs"] if c.arch in archs]
    if kernels_filter:
        configs = [c for c in configs if any(s in c.kernel for s in kernels_filter.split(","))]
    kept = []
    if merge:
        if ops_filter:
            redo = {c.kernel for c in configs if any(_op_matches(op, ops_filter) for op in c.ops())}
            redo |= {c.kernel for c, _, _ in base if any(_op_matches(op, ops_filter) for op in c.ops())}
            redo |= {k for k in launched_kernels() if _op_matches(k.split(":")[0].rsplit(".", 1)[1], ops_filter)}
        else:
            redo = {c.kernel for c in configs} | {c.kernel for c, _, _ in base} | set(launched_kernels())
        if kernels_filter:
            redo = {k for k in redo if any(s in k for s in kernels_filter.split(","))}
        configs = [c for c in configs if c.kernel in redo]
        kept = [(c, r, violations(c, r)) for c, r, _ in base if c.kernel not in redo]
        if verbose:
            print(f"merge: recompiling {len(redo)} kernels ({', '.join(sorted(k.split(':')[1] for k in redo))}), "
                  f"keeping {len(kept)} rows of {merge}", file=sys.stderr)
    n_recorded = len(configs)
    recorded = configs
    derived = derive_index64(recorded)
    if not derive_all:  # the INT64 branch is index arithmetic: cover its values x tiles x warps, not every product
        derived = derived_subset(derived)
    configs = ci_cover(recorded, derived) if ci else recorded + derived
    if verbose:
        print(f"recorded {n_recorded} configurations from {rec['n_cases']} cases x {len(ARCHS)} archs in "
              f"{t_rec:.0f} s, derived {len(derived)} with 64-bit indices on; compiling {len(configs)} with {jobs} "
              f"workers", file=sys.stderr)
    old = {}
    for spec in (reuse.split(",") if reuse else []):  # the first CSV that has a configuration wins
        old = {**reusable_results(spec), **old}
    keys = [_row_key(c) for c in configs]
    counts = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    unique = {k for k, n in counts.items() if n == 1}
    todo = [c for c, k in zip(configs, keys) if not (k in unique and k in old)]
    if old and verbose:
        print(f"reuse: {len(configs) - len(todo)} results taken from {reuse}, compiling {len(todo)}", file=sys.stderr)
    t1 = time.perf_counter()
    compiled = dict(zip(map(id, todo), compile_all(todo, jobs, progress=verbose, partial_csv=partial_csv,
                                                     commit=commit)))
    t_comp = time.perf_counter() - t1
    results = []
    for cfg, k in zip(configs, keys):
        if id(cfg) in compiled:
            results.append(compiled[id(cfg)])
        else:
            res, cfg.commit = old[k]
            results.append(res)
    rows = [(cfg, res, violations(cfg, res)) for cfg, res in zip(configs, results)] + kept
    failures = [(cfg, bad) for cfg, _, bad in rows if bad]
    coverage = []
    whole = merge or not (ops_filter or kernels_filter)
    if whole:
        seen = {c.kernel for c in rec["configs"]}
        coverage = [k for k in launched_kernels() if k not in seen]
    raw = sorted({c.name for c in rec["configs"] if "raw" in c.via})
    cuda_rows, cuda_note = cuda_resources() if whole else ([], "filtered run")
    summary = dict(rows=rows, failures=failures, coverage=coverage, index64=index64_gaps(recorded, configs),
                   case_errors=rec["case_errors"],
                   grid_errors=rec["grid_errors"], raw=raw, n_recorded=n_recorded, t_record=t_rec,
                   t_compile=t_comp, n_cases=rec["n_cases"], cuda=cuda_rows, cuda_note=cuda_note,
                   merged=f"{len(kept)} rows of {Path(merge).name}" if merge else "", commit=commit)
    if csv_path:
        write_csv(rows, csv_path, summary["commit"])
    return summary


def failure_table(summary, raw_is_failure=False) -> str:
    lines = []
    for cfg, bad in summary["failures"]:
        for b in bad:
            lines.append(f"  sm_{cfg.arch}  {cfg.name:<24} {cfg.types_text():<10} warps={cfg.num_warps} "
                         f"stages={cfg.num_stages}  {b}\n        {cfg.constexpr_text(declared_only=True)}")
    for k in summary["coverage"]:
        lines.append(f"  {k}: launched by a launcher but recorded by no case (add a gpu_static_cases entry)")
    for gap in summary.get("index64", []):
        lines.append(f"  {gap}")
    for arch, case, err in summary["case_errors"]:
        lines.append(f"  sm_{arch} case '{case}' failed: {err}")
    for name, case, grid in summary["grid_errors"]:
        lines.append(f"  {name} (case '{case}'): grid {grid} passes CUDA's 65,535 on axis 1/2")
    for r in summary.get("cuda", []):
        for b in cuda_violations(r):
            lines.append(f"  sm_{r['arch']}  CUDA {r['kernel'][:100]}  {b}")
    if raw_is_failure:
        for name in summary["raw"]:
            lines.append(f"  {name}: launched as kernel[grid](...), not through vkernels/triton/_launch.launch")
    return "\n".join(lines)


def n_failures(summary, raw_is_failure=False) -> int:
    return (sum(len(b) for _, b in summary["failures"]) + len(summary["coverage"]) + len(summary.get("index64", []))
            + len(summary["case_errors"])
            + len(summary["grid_errors"]) + (len(summary["raw"]) if raw_is_failure else 0)
            + sum(len(cuda_violations(r)) for r in summary.get("cuda", [])))


CSV_FIELDS = ["kernel", "arch", "dtypes", "constexprs", "num_warps", "num_stages", "ok", "regs", "spill_stores",
              "spill_loads", "stack", "shared", "warps_per_sm", "tensor_cores", "violations", "triton", "error",
              "origin", "dtype_class", "commit", "ops", "cases"]


def csv_row(cfg: Config, res: Result, bad: list[str], commit: str) -> dict:
    import triton
    tc = "wgmma" if res.wgmma else ("mma" if res.mma else "no")
    return dict(kernel=cfg.kernel, arch=f"sm_{cfg.arch}", dtypes=cfg.types_text(), constexprs=cfg.constexpr_text(),
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, ok=int(res.ok), regs=res.regs,
                spill_stores=res.spill_stores, spill_loads=res.spill_loads, stack=res.stack, shared=res.shared,
                warps_per_sm=occupancy(res.regs, res.shared, cfg.num_warps, cfg.arch) if res.ok else 0,
                tensor_cores=tc if res.ok else "", violations="; ".join(bad), triton=triton.__version__,
                error=res.error.splitlines()[0][:200] if res.error else "", origin=cfg.origin(),
                dtype_class=cfg.dtype_class(), commit=getattr(cfg, "commit", None) or commit,
                ops=";".join(cfg.ops()), cases="; ".join(cfg.cases[:3]))


def write_csv(rows, path, commit):
    """One row per compile; `commit` is the commit of the kernels and cases the run compiled (rows kept by --merge
    carry their own)."""
    rows = sorted(rows, key=lambda r: (r[0].kernel, r[0].arch, r[0].types_text(), r[0].constexpr_text()))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for cfg, res, bad in rows:
            w.writerow(csv_row(cfg, res, bad, commit))


def print_summary(summary, raw_is_failure=False):
    rows = summary["rows"]
    ok = sum(r.ok for _, r, _ in rows)
    spilling = sum(1 for c, r, _ in rows if r.ok and r.spills)
    smem = sum(1 for c, r, _ in rows if r.ok and r.shared > SMEM_PER_BLOCK[c.arch])
    cpu = sum(r.cpu_seconds for _, r, _ in rows)
    print(f"{len(rows)} compiles ({ok} ok, {len(rows) - ok} errors, {spilling} spilling, {smem} over shared memory); "
          f"record {summary['t_record']:.0f} s, compile {summary['t_compile']:.0f} s wall, {cpu:.0f} s CPU in the "
          f"workers (idle-machine compile time ~ CPU / workers)")
    if summary.get("cuda"):
        print(f"CUDA C++: {len(summary['cuda'])} kernel x arch entries checked")
    elif summary.get("cuda_note") != "filtered run":
        print(f"CUDA C++ kernels not checked: {summary.get('cuda_note')}")
    if summary["raw"]:
        print(f"launched outside _launch.launch (seen through the interpreter fallback): {', '.join(summary['raw'])}")
    n = n_failures(summary, raw_is_failure)
    if n:
        print(f"FAILED: {n} violations\n" + failure_table(summary, raw_is_failure))
    else:
        print("PASSED")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    for name in ("run", "report"):
        s = sub.add_parser(name)
        s.add_argument("--ops", help="comma-separated substrings of op names (tests/test_<op>.py) to run")
        s.add_argument("--kernels", help="comma-separated substrings of kernel names to compile")
        s.add_argument("--ci", action="store_true", help="compile the CI subset (largest tiles per branch)")
        s.add_argument("--quick", action="store_true", help="the cases' small set (as CI) instead of the full one")
        s.add_argument("--jobs", type=int, default=2)
        s.add_argument("--arch", default="80,90")
        s.add_argument("--csv", help="write every compiled configuration to this CSV")
        s.add_argument("--execute", action="store_true",
                       help="also run the kernels in the interpreter while recording (slow; values are not needed)")
        s.add_argument("--save", help="pickle the run's results here (for report --load)")
        s.add_argument("--load", help="report from a run saved with --save instead of running")
        s.add_argument("--strict-launch", action="store_true", help="fail on launches outside _launch.launch")
        s.add_argument("--merge", metavar="CSV",
                       help="with --ops: recompile only the kernels those ops launch (in every configuration any op "
                            "launches) and keep this whole-set CSV's rows of every other kernel (report: "
                            "docs/gpu-static.csv; triton 3.6: docs/gpu-static-triton-3.6.0.csv)")
        s.add_argument("--derive-all", action="store_true",
                       help="compile every recorded configuration again with its INT64 flag on (default: a subset "
                            "covering every constexpr value, tile, num_warps and num_stages per kernel x arch x dtype "
                            "class with it on)")
        s.add_argument("--partial", metavar="CSV", help="append each result here as it comes (for --reuse)")
        s.add_argument("--reuse", metavar="CSV[@COMMIT][,CSV...]",
                       help="take the result of a configuration from this CSV instead of compiling it when the row "
                            "was made with this Triton from the same kernel sources (git diff of the kernel's files "
                            "against the row's commit, or @COMMIT); such rows keep their commit in the CSV")
    r = sub.add_parser("_record")
    r.add_argument("--out", required=True)
    r.add_argument("--ops")
    r.add_argument("--full", action="store_true")
    r.add_argument("--execute", action="store_true")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "report", "_record", "-h", "--help"):
        argv = ["run"] + argv
    args = p.parse_args(argv)
    if args.cmd == "_record":
        sys.path.insert(0, str(ROOT))
        data = record(args.ops, args.full, args.execute)
        data["configs"] = [asdict(c) for c in data["configs"]]  # plain data: readable whatever __main__ is
        with open(args.out, "wb") as f:
            pickle.dump(data, f)
        return 0
    cmd = args.cmd
    archs = tuple(int(a) for a in args.arch.split(","))
    if cmd == "report" and ((args.kernels and not args.merge) or archs != ARCHS):
        raise SystemExit("report covers every kernel of the ops run and both archs: no --kernels (but with --merge) "
                         "/ --arch")
    full = not (args.quick or args.ci)
    if args.load:
        with open(args.load, "rb") as f:
            summary = pickle.load(f)
        rows = [((SavedConfig if "dclass" in c else Config)(**c), Result(**r)) for c, r, _ in summary["rows"]]
        summary["rows"] = [(c, r, violations(c, r)) for c, r in rows]  # today's rules
        summary["failures"] = [(c, bad) for c, _, bad in summary["rows"] if bad]
        summary.setdefault("commit", "?")
        if args.csv:
            write_csv(summary["rows"], args.csv, summary["commit"])
    else:
        summary = check(args.ops, args.kernels, full=full, ci=args.ci, jobs=args.jobs, csv_path=args.csv,
                        archs=archs, execute=args.execute, merge=args.merge, reuse=args.reuse,
                        derive_all=args.derive_all, partial_csv=args.partial)
    if args.save:
        with open(args.save, "wb") as f:
            pickle.dump({**summary, "failures": [], "rows": [(asdict(c), asdict(r), bad)
                                                            for c, r, bad in summary["rows"]]}, f)
    print_summary(summary, args.strict_launch)
    if cmd == "report":
        scope = "the CI subset (`--ci`)" if args.ci else "the quick cases" if args.quick else "the whole set"
        if args.merge:
            what = " and ".join(x for x in (args.ops and f"launched by the ops {args.ops}", args.kernels and
                                              f"matching {args.kernels}") if x)
            scope += (f" (the kernels {what} compiled at {summary['commit']}, the rows of every other kernel "
                      f"kept from the previous report: each row of the CSV names its commit)")
        elif args.ops:
            scope += f" of the ops {args.ops} only"
        write_report(summary, summary["cuda"], summary["cuda_note"], scope)
        print(f"wrote {DOCS / 'gpu-static.md'} and {DOCS / 'gpu-static.csv'}")
    return 1 if n_failures(summary, args.strict_launch) else 0


if __name__ == "__main__":
    sys.exit(main())
