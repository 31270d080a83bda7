"""What the smoke cases of every op are made of (benchmarks/bench_<op>.py's smoke_<op>(ctx) generators, run by
benchmarks/smoke.py): one kernel launch per case against a float64 reference, inside a context that says where to
run, which implementations and how much.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator

# Loose sanity tolerances: |out - expect| <= TOL * (scale + |expect|), scale >= 1 set per case.
TOL_NAMES = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-5, "float64": 1e-7}


@dataclass
class SmokeCase:
    """One kernel launch: torch.ops.vkernels.<op>(*args) must return `expect` (float64, CPU) within tolerance."""
    name: str
    op: str
    args: object  # the op's arguments: a tuple, or a function returning one (built only if the case runs)
    expect: object  # a float64 CPU tensor, or a tuple of them for ops with several outputs
    tol: float
    scale: float = 1.0
    dont_care: object = None  # bool tensor (or tuple): elements excluded from the comparison
    like: object = None  # tensor (or tuple): each output must have its shape, dtype, device and strides
    select: object = None  # function of the output giving the part `expect` describes (default: all of it)


@dataclass
class SmokeCtx:
    """What a smoke function may look at: where to run, which impls, how much."""
    torch: object
    device: str
    impls: tuple  # e.g. ("cuda", "triton") or ("cpu", "triton")
    scope: str  # quick | default | full
    dtypes: tuple  # torch dtypes to cover
    large: bool = False  # also the >2**31-element cases (64-bit indexing; several GB; never under a sanitizer)

    def gen(self, *key) -> object:
        """A CPU generator seeded from the case key: every variant draws fresh but reproducible inputs."""
        g = self.torch.Generator()
        g.manual_seed(zlib.crc32("/".join(map(str, key)).encode()))
        return g

    def variants(self, key: str, cases: dict, quick_triton=None, impls=None) -> Iterator[tuple]:
        """(impl, dtype, dtype name, case name, case params, generator) for every dtype x impl x case this run
        covers, in that loop order; the generator is gen(key, impl, dtype name, case name). quick_triton(case name,
        dtype name) says which cases Triton keeps under --scope quick (every Triton variant is a separate JIT
        compile); impls, where given, are the impls the op has (the others are skipped)."""
        for dtype in self.dtypes:
            dn = str(dtype).replace("torch.", "")
            for impl in self.impls:
                if impls is not None and impl not in impls:
                    continue
                for name, params in cases.items():
                    if (self.scope == "quick" and impl == "triton" and quick_triton is not None
                            and not quick_triton(name, dn)):
                        continue
                    yield impl, dtype, dn, name, params, self.gen(key, impl, dn, name)


def raw_ops(op: str) -> dict:
    """impl -> the raw op that runs it: the C++ op <op> for cpu and cuda, its Triton variant <op>_triton."""
    return {"cuda": op, "cpu": op, "triton": f"{op}_triton"}


def place(t, placement, device, torch):
    """t (CPU, contiguous) on `device` in the given memory placement."""
    if placement == "channels_last":
        return t.contiguous(memory_format=torch.channels_last).to(device)  # .to keeps dense strides
    if placement == "offset1":
        buf = torch.zeros(t.numel() + 1, dtype=t.dtype)
        buf[1:] = t.reshape(-1)
        return buf.to(device)[1:].view(t.shape)  # data pointer one element past the allocation's start
    return t.to(device)
