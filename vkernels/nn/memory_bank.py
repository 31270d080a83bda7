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

from vkernels._dtypes import FLOAT_DTYPES, acc_dtype
from vkernels.ops._infonce import acc_temperature, check_infonce_args, loss_outputs
from vkernels.ops.infonce_bank_loss import infonce_bank_loss

__all__ = ["MemoryBank", "ddp_ignore_banks", "sharded_infonce_bank_loss"]

_MODES = ("queue", "momentum")
_SYNCS = ("local", "gather", "sharded")
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
        if dtype not in FLOAT_DTYPES:
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
        for r0 in range(0, hi, _INIT_CHUNK):
            # The same draws on every rank (chunk shapes from the whole bank: randn's values depend on the shape);
            # keep this rank's rows only.
            rows = torch.randn((min(_INIT_CHUNK, self.size - r0), self.dim), generator=g, dtype=torch.float32)
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
        acc = acc_dtype(self.memory.dtype)
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
    """`vkernels.infonce_bank_loss(q, k, bank, ...)` for this rank's (q, k), where `bank` is the concatenation, in rank
    order, of every rank's `shard` (this rank's being rows [offset, offset + len(shard)) of `size`). Collective: every
    rank of `process_group` must call it, with the same arguments other than the tensors.

    Forward: queries and keys all-gathered; each rank's log-sum-exp of every query over its shard
    (`vkernels.infonce_bank_partial`); the (W, N_all) partials all-gathered and merged with the positive in rank order
    (the same bits on every rank). Backward: the per-row output gradients all-gathered; each rank's shard gradient and
    its share of every query's gradient from the merged lse (`infonce_bank_partial_backward`); the query gradients
    all-reduced; the positive's terms (the only source of dk) added once, by the row's own rank.

    Gradients follow DDP's convention: those of the sum over ranks of each rank's loss (q, k: this rank's rows;
    the shard: from every rank's queries; temperature: this rank's loss, so DDP's average is the mean loss's). exclude
    holds rows of the whole bank (ranks may pass different widths, or None). Ranks may hold different batch sizes.
    """
    check_infonce_args(q, k, shard, temperature, reduction, label_smoothing, None, op="sharded_infonce_bank_loss")
    if exclude is not None:
        if not isinstance(exclude, torch.Tensor) or exclude.dtype != torch.int64:
            raise TypeError("sharded_infonce_bank_loss: exclude must be an int64 tensor or None")
        if exclude.ndim not in (1, 2) or exclude.shape[0] != q.shape[0]:
            raise ValueError(f"sharded_infonce_bank_loss: exclude must have shape ({q.shape[0]},) or "
                             f"({q.shape[0]}, E), got {tuple(exclude.shape)}")
        if exclude.numel() and (int(exclude.min()) < -1 or int(exclude.max()) >= size):
            raise IndexError(f"sharded_infonce_bank_loss: exclude indices must be in [-1, {size - 1}] (rows of the "
                             f"whole bank, -1 = none), got values in [{int(exclude.min())}, {int(exclude.max())}]")
        exclude = exclude.reshape(q.shape[0], -1)
    _, t = acc_temperature(q, temperature)
    loss, lse, rank = _ShardedInfoNCE.apply(q, k, shard, t, offset, size, process_group, float(label_smoothing),
                                            exclude, impl)
    return loss_outputs(loss, lse, rank, q.dtype, reduction, return_lse, return_rank)


def _distinct_valid(ex):
    """Mask of the entries of each row of ex (N, E) that are >= 0 and not a repeat within the row."""
    srt, perm = ex.sort(1)
    first = srt >= 0
    first[:, 1:] &= srt[:, 1:] != srt[:, :-1]
    return torch.zeros_like(first).scatter_(1, perm, first)


def _partial_backward(impl, coef, qa, shard, t, ex_local, lse, bank_grad):
    """Shard's share: w_ij = coef_i exp(l_ij - lse_i) / T over kept j; (sum_j w_ij b_j, sum_i w_ij q_i)."""
    if impl != "reference":
        op = (torch.ops.vkernels.infonce_bank_partial_backward_triton if impl == "triton"
              else torch.ops.vkernels.infonce_bank_partial_backward)
        dq, dbank, _ = op(coef.to(lse.dtype), qa, shard, t, ex_local, lse, bank_grad)
        return dq, dbank
    acc = lse.dtype
    logits = qa.to(acc) @ shard.to(acc).t() / t.to(acc)
    keep = torch.ones_like(logits, dtype=torch.bool)
    if ex_local is not None:
        rows = torch.arange(ex_local.shape[0], device=qa.device).unsqueeze(1).expand_as(ex_local)
        v = ex_local >= 0
        keep[rows[v], ex_local[v]] = False
    w = torch.where(keep, torch.exp(logits - lse[:, None]), 0.0) * (coef[:, None] / t.to(acc))
    return (w @ shard.to(acc)).to(qa.dtype), ((w.t() @ qa.to(acc)).to(shard.dtype) if bank_grad else None)


