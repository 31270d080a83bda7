"""MemoryBank (one process): FIFO wrap-around against a row-by-row queue, NPID's momentum update against a plain
loop (duplicates: last wins), bit-exact checkpoint resume, the deferred-write contract, InfoNCEWithBank with a bank,
DDP's ignore list, bad input."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

import vkernels
from vkernels.nn import InfoNCEWithBank, MemoryBank
from vkernels.nn.memory_bank import ddp_ignore_banks, shard_range


def unit(*shape, dtype=torch.float32):
    return F.normalize(torch.randn(shape, dtype=torch.float64), dim=-1).to(dtype)


def fifo_reference(init, batches):
    """The queue written one key at a time: row ptr gets the key, ptr advances mod size."""
    ref, ptr = init.clone(), 0
    for keys in batches:
        for row in keys:
            ref[ptr] = row
            ptr = (ptr + 1) % ref.shape[0]
    return ref, ptr


@pytest.mark.parametrize("size,batches", [
    (10, [3, 3, 3, 3, 5]),      # wraps mid-batch; size not a multiple of the batch
    (7, [2, 9, 1, 0, 4]),        # a batch larger than the bank keeps the newest rows; an empty batch is a no-op
    (5, [5, 5, 12, 3]),          # exactly full, then 2 x the bank
    (1, [1, 3, 2]),
])
def test_queue_wraparound_matches_row_by_row_fifo(size, batches):
    bank = MemoryBank(size, 6, seed=3)
    init = bank.memory.clone()
    keys = [unit(b, 6) for b in batches]
    for kb in keys:
        bank.enqueue(kb)
        bank.flush()
    ref, ptr = fifo_reference(init, keys)
    assert torch.equal(bank.memory, ref)
    assert int(bank.ptr) == ptr


def test_queue_dtype_and_init_is_normalised_and_seeded():
    a, b, c = MemoryBank(50, 8, seed=1), MemoryBank(50, 8, seed=1), MemoryBank(50, 8, seed=2)
    assert torch.equal(a.memory, b.memory) and not torch.equal(a.memory, c.memory)
    torch.testing.assert_close(a.memory.norm(dim=1), torch.ones(50))
    h = MemoryBank(9, 4, dtype=torch.float16)
    assert h.memory.dtype == torch.float16
    h.enqueue(unit(4, 4, dtype=torch.float16))
    assert h.negatives()[:4].dtype == torch.float16


def momentum_reference(init, m, batches):
    """NPID's update, written plainly: per batch, each index's last key; v = normalize(m v + (1 - m) k)."""
    ref = init.clone().double()
    for keys, index in batches:
        last = {}
        for pos, i in enumerate(index.tolist()):
            last[i] = pos
        for i, pos in last.items():
            v = m * ref[i] + (1 - m) * keys[pos].double()
            ref[i] = v / v.norm()
    return ref


@pytest.mark.parametrize("m", [0.5, 0.9, 0.0])
def test_momentum_update_matches_plain_loop_with_duplicates(m):
    bank = MemoryBank(13, 5, mode="momentum", momentum=m, seed=4)
    init = bank.memory.clone()
    batches = []
    for b in (4, 7, 6):
        index = torch.randint(0, 13, (b,))
        index[-1] = index[0]  # a duplicate in every batch: the later key wins
        batches.append((unit(b, 5), index))
        bank.update(*batches[-1])
    bank.flush()
    ref = momentum_reference(init, m, batches)
    torch.testing.assert_close(bank.memory.double(), ref, rtol=1e-6, atol=1e-6)
    untouched = torch.ones(13, dtype=torch.bool)
    for _, idx in batches:
        untouched[idx] = False
    assert torch.equal(bank.memory[untouched], init[untouched])


def test_momentum_duplicate_rule_is_last_occurrence():
    bank = MemoryBank(4, 3, mode="momentum", momentum=0.0)
    k = unit(3, 3)
    bank.update(k, torch.tensor([2, 2, 2]))
    torch.testing.assert_close(bank.negatives()[2], k[2])
    torch.testing.assert_close(bank.negatives()[2].norm(), torch.tensor(1.0))


def _train(steps, model, crit, opt, data, start=0):
    for s in range(start, start + steps):
        x, idx = data[s]
        q = F.normalize(model(x), dim=1)
        with torch.no_grad():
            k = F.normalize(model(x + 0.1), dim=1)
        if crit.bank.mode == "momentum":
            loss = crit(q, k, index=idx)
            crit.update_bank(k, idx)
        else:
            loss = crit(q, k)
            crit.update_bank(k)  # before backward: the contract says this is safe
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("mode", ["queue", "momentum"])
def test_state_dict_resume_is_bit_exact(mode):
    torch.manual_seed(0)
    data = [(torch.randn(5, 7), torch.randint(0, 23, (5,))) for _ in range(8)]

    def build():
        torch.manual_seed(1)
        model = torch.nn.Linear(7, 6)
        crit = InfoNCEWithBank(0.1, learnable_temperature=True, bank=MemoryBank(23, 6, mode=mode, seed=5))
        opt = torch.optim.SGD(list(model.parameters()) + list(crit.parameters()), lr=0.5, momentum=0.9)
        return model, crit, opt

    a = build()
    _train(8, *a, data)

    b = build()
    _train(3, *b, data)
    b[1].update_bank(F.normalize(torch.randn(2, 6), dim=1)) if mode == "queue" else None  # staged at save time
    buf = io.BytesIO()
    torch.save({"model": b[0].state_dict(), "crit": b[1].state_dict(), "opt": b[2].state_dict()}, buf)
    assert b[1].bank.pending == 0  # state_dict wrote the staged rows
    saved_bank = b[1].bank.memory.clone()
    buf.seek(0)
    ck = torch.load(buf)
    c = build()
    c[0].load_state_dict(ck["model"])
    c[1].load_state_dict(ck["crit"])
    c[2].load_state_dict(ck["opt"])
    assert torch.equal(c[1].bank.memory, saved_bank) and int(c[1].bank.ptr) == int(b[1].bank.ptr)
    _train(5, *c, data, start=3)
    _train(5, *b, data, start=3)
    for x, y in ((b, c),):
        assert torch.equal(x[1].bank.negatives(), y[1].bank.negatives())
        assert int(x[1].bank.ptr) == int(y[1].bank.ptr)
        for p1, p2 in zip(x[0].parameters(), y[0].parameters()):
            assert torch.equal(p1, p2)
        assert torch.equal(x[1].log_temperature, y[1].log_temperature)
    if mode == "momentum":  # without the extra staged batch, b and a are the same run
        assert torch.equal(a[1].bank.negatives(), b[1].bank.negatives())


def test_forward_enqueue_backward_uses_the_forward_bank():
    bank = MemoryBank(11, 8, seed=2)
    crit = InfoNCEWithBank(0.2, bank=bank)
    old = bank.negatives().clone()
    q, k = unit(4, 8).requires_grad_(), unit(4, 8)
    loss = crit(q, k)
    crit.update_bank(unit(6, 8))  # staged: the bank the forward saved is unchanged
    assert torch.equal(bank.memory, old) and bank.pending == 1
    (dq,) = torch.autograd.grad(loss, q)
    q2 = q.detach().clone().requires_grad_()
    (dq_ref,) = torch.autograd.grad(vkernels.infonce_bank_loss(q2, k, old, 0.2, impl="reference"), q2)
    torch.testing.assert_close(dq, dq_ref)
    # The next read writes the keys: they are negatives from the next step on.
    assert not torch.equal(bank.negatives(), old) and bank.pending == 0
    loss2 = crit(q, k)
    torch.testing.assert_close(loss2, vkernels.infonce_bank_loss(q, k, bank.memory, 0.2, impl="reference"))


def test_graph_held_across_a_write_fails_loudly():
    bank = MemoryBank(11, 8)
    crit = InfoNCEWithBank(0.2, bank=bank)
    b = bank.memory.requires_grad_()  # a bank that takes gradients: the op saves it for backward
    q, k = unit(4, 8).requires_grad_(), unit(4, 8)
    loss = crit(q, k)
    bank.memory.requires_grad_(False)
    crit.update_bank(unit(3, 8))
    bank.flush()  # in-place write before the backward: autograd's version check must catch it
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    del b


def test_momentum_index_excludes_own_row():
    bank = MemoryBank(9, 4, mode="momentum", seed=1)
    crit = InfoNCEWithBank(0.1, bank=bank, reduction="none")
    q, k, idx = unit(3, 4), unit(3, 4), torch.tensor([0, 5, 8])
    got = crit(q, k, index=idx)
    want = vkernels.infonce_bank_loss(q, k, bank.memory, 0.1, reduction="none", exclude=idx, impl="reference")
    torch.testing.assert_close(got, want)


def test_module_keeps_the_tensor_form():
    crit = InfoNCEWithBank(0.1)
    q, k, b = unit(3, 4), unit(3, 4), unit(6, 4)
    torch.testing.assert_close(crit(q, k, b), vkernels.infonce_bank_loss(q, k, b, 0.1))
    with pytest.raises(ValueError, match="no bank"):
        crit(q, k)


def test_shard_range_covers_the_bank_in_rank_order():
    for size in (8, 9, 10, 11):
        for w in (1, 2, 3, 4):
            spans = [shard_range(size, w, r) for r in range(w)]
            assert spans[0][0] == 0 and sum(n for _, n in spans) == size
            assert all(o + n == spans[i + 1][0] for i, (o, n) in enumerate(spans[:-1]))
            assert max(n for _, n in spans) - min(n for _, n in spans) <= 1


def test_ddp_ignore_lists_the_bank_buffers():
    model = torch.nn.Module()
    model.enc = torch.nn.Linear(3, 3)
    model.crit = InfoNCEWithBank(0.1, bank=MemoryBank(5, 3))
    names = ddp_ignore_banks(model)
    assert sorted(names) == ["crit.bank.memory", "crit.bank.ptr"]
    assert set(names) <= set(model._ddp_params_and_buffers_to_ignore)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="size"):
        MemoryBank(0, 4)
    with pytest.raises(ValueError, match="dim"):
        MemoryBank(4, 0)
    with pytest.raises(ValueError, match="mode"):
        MemoryBank(4, 4, mode="fifo")
    with pytest.raises(ValueError, match="sync"):
        MemoryBank(4, 4, sync="allreduce")
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(4, 4, mode="momentum", momentum=1.5)
    with pytest.raises(TypeError, match="dtype"):
        MemoryBank(4, 4, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="torch.distributed"):
        MemoryBank(4, 4, sync="gather")
    q = MemoryBank(4, 4)
    with pytest.raises(ValueError, match=r"shape \(B, 4\)"):
        q.enqueue(unit(2, 5))
    with pytest.raises(TypeError, match="dtype"):
        q.enqueue(unit(2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="update"):
        q.update(unit(2, 4), torch.tensor([0, 1]))
    m = MemoryBank(4, 4, mode="momentum")
    with pytest.raises(IndexError, match=r"index must be in \[0, 3\]"):
        m.update(unit(2, 4), torch.tensor([0, 4]))
    with pytest.raises(IndexError, match="index"):
        m.update(unit(2, 4), torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="index"):
        m.update(unit(2, 4), torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="enqueue"):
        m.enqueue(unit(2, 4))
    with pytest.raises(TypeError, match="MemoryBank"):
        InfoNCEWithBank(0.1, bank=torch.zeros(3, 3))
    crit = InfoNCEWithBank(0.1, bank=MemoryBank(4, 4))
    with pytest.raises(ValueError, match="momentum"):
        crit(unit(2, 4), unit(2, 4), index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="bank must have shape"):
        crit(unit(2, 5), unit(2, 5))
    with pytest.raises(TypeError, match="dtype"):
        crit(unit(2, 4, dtype=torch.float64), unit(2, 4, dtype=torch.float64))
    with pytest.raises(IndexError, match="exclude"):
        crit(unit(2, 4), unit(2, 4), exclude=torch.tensor([0, 7]))


@pytest.mark.parametrize("impl", ["cpu", "triton", "reference"])
def test_sharded_loss_on_one_rank_matches_the_op(impl, tmp_path):
    """World size 1 (in this process): the sharded path (partial op, merge, its own backward) on each implementation
    equals infonce_bank_loss, with smoothing, exclusion, lse and rank."""
    import torch.distributed as dist
    from vkernels.nn.memory_bank import sharded_infonce_bank_loss

    if impl not in vkernels.available_impls("infonce_bank_partial", "cpu"):
        pytest.skip(f"{impl} not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        q, k, b = unit(6, 8, dtype=torch.float64), unit(6, 8, dtype=torch.float64), unit(17, 8, dtype=torch.float64)
        ex = torch.tensor([[0, -1], [3, 3], [16, 2], [-1, -1], [5, 6], [1, 0]])
        outs = []
        for fn in ("sharded", "op"):
            leaves = [t.clone().requires_grad_() for t in (q, k, b)] + [torch.tensor(0.1, dtype=torch.float64,
                                                                                      requires_grad=True)]
            kw = dict(reduction="none", label_smoothing=0.2, exclude=ex, return_lse=True, return_rank=True,
                      impl=impl)
            if fn == "sharded":
                loss, lse, rank = sharded_infonce_bank_loss(*leaves, offset=0, size=17, **kw)
            else:
                loss, lse, rank = vkernels.infonce_bank_loss(*leaves, **kw)
            w = torch.linspace(-1, 1, 6, dtype=torch.float64)
            grads = torch.autograd.grad((loss * w).sum() + (lse * w.flip(0)).sum(), leaves)
            outs.append((loss, lse, rank, *grads))
        for name, a, c in zip(("loss", "lse", "rank", "dq", "dk", "dbank", "dT"), *outs):
            torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")
    finally:
        dist.destroy_process_group()
