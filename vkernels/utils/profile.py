"""Peak memory of a call, on CPU and CUDA, for benchmarks, tests and the training entries.

    from vkernels.utils.profile import peak_bytes, cpu_peak_bytes
    peak_bytes({"ours": f, "eager": g}, "cpu")   # {"ours": bytes, "eager": bytes}

CUDA: the caching allocator's own statistics (torch.cuda.max_memory_allocated). CPU: torch keeps no peak statistics,
but the profiler records every allocation and free of torch's CPU allocator ("[memory]" events: +bytes / -bytes); the
peak of their running sum inside one call is the call's peak. The raw events are read because
FunctionEvent.cpu_memory_usage counts an allocation once for the op and again for each enclosing op (x.clone() would
show 2x its size). The profiler's start/stop log lines are dropped (vkernels.utils.quiet).
"""
from __future__ import annotations

from typing import Callable

import torch

from vkernels.utils.quiet import quiet_profiler_logs

def peak_bytes(fns: dict[str, Callable], device: str | torch.device) -> dict[str, int | None]:
    """Peak bytes allocated by one call of each zero-argument callable, above what was allocated before the call;
    the result of the call counts (it is alive at the end of the call). None where it cannot be measured."""
    if torch.device(device).type == "cuda":
        out = {}
        for name, fn in fns.items():
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            y = fn()
            torch.cuda.synchronize()
            out[name] = torch.cuda.max_memory_allocated() - base
            del y
        return out
    return _peak_bytes_cpu(fns)


def cpu_peak_bytes(fn: Callable) -> int:
    """Peak bytes of CPU memory torch allocated during fn() (its result included). Raises RuntimeError when this
    torch's profiler cannot give the number (see peak_bytes)."""
    peak = _peak_bytes_cpu({"fn": fn})["fn"]
    if peak is None:
        raise RuntimeError("torch profiler internals changed: CPU peak memory not measurable with this torch")
    return peak


def _peak_bytes_cpu(fns: dict[str, Callable]) -> dict[str, int | None]:
    from torch.profiler import ProfilerActivity, profile, record_function

    with quiet_profiler_logs():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for name, fn in fns.items():
                with record_function(f"peak::{name}"):
                    y = fn()
                del y  # freed outside the range: the output counts toward the peak, its later free does not
        try:
            events = list(prof.profiler.kineto_results.events())
        except AttributeError:  # a private attribute; if a torch release moves it, no number rather than a wrong one
            return dict.fromkeys(fns)
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    ranges = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name().startswith("peak::")}
    out = {}
    for name in fns:
        lo, hi = ranges[f"peak::{name}"]
        run = peak = 0
        for t, nbytes in mem:
            if lo <= t <= hi:
                run += nbytes
                peak = max(peak, run)
        out[name] = peak
    return out