class _ShardedInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, shard, t, offset, size, group, eps, exclude, impl):
        from vkernels.ops.infonce_bank_partial import infonce_bank_partial
        world, me = dist.get_world_size(group), dist.get_rank(group)
        acc = acc_dtype(q.dtype)
        impl = _backend_impl(q, impl)
        qa, counts = _gather_rows(q.detach().contiguous(), group, world)
        ka, _ = _gather_rows(k.detach().contiguous(), group, world)
        n0, n = sum(counts[:me]), counts[me]
        kr = shard.shape[0]
        ex_local = None
        # Ranks may pass exclude or not, with any width: agree on the widest (one tiny all-reduce) and pad with -1, so
        # every rank runs the same collectives (a rank skipping one would hang the others).
        width = torch.tensor([0 if exclude is None else exclude.shape[1]], dtype=torch.long, device=q.device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX, group=group)
        width = int(width)
        if width:
            ex = torch.full((q.shape[0], width), -1, dtype=torch.long, device=q.device)
            if exclude is not None:
                ex[:, :exclude.shape[1]] = exclude
            exa, _ = _gather_rows(ex, group, world)
            loc = exa - offset
            ex_local = torch.where((exa >= 0) & (loc >= 0) & (loc < kr), loc, -1)
        with torch.no_grad():
            lse_p, rank_p = infonce_bank_partial(qa, ka, shard.detach(), t.detach(), exclude=ex_local, impl=impl)
        parts = [torch.empty_like(lse_p) for _ in range(world)]
        dist.all_gather(parts, lse_p.contiguous(), group=group)
        dist.all_reduce(rank_p, group=group)
        inv_t = 1.0 / t.detach().to(acc)
        lpos = (qa.to(acc) * ka.to(acc)).sum(1) * inv_t
        lse = torch.logsumexp(torch.stack([lpos] + parts), 0)  # rank order: the same bits on every rank
        count = sx = None
        if eps > 0:  # sum of the kept logits, for label smoothing: q_i . (shard sum - excluded rows) / T, all-reduced
            bsum = shard.detach().to(acc).sum(0)
            kept = qa.to(acc) @ bsum
            if ex_local is not None:
                dv = _distinct_valid(ex_local)
                rows_b = shard.detach().to(acc)[ex_local.clamp(min=0)] * dv.unsqueeze(-1)
                kept = kept - (qa.to(acc).unsqueeze(1) * rows_b).sum((1, 2))
            dist.all_reduce(kept, group=group)
            sx = lpos + kept * inv_t
            nex = _distinct_valid(exa).sum(1) if width else torch.zeros_like(lpos)
            count = (size + 1 - nex).to(acc)
            loss = lse - (1 - eps) * lpos - eps * sx / count
        else:
            loss = lse - lpos
        own = slice(n0, n0 + n)
        ctx.save_for_backward(q, k, shard, t, qa, lse, lpos[own], count, ex_local)
        ctx.meta = (group, world, me, own, eps, impl)
        ctx.mark_non_differentiable(rank_p)
        return loss[own], lse[own], rank_p[own]

    @staticmethod
    def backward(ctx, g_loss, g_lse, _g_rank):
        q, k, shard, t, qa, lse, lpos, count, ex_local = ctx.saved_tensors
        group, world, me, own, eps, impl = ctx.meta
        acc = lse.dtype
        g = torch.zeros_like(lpos) if g_loss is None else g_loss.to(acc)
        h = torch.zeros_like(lpos) if g_lse is None else g_lse.to(acc)
        ga, _ = _gather_rows(g.contiguous(), group, world)
        ha, _ = _gather_rows(h.contiguous(), group, world)
        coef = ga + ha
        inv_t = 1.0 / t.detach().to(acc)
        bank_grad = ctx.needs_input_grad[2]
        dq_a, dshard = _partial_backward(impl, coef, qa, shard.detach(), t.detach(), ex_local, lse, bank_grad)
        dq_a = dq_a.to(acc)
        if bank_grad:
            dshard = dshard.to(acc)
        sm = None
        if eps > 0:  # smoothing's uniform weight -eps g / count on every kept logit of the shard
            sm = ga * eps / count
            bsum = shard.detach().to(acc).sum(0)
            ex_rows = 0
            if ex_local is not None:
                dv = _distinct_valid(ex_local)
                ex_rows = (shard.detach().to(acc)[ex_local.clamp(min=0)] * dv.unsqueeze(-1)).sum(1)
            dq_a -= (sm * inv_t)[:, None] * (bsum - ex_rows)
            if bank_grad:
                wq = (sm * inv_t)[:, None] * qa.to(acc)
                dshard -= wq.sum(0)
                if ex_local is not None:
                    dv = _distinct_valid(ex_local)
                    r, c = dv.nonzero(as_tuple=True)
                    dshard.index_add_(0, ex_local[r, c], wq[r])
        dist.all_reduce(dq_a, group=group)
        dq = dq_a[own]
        # The positive's terms (on the row's own rank only): dL/dl_pos = coef p_pos - (1 - eps) g - sm.
        ppos = torch.exp(lpos - lse[own])
        wpos = coef[own] * ppos - g * (1 - eps) - (sm[own] if sm is not None else 0)
        wpos = wpos * inv_t
        qf, kf = q.detach().to(acc), k.detach().to(acc)
        dq = dq + wpos[:, None] * kf
        dk = wpos[:, None] * qf
        # The loss depends on T only through q / T: dL/dT = -(1/T) sum_i q_i . dL/dq_i over this rank's rows.
        dt = -(qf * dq).sum() * inv_t if ctx.needs_input_grad[3] else None
        return (dq.to(q.dtype), dk.to(k.dtype), dshard.to(shard.dtype) if bank_grad else None,
                dt.to(t.dtype) if dt is not None else None, None, None, None, None, None, None)


def _backend_impl(q, impl):
    from vkernels import _backend
    return _backend.resolve_impl("infonce_bank_partial", q, impl)
