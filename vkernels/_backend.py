"""Which compiled pieces exist, and which implementation runs for a given op and tensor.

impl names: "cpu" (C++ kernel), "cuda" (CUDA C++ kernel), "triton" (Triton kernel; on CPU tensors only through the
Triton interpreter, TRITON_INTERPRET=1), "reference" (pure PyTorch). "auto" picks the fastest compiled kernel for
the tensor's device. VKERNELS_IMPL=<name> (read at import) forces one impl for every op, as does set_impl().
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, field

import torch

IMPLS = ("cpu", "cuda", "triton", "reference")

try:
    from vkernels import _C  # noqa: F401  (importing it registers the C++ ops)

    C_ERROR = None
except ImportError as e:  # a source checkout that was never built; the reference still works
    _C = None
    C_ERROR = str(e)

HAS_TRITON = importlib.util.find_spec("triton") is not None
# Read once: the Triton interpreter must be chosen before any Triton kernel is defined.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_forced = os.environ.get("VKERNELS_IMPL", "auto").strip().lower() or "auto"
if _forced not in IMPLS + ("auto",):
    raise ValueError(f"VKERNELS_IMPL must be one of auto, {', '.join(IMPLS)}; got {_forced!r}")


@dataclass
class OpInfo:
    name: str
    # Compiled GPU kernels in the order "auto" tries them on CUDA tensors (fastest first, from benchmarks).
    cuda_order: tuple[str, ...] = ("cuda", "triton")
    # device type -> implementations that can run there; fixed at registration (so torch.compile sees constants).
    impls: dict = field(default_factory=dict)
    warned: set = field(default_factory=set)


OPS: dict[str, OpInfo] = {}


def register_op(name: str, cuda_order: tuple[str, ...] = ("cuda", "triton")) -> OpInfo:
    """Call once per op, after its C++ library is loaded: records which implementations exist per device."""
    impls = {}
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA")):
        avail = [dev] if _has_kernel(name, key) else []
        if HAS_TRITON and has_op(name) and (dev == "cuda" or TRITON_INTERPRET):
            avail.append("triton")
        impls[dev] = tuple(avail + ["reference"])
    OPS[name] = info = OpInfo(name, tuple(cuda_order), impls)
    return info


def set_impl(impl: str = "auto") -> None:
    """Force one implementation for every op ("auto" restores the default choice)."""
    global _forced
    if impl not in IMPLS + ("auto",):
        raise ValueError(f"impl must be one of auto, {', '.join(IMPLS)}; got {impl!r}")
    _forced = impl


def has_op(op: str) -> bool:
    """Whether the compiled library defines vkernels::<op> (a stale build may lack a newer op: then only the
    reference runs, with the loud warning, instead of `import vkernels` failing)."""
    return _C is not None and hasattr(torch.ops.vkernels, op)


def _has_kernel(op: str, key: str) -> bool:
    return has_op(op) and torch._C._dispatch_has_kernel_for_dispatch_key(f"vkernels::{op}", key)


def available_impls(op: str, device: str | torch.device) -> list[str]:
    """Implementations of `op` that can run on tensors of `device` in this process."""
    dev = device if isinstance(device, str) else device.type
    return list(OPS[op].impls.get(dev.split(":")[0], ("reference",)))


def resolve_impl(op: str, x: torch.Tensor, impl: str = "auto") -> str:
    """The implementation that `impl` means for `op` on tensor `x` (what a call would run)."""
    if impl == "auto":
        impl = _forced
    avail = OPS[op].impls.get(x.device.type, ("reference",))
    if impl != "auto":
        if impl not in IMPLS:
            raise ValueError(f"{op}: impl must be one of auto, {', '.join(IMPLS)}; got {impl!r}")
        if impl not in avail:
            raise RuntimeError(f"{op}: impl={impl!r} is not available for {x.device.type} tensors here "
                               f"(available: {', '.join(avail)}; see `python -m vkernels info`)")
        return impl
    order = OPS[op].cuda_order if x.device.type == "cuda" else ("cpu",)
    for name in order:
        if name in avail:
            return name
    info = OPS[op]
    if x.device.type not in info.warned:
        info.warned.add(x.device.type)
        why = C_ERROR or "no compiled kernel for this device"
        warnings.warn(f"vkernels.{op}: no compiled kernel for {x.device.type} tensors ({why}); running the slow "
                      f"pure-PyTorch reference. Rebuild vkernels or pass impl='reference' to silence this.",
                      RuntimeWarning, stacklevel=3)
    return "reference"


def export_submodules(package: str, path, namespace: dict) -> list[str]:
    """Import every module of `package` and copy each one's __all__ into `namespace` (no central list of ops)."""
    import importlib
    import pkgutil

    names = []
    for m in pkgutil.iter_modules(path):
        mod = importlib.import_module(f"{package}.{m.name}")
        for name in mod.__all__:
            namespace[name] = getattr(mod, name)
            names.append(name)
    return names


_TRITON_LIBS: list = []  # the Library objects must stay alive for their registrations to stay


def define_triton_variant(base: str, fn) -> None:
    """vkernels::<base>_triton: C++ op <base>'s schema under a new name, with the Triton launcher `fn` behind it on
    CUDA and CPU tensors (CPU runs only under TRITON_INTERPRET=1; resolve_impl enforces that)."""
    lib = torch.library.Library("vkernels", "FRAGMENT")
    lib.define(derive_schema(base, f"{base}_triton"))
    for key in ("CPU", "CUDA"):
        lib.impl(f"{base}_triton", fn, key)
    _TRITON_LIBS.append(lib)


def derive_schema(base: str, new: str) -> str:
    """The schema of C++ op `base` under the name `new`: lets another backend share the one schema definition."""
    schema = str(getattr(torch.ops.vkernels, base).default._schema)
    prefix = f"vkernels::{base}("
    assert schema.startswith(prefix), schema
    return new + schema[len(prefix) - 1:]


def triton_launchers(module: str, *fns: str) -> tuple:
    """Kernel functions for the Triton variants of ops whose launchers take the op's arguments as they are:
    vkernels.triton.<module>.<fn> for each fn, imported on the first call (importing Triton is slow, and
    `import vkernels` must not pay for it)."""
    def launcher(fn):
        def launch(*args, **kwargs):
            return getattr(importlib.import_module(f"vkernels.triton.{module}"), fn)(*args, **kwargs)

        launch.__name__ = launch.__qualname__ = f"{module}_{fn}"
        return launch

    return tuple(launcher(fn) for fn in fns)


def register_backends(register, ops: tuple[str, ...], triton_launchers=None) -> None:
    """What an op module does last, for the C++ ops `ops` (an op and its backward ops): `register(*names)` (the
    module's fake + autograd registrations for one backend's ops) for them and, where Triton is installed, their
    Triton variants <op>_triton, each defined with the launcher at the same place in `triton_launchers()` (called
    only then) and registered the same way. Nothing when the compiled library lacks ops[0] (a stale build: only the
    reference runs, see has_op)."""
    if not has_op(ops[0]):
        return
    register(*ops)
    if HAS_TRITON and triton_launchers is not None:
        launchers = tuple(triton_launchers())
        assert len(launchers) == len(ops), (ops, launchers)
        for op, fn in zip(ops, launchers):
            define_triton_variant(op, fn)
        register(*(f"{op}_triton" for op in ops))
