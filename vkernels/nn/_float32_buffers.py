"""Filter buffers that stay float32 when a module is cast (the FIR layers of upfirdn2d and filtered_lrelu: the ops
take float32 filters only).

Not a layer module: it exports nothing (vkernels.nn imports every module of the package and copies its __all__).
"""
from __future__ import annotations

import torch

__all__: list[str] = []


def keep_float32_buffers(module: torch.nn.Module, names, fn, recurse: bool) -> torch.nn.Module:
    """Module._apply that moves the float32 filter buffers `names` with .to(device) but never casts them: the ops
    take float32 filters only, so .double() / .half() / .to(dtype) of a model used to make the next call raise."""
    keep = {k: module._buffers[k] for k in names if module._buffers.get(k) is not None}
    torch.nn.Module._apply(module, fn, recurse)
    for k, v in keep.items():
        module._buffers[k] = v.to(device=module._buffers[k].device)
    return module
