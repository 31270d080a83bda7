"""Silence messages that mean nothing to the reader of a benchmark, a training run or a test, at their source.

The torch profiler (used for CPU peak memory) makes its C++ side (kineto, c10) write to file descriptor 2 on every
start and stop: "USDT ... profiler_start/stop", "gpuGetDeviceCount failed with code 35" on a machine without a GPU,
"Memory block of unknown size" for a block allocated before the profiler started. Inductor imports
torch.utils.cpp_extension, which logs "No CUDA runtime is found" on every machine without a CUDA toolkit, and emits
FutureWarnings addressed to torch's own callers. Everything else is passed through.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings


def quiet_torch_logs() -> None:
    """Drop torch's "No CUDA runtime is found" log line and inductor/dynamo FutureWarnings for this process.
    Real errors still surface: they raise."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\._inductor")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\._dynamo")


# Lines the profiler's C++ side writes on every use; anything else on stderr is passed through.
_NOISE = re.compile(r"USDT:|profiler_start|profiler_stop|gpuGetDeviceCount failed|Memory block of unknown size")


@contextlib.contextmanager
def quiet_profiler_logs():
    """Capture file descriptor 2 (C++ logging bypasses sys.stderr) for the duration; re-emit every line that is
    not known profiler noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not _NOISE.search(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
