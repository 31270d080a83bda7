"""Rules on how the package is laid out, read from the source (no kernels run; a fraction of a second).

An op's files are named after the op in every layer (vkernels/{ops,triton,reference,nn}/<op>.py,
tests/test_<op>.py, benchmarks/bench_<op>.py); code two ops share lives in a module whose name starts with "_" and
says what it holds (vkernels/ops/_norm_act.py, vkernels/triton/_activation.py, tests/_common.py, ...). So no file
may take a private name (one starting with "_") from another op's module: that would hide shared code in a sibling.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED = ("vkernels", "models", "benchmarks", "tests")
OP_LAYERS = ("vkernels.ops", "vkernels.triton", "vkernels.reference", "vkernels.nn")


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[1:] if rel.parts[0] == "tests" else rel.parts  # tests import each other by bare name
    return ".".join(parts)


def _op_of(module: str) -> str | None:
    """The op a module belongs to (its file's stem without test_ / bench_), or None for shared modules."""
    pkg, _, stem = module.rpartition(".")
    if stem.startswith("_"):
        return None
    if pkg in OP_LAYERS:
        return stem
    if pkg == "" and stem.startswith("test_"):
        return stem[len("test_"):]
    if pkg == "benchmarks" and stem.startswith("bench_"):
        return stem[len("bench_"):]
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def scan(module: str, src: str) -> list[str]:
    """'line: imports <module>.<name>' for every private name the source `src` of `module` takes from another op's
    module, by `from m import _x`, or by `import m` / `from pkg import m` and then `m._x`; and, for a test file,
    any name from another test file (helpers tests share live in tests/_common.py or a named tests/_<what>.py)."""
    own = _op_of(module)
    tree = ast.parse(src)
    out, aliases = [], {}  # aliases: local name -> the op module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if node.module in OP_LAYERS + ("benchmarks",) and _op_of(full) is not None:
                    aliases[a.asname or a.name] = full  # from vkernels.triton import upfirdn2d as k
                elif _op_of(node.module) not in (None, own) and _private(a.name):
                    out.append(f"{node.lineno}: imports {full}")
                elif module.startswith("test_") and node.module.startswith("test_") and node.module != module:
                    out.append(f"{node.lineno}: imports {full} (a test helper: move it to tests/_<what>.py)")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if _op_of(a.name) is not None:
                    aliases[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _op_of(aliases[node.value.id]) != own):
            out.append(f"{node.lineno}: uses {aliases[node.value.id]}.{node.attr}")
    return out


def violations() -> list[str]:
    return [f"{path.relative_to(ROOT)}:{v}" for top in SCANNED for path in sorted((ROOT / top).rglob("*.py"))
            for v in scan(_module_name(path), path.read_text())]


def test_no_private_names_from_another_op():
    found = violations()
    assert not found, ("private names taken from another op's module (move the shared code to a named shared module "
                       "whose name starts with '_'):\n" + "\n".join(found))


def test_the_rule_sees_a_violation():
    """The scan itself, on a made-up test file of pixel_norm: another op's private names (imported, or used through
    the module) are reported; shared modules' names and the op's own private names are not."""
    src = ("from vkernels.ops.bias_act import _x, bias_act\nfrom vkernels.triton import bias_act as k\n"
           "import vkernels.reference.upfirdn2d\nk._y\nk.launch\nvkernels.reference.upfirdn2d._z\n"
           "from vkernels.ops._checks import check_tensors\nfrom vkernels.ops.pixel_norm import _own\n"
           "from test_bias_act import _helper\nfrom vkernels.triton import pixel_norm as p\np._kernel\n"
           "from test_upfirdn2d import make_filter\nfrom _common import randn\n")
    assert scan("test_pixel_norm", src) == [
        "1: imports vkernels.ops.bias_act._x", "9: imports test_bias_act._helper",
        "12: imports test_upfirdn2d.make_filter (a test helper: move it to tests/_<what>.py)",
        "4: uses vkernels.triton.bias_act._y"]
    assert _op_of("benchmarks.bench_pixel_norm") == "pixel_norm" and _op_of("vkernels.triton._launch") is None


# Every op's files, one per layer (either path of a pair: an op whose GPU path is CUDA C++ has no Triton file).
LAYERS = {
    "schema": ("csrc/ops/{op}.cpp",),
    "CPU kernel": ("csrc/ops/cpu/{op}_kernel.cpp",),
    "GPU kernel": ("vkernels/triton/{op}.py", "csrc/ops/cuda/{op}_kernel.cu"),
    "reference": ("vkernels/reference/{op}.py",),
    "public function": ("vkernels/ops/{op}.py",),
    "module": ("vkernels/nn/{op}.py",),
    "test": ("tests/test_{op}.py",),
    "benchmark": ("benchmarks/bench_{op}.py",),
}
# Ops without a layer, and why.
EXEMPT = {("infonce_bank_partial", "module"): "a rank's share of a sharded bank: its layer is the sharded loss of "
                                              "vkernels/nn/memory_bank.py"}


def _ops() -> list[str]:
    return sorted(p.stem for p in (ROOT / "vkernels" / "ops").glob("*.py") if not p.stem.startswith("_"))


def test_every_op_has_its_file_in_every_layer():
    missing = [f"{op}: {layer} ({' or '.join(p.format(op=op) for p in paths)})"
               for op in _ops() for layer, paths in LAYERS.items()
               if (op, layer) not in EXEMPT and not any((ROOT / p.format(op=op)).exists() for p in paths)]
    assert not missing, "ops missing a layer's file:\n" + "\n".join(missing)


def test_kernel_files_are_named_after_their_op():
    """An op's kernels live in files named after it (<op>.py, <op>_kernel.cpp, <op>_<part>...), so its name finds
    them; code several ops share lives in a "_"-module (Triton) or a *_common.h / *_math.h header (C++)."""
    ops = _ops()
    files = [*(ROOT / "csrc" / "ops" / "cpu").glob("*.cpp"), *(ROOT / "csrc" / "ops" / "cuda").glob("*.cu"),
             *(p for p in (ROOT / "vkernels" / "triton").glob("*.py") if not p.stem.startswith("_"))]
    stray = [str(p.relative_to(ROOT)) for p in files
             if not any(p.stem == op or p.stem.startswith(op + "_") for op in ops)]
    assert len(ops) >= 13 and not stray, f"kernel files named after no op: {stray}"
