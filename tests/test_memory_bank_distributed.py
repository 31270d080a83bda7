"""MemoryBank across ranks (gloo, CPU, spawned processes): sync="gather" and sync="sharded" against one process holding
all the data. Loss, rank and gradients (q, k, bank, temperature) equal the single-process computation, and the banks
equal the single-process bank bit for bit, over several steps that wrap the queue; momentum updates with duplicates
across ranks; DDP with the bank on its ignore list. Every run has a deadline: a hang fails instead of blocking CI."""
import datetime
import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

# Per spawn. An idle 2-core machine runs both world sizes in well under a minute (process start and `import torch`
# dominate); a loaded one can take minutes, so the limit is generous and settable.
DEADLINE_S = int(os.environ.get("VKERNELS_DIST_TEST_TIMEOUT", "300"))
SIZE, DIM, BATCH, STEPS, T0 = 13, 8, 3, 3, 0.1  # 13 rows: uneven shards for 2 and 4 ranks; W * 3 keys a step wrap it


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=DEADLINE_S))
    try:
        _check_all(rank, world)
        err = None
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        err = traceback.format_exc()
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(err or "ok")


def _run(world, tmp_path):
    ctx = mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=False)
    end = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > end:
                pytest.fail(f"{world} ranks did not finish in {DEADLINE_S} s (a hang in a collective?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    for r in range(world):
        msg = (tmp_path / f"rank{r}.txt").read_text()
        assert msg == "ok", f"rank {r}:\n{msg}"


@pytest.mark.parametrize("world", [2, 4])
def test_gather_and_sharded_equal_one_process(world, tmp_path):
    _run(world, tmp_path)


# ------------------------------------------------------------------------------------------------ what each rank runs
def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}: {m}")


