"""Every Triton launch of vkernels goes through `launch()`, and every launcher sizes its blocks from `target()`.

launch() keeps grids within CUDA's limits (axis 0 < 2^31, axes 1 and 2 <= 65,535; the interpreter checks neither):
a kernel whose axis 1 or 2 can pass the limit declares an int parameter `pid1_base` / `pid2_base`, adds it to
`tl.program_id(1)` / `(2)`, and launch() then splits that axis into launches of at most 65,535 programs.

target() says what the launcher is choosing for: a GPU of a given architecture, or the Triton interpreter (big
blocks and few programs, since the interpreter runs programs one after another). `tune_for(arch)` makes launchers
pick the configuration they would pick on that GPU while the kernels still run in the interpreter, and `recording()`
sees every launch: together they let the static compile check (tools/gpu_static.py) compile exactly the
configurations the launchers choose, on a machine without a GPU.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from vkernels._backend import TRITON_INTERPRET

MAX_GRID = (2**31 - 1, 65535, 65535)
_BASES = ("pid1_base", "pid2_base")


@dataclass(frozen=True)
class Target:
    interpret: bool  # kernels run in the Triton interpreter: size blocks for it, not for a GPU
    arch: int  # compute capability as major * 10 + minor: 80 (A100), 90 (H100)
    sms: int  # streaming multiprocessors (persistent grids)


# H100 SXM is what the interpreter's choices are tuned to stand in for; sm_80's A100 has 108 SMs.
_SMS = {80: 108, 90: 132}
_override: Target | None = None
_recorders: list = []


def target(device: torch.device) -> Target:
    """What a launcher for tensors on `device` tunes for (see the module docstring)."""
    if _override is not None:
        return _override
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return Target(False, props.major * 10 + props.minor, props.multi_processor_count)
    if not TRITON_INTERPRET:
        raise RuntimeError(f"Triton kernels run on {device.type} tensors only under TRITON_INTERPRET=1")
    return Target(True, 90, 4)


@contextlib.contextmanager
def tune_for(arch: int, sms: int | None = None):
    """Launchers choose what they would choose on a GPU of `arch` (80, 90) while this is active, whatever device
    the tensors are on."""
    global _override
    saved, _override = _override, Target(False, arch, sms or _SMS.get(arch, 132))
    try:
        yield _override
    finally:
        _override = saved


@contextlib.contextmanager
def recording(callback):
    """Call callback(kernel, grid, args, kwargs) for every launch while active (grid as 3 ints, before any split;
    kwargs with the constexprs, num_warps / num_stages and pid bases as passed to the kernel)."""
    _recorders.append(callback)
    try:
        yield
    finally:
        _recorders.remove(callback)


def split_grid(grid, bases=_BASES):
    """The launches that cover `grid` within CUDA's limits: [(sub_grid, {base_name: first_pid})]. `bases` names the
    pid-base parameters the kernel declares; an axis over the limit without one is a bug in the kernel's launcher."""
    g = tuple(int(v) for v in grid) + (1,) * (3 - len(grid))
    if g[0] > MAX_GRID[0]:
        raise ValueError(f"grid axis 0 has {g[0]} programs, over CUDA's {MAX_GRID[0]}: use larger blocks")
    spans = [[(0, g[0])]]
    for axis in (1, 2):
        name = _BASES[axis - 1]
        if g[axis] > MAX_GRID[axis] and name not in bases:
            raise ValueError(f"grid axis {axis} has {g[axis]} programs, over CUDA's {MAX_GRID[axis]}, and the kernel "
                             f"declares no {name} parameter to split it")
        step = MAX_GRID[axis]
        spans.append([(s, min(step, g[axis] - s)) for s in range(0, g[axis], step)])
    out = []
    for s1, n1 in spans[1]:
        for s2, n2 in spans[2]:
            base = {k: v for k, v in ((_BASES[0], s1), (_BASES[1], s2)) if k in bases}
            out.append(((g[0], n1, n2), base))
    return out


def span(t, start_dim=0):
    """Elements from t's first to its last element over the dims from start_dim on, as its strides lay them out
    (0 when t is empty): the largest offset + 1 a kernel forms inside it."""
    if t.numel() == 0:
        return 0
    return sum((d - 1) * abs(s) for d, s in zip(t.shape[start_dim:], t.stride()[start_dim:])) + 1


def index64(count, extent, block):
    """Whether a launch takes its kernel's INT64 branch: an element index (`count` of them) or an offset within
    `extent`, a block past the end, reaches 2^31."""
    return max(count, extent) + block >= 2**31


def launch(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs), split along axes 1 / 2 when they pass CUDA's limit; nothing for an empty grid."""
    if any(int(v) == 0 for v in grid):
        return
    names = getattr(kernel, "arg_names", ())
    bases = tuple(b for b in _BASES if b in names)
    launches = split_grid(grid, bases)
    for callback in _recorders:
        g = tuple(int(v) for v in grid) + (1,) * (3 - len(grid))
        callback(kernel, g, args, {**kwargs, **{b: 0 for b in bases}})
    for sub, base in launches:
        kernel[sub](*args, **kwargs, **base)
