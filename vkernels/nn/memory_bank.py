"""MemoryBank: MoCo's FIFO queue or NPID's momentum memory of L2-normalised features, local, replicated across ranks
(sync="gather") or split across ranks (sync="sharded"), plus the InfoNCE loss against a sharded bank.

Write contract (why writes are deferred): `enqueue` / `update` only *stage* the new rows (a detached copy, gathered
across ranks at that moment); they are written in place into the bank at the start of the next read
(`negatives()`, `forward()`, the loss module's forward) or by an explicit `flush()` / `state_dict()`. So a step may call
forward -> enqueue -> backward or forward -> backward -> enqueue: the forward's saved bank is not written before its
backward runs, and keys produced in step t are negatives from step t + 1 on. Writing in place (no per-step copy of the
whole bank) means a graph built on the bank must be backwarded before the next read; if not, autograd's version
check raises "modified by an inplace operation" instead of silently using the new rows.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.distributed as dist

from vkernels.ops.infonce_bank_loss import infonce_bank_loss

__all__ = ["MemoryBank", "ddp_ignore_banks", "sharded_infonce_bank_loss"]

_MODES = ("queue", "momentum")
_SYNCS = ("local", "gather", "sharded")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INIT_CHUNK = 1 << 16  # rows drawn per step at init: a shard never materialises the full bank


def _world(sync, group):
    if sync == "local":
        return 1, 0
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"MemoryBank: sync={sync!r} needs torch.distributed initialised "
                           "(dist.init_process_group) before the bank is built; use sync='local' for one process")
    return dist.get_world_size(group), dist.get_rank(group)


def shard_range(size: int, world: int, rank: int) -> tuple[int, int]:
    """(offset, rows) of rank's shard: the first size % world ranks hold one row more; shards in rank order
    concatenate to the full bank."""
    base, extra = divmod(size, world)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def _gather_rows(x: torch.Tensor, group, world: int) -> tuple[torch.Tensor, list[int]]:
    """All ranks' x (any number of rows each) concatenated in rank order, and the row counts. Same on every rank."""
    if world == 1:
        return x, [x.shape[0]]
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    counts = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(counts, n, group=group)
    counts = [int(c) for c in counts]
    top = max(counts)
    padded = x if x.shape[0] == top else torch.cat([x, x.new_zeros((top - x.shape[0],) + tuple(x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]), counts


class MemoryBank(torch.nn.Module):
    """A bank of `size` feature rows of width `dim` (MoCo's queue or NPID's memory).

    Args:
        size: rows in the whole bank (>= 1; with sync="sharded" also >= the world size).
        dim: feature width.
        mode: "queue" (FIFO: `enqueue(keys)` with any batch size, wrapping around; a batch of more than `size`
            keys keeps the newest `size`) or "momentum" (NPID: `update(keys, index)` sets
            v = normalize(m v_old + (1 - m) k) for the rows named; for an index repeated in one (gathered) batch
            the last occurrence wins, in rank order then batch order).
        momentum: m in [0, 1] for mode="momentum".
        dtype: storage dtype (float16/bfloat16/float32/float64). Keys must have it.
        sync: "local" (one process), "gather" (keys and indices all-gathered in rank order before writing, so every
            rank holds the same bank) or "sharded" (rank r holds rows [offset, offset + local_size) of the bank that
            sync="gather" would hold; size % W != 0 gives the first size % W ranks one row more).
        process_group: the torch.distributed group (None: the default group).
        seed: the generator seed of the initial rows (N(0, 1) rows, L2-normalised, as MoCo and NPID initialise).
            The same on every rank, so sync="gather" banks start equal and sharded ones are slices of one bank.
        device: where the bank lives (a later .to() moves it too).

    Buffers (persistent, in state_dict): `memory` (local_size, dim) and `ptr` (the queue's next write row in the
    whole bank, int64). `state_dict()` first writes the staged rows, so a checkpoint resumes bit-exactly.
    """

    def __init__(self, size: int, dim: int, mode: str = "queue", momentum: float = 0.5,
                 dtype: torch.dtype = torch.float32, sync: str = "local", process_group=None, seed: int = 0,
                 device: torch.device | str | None = None):
        super().__init__()
        for name, v in (("size", size), ("dim", dim)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MemoryBank: {name} must be an integer >= 1, got {v!r}")
        if mode not in _MODES:
            raise ValueError(f"MemoryBank: mode must be one of {', '.join(_MODES)}; got {mode!r}")
        if sync not in _SYNCS:
            raise ValueError(f"MemoryBank: sync must be one of {', '.join(_SYNCS)}; got {sync!r}")
        if not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MemoryBank: momentum must be in [0, 1], got {momentum!r}")
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"MemoryBank: dtype must be float16, bfloat16, float32 or float64, got {dtype}")
        self.size, self.dim, self.mode, self.sync = int(size), int(dim), mode, sync
        self.momentum = float(momentum)
        self.process_group = process_group
        self.world_size, self.rank = _world(sync, process_group)
        if sync == "sharded":
            if self.size < self.world_size:
                raise ValueError(f"MemoryBank: sync='sharded' needs size >= the world size ({self.world_size}), "
                                 f"got size={self.size}")
            self.offset, self.local_size = shard_range(self.size, self.world_size, self.rank)
        else:
            self.offset, self.local_size = 0, self.size
        self.register_buffer("memory", self._initial_rows(seed, dtype, device))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long, device=device))
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def _initial_rows(self, seed, dtype, device):
        g = torch.Generator().manual_seed(int(seed))
        out = torch.empty((self.local_size, self.dim), dtype=dtype, device=device)
        lo, hi = self.offset, self.offset + self.local_size
        for r0 in range(0, hi, _INIT_CHUNK):  # the same stream on every rank; keep this rank's rows only
            rows = torch.randn((min(_INIT_CHUNK, hi - r0), self.dim), generator=g, dtype=torch.float32)
            a, b = max(lo, r0), min(hi, r0 + rows.shape[0])
            if a < b:
                out[a - lo:b - lo] = torch.nn.functional.normalize(rows[a - r0:b - r0], dim=1).to(out)
        return out

    # ------------------------------------------------------------------------------------------------ writes
    def _check_keys(self, keys, what):
        if not isinstance(keys, torch.Tensor):
            raise TypeError(f"MemoryBank.{what}: keys must be a torch.Tensor, got {type(keys).__name__}")
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"MemoryBank.{what}: keys must have shape (B, {self.dim}) (dim of the bank), got "
                             f"{tuple(keys.shape)}")
        if keys.dtype != self.memory.dtype:
            raise TypeError(f"MemoryBank.{what}: keys.dtype ({keys.dtype}) must equal the bank's dtype "
                            f"({self.memory.dtype})")
        if keys.device != self.memory.device:
            raise ValueError(f"MemoryBank.{what}: keys are on {keys.device} but the bank is on {self.memory.device}")

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Stage a FIFO write of keys (B, dim) (mode="queue"); written at the next read (see the module doc)."""
        if self.mode != "queue":
            raise RuntimeError("MemoryBank.enqueue: mode='momentum' banks are written with update(keys, index)")
        self._check_keys(keys, "enqueue")
        keys = keys.detach()
        if self.sync != "local":
            keys, _ = _gather_rows(keys.contiguous(), self.process_group, self.world_size)
        self._pending.append((keys.clone(), None))

    @torch.no_grad()
    def update(self, keys: torch.Tensor, index: torch.Tensor) -> None:
        """Stage v[index] = normalize(m v[index] + (1 - m) keys) (mode="momentum"); index: int64 (B,) rows of the
        whole bank. Written at the next read (see the module doc)."""
        if self.mode != "momentum":
            raise RuntimeError("MemoryBank.update: mode='queue' banks are written with enqueue(keys)")
        self._check_keys(keys, "update")
        if not isinstance(index, torch.Tensor) or index.dtype != torch.long or index.shape != keys.shape[:1]:
            raise TypeError(f"MemoryBank.update: index must be an int64 tensor of shape ({keys.shape[0]},), got "
                            f"{getattr(index, 'dtype', type(index).__name__)} {tuple(getattr(index, 'shape', ()))}")
        if index.device != keys.device:
            raise ValueError(f"MemoryBank.update: index is on {index.device} but keys are on {keys.device}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.size):
            raise IndexError(f"MemoryBank.update: index must be in [0, {self.size - 1}] for a bank of size "
                             f"{self.size}, got values in [{int(index.min())}, {int(index.max())}]")
        keys, index = keys.detach(), index.detach()
        if self.sync != "local":
            keys, _ = _gather_rows(keys.contiguous(), self.process_group, self.world_size)
            index, _ = _gather_rows(index.contiguous(), self.process_group, self.world_size)
        self._pending.append((keys.clone(), index.clone()))

    @torch.no_grad()
    def flush(self) -> None:
        """Write the staged rows into the bank (in place) in the order they were staged."""
        pending, self._pending = self._pending, []
        for keys, index in pending:
            if index is None:
                self._write_queue(keys)
            else:
                self._write_momentum(keys, index)

    def _write_queue(self, keys):
        b = keys.shape[0]
        if b == 0:
            return
        ptr = int(self.ptr)
        n = min(b, self.size)  # FIFO: of more keys than rows only the newest survive
        start = (ptr + b - n) % self.size
        src = keys[b - n:]
        # Rows [start, start + n) of the whole bank, wrapping: at most two contiguous runs, each clipped to the shard.
        first = min(n, self.size - start)
        for g0, s0, cnt in ((start, 0, first), (0, first, n - first)):
            a, e = max(g0, self.offset), min(g0 + cnt, self.offset + self.local_size)
            if a < e:
                self.memory[a - self.offset:e - self.offset].copy_(src[s0 + a - g0:s0 + e - g0])
        self.ptr.fill_((ptr + b) % self.size)

    def _write_momentum(self, keys, index):
        if index.numel() == 0:
            return
        # Duplicates: the last occurrence wins (a stable sort keeps batch order within one index).
        srt, perm = torch.sort(index, stable=True)
        last = torch.ones_like(srt, dtype=torch.bool)
        last[:-1] = srt[1:] != srt[:-1]
        rows, pos = srt[last], perm[last]
        local = (rows >= self.offset) & (rows < self.offset + self.local_size)
        rows, pos = rows[local] - self.offset, pos[local]
        if rows.numel() == 0:
            return
        acc = torch.float64 if self.memory.dtype == torch.float64 else torch.float32
        v = self.memory.index_select(0, rows).to(acc) * self.momentum + keys.index_select(0, pos).to(acc) * (
            1.0 - self.momentum)
        v = torch.nn.functional.normalize(v, dim=1)
        self.memory.index_copy_(0, rows, v.to(self.memory.dtype))

    # ------------------------------------------------------------------------------------------------- reads
    def negatives(self) -> torch.Tensor:
        """This rank's rows (the whole bank unless sharded), after writing the staged rows."""
        if self._pending:
            self.flush()
        return self.memory

    def forward(self) -> torch.Tensor:
        return self.negatives()

    @property
    def pending(self) -> int:
        """Staged writes not yet in the bank."""
        return len(self._pending)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.flush()  # a checkpoint holds every write made so far: resuming replays nothing and loses nothing
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._pending = []
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        s = f"size={self.size}, dim={self.dim}, mode={self.mode!r}, sync={self.sync!r}, dtype={self.memory.dtype}"
        if self.mode == "momentum":
            s += f", momentum={self.momentum}"
        if self.sync == "sharded":
            s += f", rows=[{self.offset}, {self.offset + self.local_size}) of rank {self.rank}/{self.world_size}"
        return s

    # ------------------------------------------------------------------------------------------------- loss
    def loss(self, q, k, temperature, **kw):
        """vkernels.infonce_bank_loss(q, k, <this bank>, temperature, **kw), across ranks when sharded.
        exclude holds rows of the whole bank."""
        bank = self.negatives()
        if self.sync == "sharded":
            return sharded_infonce_bank_loss(q, k, bank, temperature, offset=self.offset, size=self.size,
                                             process_group=self.process_group, **kw)
        return infonce_bank_loss(q, k, bank, temperature, **kw)