def _check_all(rank, world):
    import vkernels
    from vkernels.nn import InfoNCEWithBank, MemoryBank
    from vkernels.nn.memory_bank import sharded_infonce_bank_loss

    g = torch.Generator().manual_seed(1234)  # the same data on every rank; each takes its rows
    dt = torch.float64
    ref = MemoryBank(SIZE, DIM, dtype=dt, seed=7)
    gat = MemoryBank(SIZE, DIM, dtype=dt, seed=7, sync="gather")
    sha = MemoryBank(SIZE, DIM, dtype=dt, seed=7, sync="sharded")
    lo, n_loc = sha.offset, sha.local_size
    assert torch.equal(gat.memory, ref.memory) and torch.equal(sha.memory, ref.memory[lo:lo + n_loc])
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    for step in range(STEPS):
        qf = F.normalize(torch.randn(world * BATCH, DIM, generator=g, dtype=dt), dim=1)
        kf = F.normalize(qf + 0.5 * torch.randn(world * BATCH, DIM, generator=g, dtype=dt), dim=1)
        exf = torch.randint(-1, SIZE, (world * BATCH, 2), generator=g)
        exf[0, 1] = exf[0, 0]  # a repeat
        for eps, ex in ((0.0, None), (0.1, exf)):
            # The single-process computation: each rank's mean loss, summed (DDP averages the gradients of these).
            leaves = [t.clone().requires_grad_() for t in (qf, kf, ref.negatives())]
            t_ref = torch.tensor(T0, dtype=dt, requires_grad=True)
            rows, _, rk = vkernels.infonce_bank_loss(*leaves, t_ref, reduction="none", label_smoothing=eps,
                                                     exclude=ex, return_lse=True, return_rank=True)
            total = rows.reshape(world, BATCH).mean(1).sum()
            dq_r, dk_r, db_r, dt_r = torch.autograd.grad(total, leaves + [t_ref])
            for mode, bank in (("gather", gat), ("sharded", sha)):
                what = f"step {step} eps {eps} {mode}"
                q, k = qf[mine].clone().requires_grad_(), kf[mine].clone().requires_grad_()
                b = bank.negatives().clone().requires_grad_()
                t = torch.tensor(T0, dtype=dt, requires_grad=True)
                kw = dict(label_smoothing=eps, exclude=None if ex is None else ex[mine], return_rank=True)
                if mode == "gather":
                    loss, rank_out = vkernels.infonce_bank_loss(q, k, b, t, **kw)
                else:
                    loss, rank_out = sharded_infonce_bank_loss(q, k, b, t, offset=lo, size=SIZE, **kw)
                _close(loss, rows[mine].mean(), f"{what} loss")
                assert torch.equal(rank_out, rk[mine]), what
                dq, dk, db, dtt = torch.autograd.grad(loss, [q, k, b, t])
                _close(dq, dq_r[mine], f"{what} dq")
                _close(dk, dk_r[mine], f"{what} dk")
                dist.all_reduce(dtt)
                _close(dtt, dt_r, f"{what} dT (summed over ranks)")
                if mode == "gather":
                    dist.all_reduce(db)  # every rank's queries' share of the replicated bank's gradient
                    _close(db, db_r, f"{what} dbank")
                else:
                    _close(db, db_r[lo:lo + n_loc], f"{what} dshard")
            # Exclusion on some ranks only (others pass None, or a narrower list): no hang, the same loss.
            if ex is not None:
                mine_ex = None if rank % 2 else ex[mine][:, :1 + rank % 3 // 2]
                full_ex = torch.cat([torch.full((BATCH, 2), -1) if r % 2 else
                                     F.pad(ex[r * BATCH:(r + 1) * BATCH][:, :1 + r % 3 // 2],
                                           (0, 1 - r % 3 // 2), value=-1) for r in range(world)])
                want = vkernels.infonce_bank_loss(qf, kf, ref.negatives(), T0, reduction="none", label_smoothing=eps,
                                                  exclude=full_ex)[mine].mean()
                got = sharded_infonce_bank_loss(qf[mine], kf[mine], sha.negatives(), T0, offset=lo, size=SIZE,
                                                label_smoothing=eps, exclude=mine_ex)
                _close(got, want, f"step {step} mixed exclude")
            # Through the module: the same loss.
            crit = InfoNCEWithBank(T0, bank=sha, label_smoothing=eps)
            _close(crit(qf[mine], kf[mine], exclude=None if ex is None else ex[mine]), rows[mine].mean(),
                   f"step {step} module")
        # This step's keys: the reference takes all of them, in rank order; the others their own rows.
        ref.enqueue(kf)
        gat.enqueue(kf[mine])
        sha.enqueue(kf[mine])
        assert torch.equal(gat.negatives(), ref.negatives()), f"step {step}: gathered queue differs"
        assert torch.equal(sha.negatives(), ref.negatives()[lo:lo + n_loc]), f"step {step}: shard differs"
        assert int(gat.ptr) == int(ref.ptr) == int(sha.ptr)

    # Momentum banks: indices gathered in rank order, duplicates across ranks (the last rank's key wins).
    mref = MemoryBank(SIZE, DIM, mode="momentum", momentum=0.7, dtype=dt, seed=3)
    mgat = MemoryBank(SIZE, DIM, mode="momentum", momentum=0.7, dtype=dt, seed=3, sync="gather")
    msha = MemoryBank(SIZE, DIM, mode="momentum", momentum=0.7, dtype=dt, seed=3, sync="sharded")
    for _ in range(2):
        keys = F.normalize(torch.randn(world * BATCH, DIM, generator=g, dtype=dt), dim=1)
        idx = torch.randint(0, SIZE, (world * BATCH,), generator=g)
        idx[-1] = idx[0]  # rank 0's first row and the last rank's last row name one index
        mref.update(keys, idx)
        mgat.update(keys[mine], idx[mine])
        msha.update(keys[mine], idx[mine])
        assert torch.equal(mgat.negatives(), mref.negatives())
        assert torch.equal(msha.negatives(), mref.negatives()[msha.offset:msha.offset + msha.local_size])

    if world == 2:
        _check_ddp(rank)


class _Model(torch.nn.Module):
    def __init__(self, bank):
        super().__init__()
        from vkernels.nn import InfoNCEWithBank
        self.enc = torch.nn.Linear(DIM, DIM).double()
        self.crit = InfoNCEWithBank(T0, bank=bank)

    def forward(self, x):
        q = F.normalize(self.enc(x), dim=1)
        with torch.no_grad():
            k = F.normalize(self.enc(x + 0.1), dim=1)
        loss = self.crit(q, k)
        self.crit.update_bank(k)
        return loss


def _check_ddp(rank):
    from vkernels.nn import MemoryBank
    from vkernels.nn.memory_bank import ddp_ignore_banks

    torch.manual_seed(0)
    bank = MemoryBank(12, DIM, dtype=torch.float64, seed=9, sync="sharded")  # equal shards: a broadcast would fit
    model = _Model(bank)
    assert sorted(ddp_ignore_banks(model)) == ["crit.bank.memory", "crit.bank.ptr"]
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    before = bank.negatives().clone()
    full = MemoryBank(12, DIM, dtype=torch.float64, seed=9).negatives()
    assert torch.equal(before, full[bank.offset:bank.offset + bank.local_size])  # not rank 0's shard
    for _ in range(2):
        ddp(torch.randn(4, DIM, dtype=torch.float64)).backward()
    shards = [torch.empty_like(bank.negatives()) for _ in range(2)]
    dist.all_gather(shards, bank.negatives())
    assert not torch.equal(shards[0], shards[1])  # each rank kept its own rows
    grads = [torch.empty_like(model.enc.weight.grad) for _ in range(2)]
    dist.all_gather(grads, model.enc.weight.grad)
    assert torch.equal(grads[0], grads[1])  # DDP still averaged the encoder's gradients
