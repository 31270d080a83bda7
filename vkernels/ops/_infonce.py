"""What the InfoNCE ops (infonce_bank_loss, infonce_bank_partial, and the sharded loss of vkernels/nn/memory_bank.py)
share: their argument checks, with one wording, the temperature as the ops take it, and the loss's reduction.

Not an op module: it exports nothing (vkernels.ops imports every module of the package and copies its __all__).
"""
from __future__ import annotations

import math
import numbers

import torch

from vkernels._dtypes import FLOAT_DTYPES, acc_dtype
from vkernels.ops._checks import check_float_dtype, check_tensors

__all__: list[str] = []

REDUCTIONS = ("mean", "sum", "none")


def acc_temperature(q, temperature):
    """The accumulation dtype (fp64 for fp64 q, else fp32) and the temperature as the 0-dim tensor the ops take (a
    tensor is kept as it is, so that it stays differentiable)."""
    acc = acc_dtype(q.dtype)
    if isinstance(temperature, torch.Tensor):
        return acc, temperature.reshape(())
    return acc, torch.full((), float(temperature), dtype=acc, device=q.device)


def loss_outputs(loss, lse, rank, dtype, reduction, return_lse, return_rank):
    """The per-row loss reduced and cast to the inputs' dtype, with lse and rank where asked for."""
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    loss = loss.to(dtype)
    if not (return_lse or return_rank):
        return loss
    return (loss,) + ((lse,) if return_lse else ()) + ((rank,) if return_rank else ())


def check_infonce_args(q, k, bank, temperature, reduction, label_smoothing, exclude, op="infonce_bank_loss"):
    """The arguments of infonce_bank_loss (and of the ops built on it, named by `op` in the messages)."""
    check_tensors(op, q=q, k=k, bank=bank)
    check_float_dtype(op, "q", q)
    if q.ndim != 2:
        raise ValueError(f"{op}: q must have shape (N, d), got {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if bank.ndim != 2 or bank.shape[1] != q.shape[1]:
        raise ValueError(f"{op}: bank must have shape (K, {q.shape[1]}) (d from q), got "
                         f"{tuple(bank.shape)}")
    if bank.shape[0] == 0:
        raise ValueError(f"{op}: bank must not be empty (K = 0)")
    for name, t in (("k", k), ("bank", bank)):
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name}.dtype ({t.dtype}) must equal q.dtype ({q.dtype})")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}")
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or temperature.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{op}: temperature must be a number or a 1-element float tensor, got "
                             f"shape {tuple(temperature.shape)} dtype {temperature.dtype}")
        if temperature.device != q.device:
            raise ValueError(f"{op}: temperature is on {temperature.device} but q is on {q.device}")
    elif (not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or not temperature > 0):
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    if not isinstance(label_smoothing, numbers.Real) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if exclude is None:
        return
    if not isinstance(exclude, torch.Tensor) or exclude.dtype != torch.int64:
        raise TypeError(f"{op}: exclude must be an int64 tensor or None, got "
                        f"{getattr(exclude, 'dtype', type(exclude).__name__)}")
    if exclude.ndim not in (1, 2) or exclude.shape[0] != q.shape[0]:
        raise ValueError(f"{op}: exclude must have shape ({q.shape[0]},) or ({q.shape[0]}, E), got "
                         f"{tuple(exclude.shape)}")
    if exclude.device != q.device:
        raise ValueError(f"{op}: exclude is on {exclude.device} but q is on {q.device}")
    # The value check reads the data (a sync on GPU, a graph break when compiled): the kernels check it again.
    if not torch.compiler.is_compiling() and exclude.numel():
        lo, hi = int(exclude.min()), int(exclude.max())
        if lo < -1 or hi >= bank.shape[0]:
            raise IndexError(f"{op}: exclude indices must be in [-1, {bank.shape[0] - 1}] (-1 = none) "
                             f"for a bank of K = {bank.shape[0]}, got values in [{lo}, {hi}]")