def ddp_ignore_banks(model: torch.nn.Module) -> list[str]:
    """Keep DistributedDataParallel from broadcasting the MemoryBank buffers inside `model` from rank 0 (at wrap
    time and before every forward, broadcast_buffers=True): a gathered bank is already equal on every rank, and a
    sharded bank must not be overwritten by rank 0's shard. Call before wrapping; returns the names ignored."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, MemoryBank):
            names += [f"{mod_name}.{b}" if mod_name else b for b, _ in mod.named_buffers(recurse=False)]
    old = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, sorted(set(old + names)))
    return names


# ---------------------------------------------------------------------------------------------------- sharded loss
def sharded_infonce_bank_loss(q, k, shard, temperature=0.07, *, offset: int, size: int, process_group=None,
                              reduction="mean", label_smoothing=0.0, exclude=None, return_lse=False,
                              return_rank=False, impl="auto"):
    """infonce_bank_loss of this rank's (q, k) against the bank whose rows [offset, offset + len(shard)) this rank
    holds (the shards of all ranks, in rank order, make the bank of `size` rows). Defined below, after the partial op
    is available."""
    from vkernels.nn._sharded_infonce import sharded_loss
    return sharded_loss(q, k, shard, temperature, offset=offset, size=size, process_group=process_group,
                        reduction=reduction, label_smoothing=label_smoothing, exclude=exclude,
                        return_lse=return_lse, return_rank=return_rank, impl=impl)
