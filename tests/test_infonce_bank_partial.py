"""infonce_bank_partial (the bank-only lse and rank, for sharded banks) and its backward: every implementation against
an fp64 reference, merging shards reproduces infonce_bank_loss, rows with everything excluded, the backward with an
external lse (how the sharded loss uses it), gradcheck, opcheck, torch.compile, bad input."""
import pytest
import torch
import torch.nn.functional as F

import vkernels
from vkernels.reference.infonce_bank_partial import infonce_bank_partial as reference
from _common import impl_params
from _infonce import check_close, gpu_slack

OP = "infonce_bank_partial"
IMPLS = impl_params(OP)
SIZES = {"cpu": (37, 301, 24), "triton": (19, 133, 20)}


def make_inputs(n, kk, d, device, dtype):
    q = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=1)
    k = F.normalize(q + 0.4 * torch.randn(n, d, dtype=torch.float64), dim=1)
    bank = F.normalize(torch.randn(kk, d, dtype=torch.float64), dim=1)
    return [t.to(device=device, dtype=dtype) for t in (q, k, bank)]


@pytest.mark.ci_cover("dtype", "exclude")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("exclude", [None, "multi"])
def test_matches_reference(device, impl, dtype, exclude):
    n, kk, d = SIZES[impl]
    q, k, bank = make_inputs(n, kk, d, device, dtype)
    ex = None
    if exclude == "multi":
        ex = torch.randint(-1, kk, (n, 3), device=device)
        ex[:, 2] = ex[:, 1]
    tdt = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = [q.clone().requires_grad_(), bank.clone().requires_grad_(),
              torch.tensor(0.05, dtype=tdt, device=device, requires_grad=True)]
    lse, rank = vkernels.infonce_bank_partial(leaves[0], k, leaves[1], leaves[2], exclude=ex, impl=impl)
    assert lse.dtype == tdt and rank.dtype == torch.int64
    h = torch.randn(n, dtype=torch.float64)
    grads = torch.autograd.grad((lse.double().cpu() * h).sum(), leaves)

    def ref_run(prec):
        ls = [q.detach().cpu().to(prec).requires_grad_(), bank.detach().cpu().to(prec).requires_grad_(),
              torch.tensor(0.05, dtype=torch.float64 if prec == torch.float64 else torch.float32,
                           requires_grad=True)]
        L, R = reference(ls[0], k.cpu().to(prec), ls[1], ls[2], None if ex is None else ex.cpu())
        return L, R, torch.autograd.grad((L.double() * h).sum(), ls)

    L64, R64, g64 = ref_run(torch.float64)
    Ll, _, gl = ref_run(dtype)
    slack = gpu_slack(device, dtype, 0.05)
    check_close(lse, Ll, L64, dtype, "lse", slack)
    for name, a, b, c in zip(("dq", "dbank", "dtemperature"), grads, gl, g64):
        check_close(a, b, c, dtype, name, slack)
    if dtype == torch.float64:
        assert torch.equal(rank.cpu(), R64)
    else:
        assert (rank.cpu() - R64).abs().max() <= 2 and (rank.cpu() == R64).float().mean() > 0.9


@pytest.mark.parametrize("device,impl", IMPLS)
def test_shards_merge_to_the_full_loss(device, impl):
    """logsumexp(l_pos, partial over each shard) = infonce_bank_loss's lse; shard ranks sum to its rank."""
    q, k, bank = make_inputs(9, 50, 8, device, torch.float64)
    ex = torch.randint(-1, 50, (9, 2), device=device)
    loss, lse, rank = vkernels.infonce_bank_loss(q, k, bank, 0.1, reduction="none", exclude=ex, return_lse=True,
                                                 return_rank=True, impl=impl)
    parts, ranks = [], 0
    for lo, hi in ((0, 13), (13, 31), (31, 50)):
        loc = ex - lo
        ex_s = torch.where((ex >= 0) & (loc >= 0) & (loc < hi - lo), loc, -1)
        p, r = vkernels.infonce_bank_partial(q, k, bank[lo:hi], 0.1, exclude=ex_s, impl=impl)
        parts.append(p)
        ranks = ranks + r
    lpos = (q * k).sum(1) / 0.1
    torch.testing.assert_close(torch.logsumexp(torch.stack([lpos] + parts), 0), lse)
    assert torch.equal(ranks, rank)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_everything_excluded_is_empty(device, impl):
    q, k, bank = make_inputs(3, 2, 4, device, torch.float32)
    ex = torch.tensor([[0, 1], [1, -1], [1, 0]], device=device)
    qq, bb = q.clone().requires_grad_(), bank.clone().requires_grad_()
    lse, rank = vkernels.infonce_bank_partial(qq, k, bb, 0.1, exclude=ex, impl=impl)
    assert torch.isneginf(lse[0]) and torch.isneginf(lse[2]) and torch.isfinite(lse[1])
    torch.testing.assert_close(lse[1], q[1] @ bank[0] / 0.1)
    assert rank[0] == 0 and rank[2] == 0
    dq, db = torch.autograd.grad(lse[1], [qq, bb])
    assert torch.isfinite(dq).all() and (dq[0] == 0).all() and (dq[2] == 0).all()
    torch.testing.assert_close(db[0], q[1] / 0.1)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_backward_with_an_external_lse(device, impl):
    """The sharded loss's use: w_ij = g_i exp(l_ij - lse_i) / T with lse_i from all shards and the positive."""
    q, k, bank = make_inputs(7, 20, 6, device, torch.float64)
    ex = torch.tensor([3, -1, 0, 19, 5, 5, -1], device=device).unsqueeze(1)
    t = torch.tensor(0.2, dtype=torch.float64, device=device)
    lse = torch.randn(7, dtype=torch.float64, device=device) + 10  # any per-row normaliser
    g = torch.randn(7, dtype=torch.float64, device=device)
    op = (torch.ops.vkernels.infonce_bank_partial_backward_triton if impl == "triton"
          else torch.ops.vkernels.infonce_bank_partial_backward)
    dq, db, _ = op(g, q, bank, t, ex, lse, True)
    logits = (q @ bank.t() / t).cpu()
    logits[torch.arange(7)[ex.cpu()[:, 0] >= 0], ex.cpu()[ex.cpu()[:, 0] >= 0, 0]] = float("-inf")
    w = torch.exp(logits - lse.cpu()[:, None]) * g.cpu()[:, None] / 0.2
    torch.testing.assert_close(dq.cpu(), w @ bank.cpu())
    torch.testing.assert_close(db.cpu(), w.t() @ q.cpu())
    dq2, db2, _ = op(g, q, bank, t, ex, lse, False)
    assert torch.equal(dq2, dq) and db2.shape == (0, 6)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_gradcheck(device, impl):
    q, k, bank = make_inputs(5, 9, 4, device, torch.float64)
    ex = torch.tensor([[1, -1], [3, 3], [-1, -1], [0, 8], [2, 5]], device=device)
    args = [x.clone().requires_grad_() for x in (q, bank, torch.tensor(0.3, dtype=torch.float64, device=device))]
    torch.autograd.gradcheck(lambda q, b, t: vkernels.infonce_bank_partial(q, k, b, t, exclude=ex, impl=impl)[0],
                             args, fast_mode=impl == "triton")


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    sfx = "_triton" if impl == "triton" else ""
    fwd = getattr(torch.ops.vkernels, "infonce_bank_partial" + sfx)
    bwd = getattr(torch.ops.vkernels, "infonce_bank_partial_backward" + sfx)
    q, k, bank = make_inputs(6, 10, 8, device, torch.float32)
    t = torch.tensor(0.1, device=device)
    ex = torch.tensor([0, -1, 3, 9, 9, 2], device=device)
    for qq, bb, e in ((q, bank, None), (q.t().contiguous().t(), bank[::2], ex.clamp(max=4).unsqueeze(1))):
        torch.library.opcheck(fwd.default, (qq.clone().requires_grad_(), k, bb.clone().requires_grad_(),
                                            t.clone().requires_grad_(), e))
        lse, _ = fwd(qq, k, bb, t, e)
        for bank_grad in (True, False):
            torch.library.opcheck(bwd.default, (torch.randn_like(lse), qq, bb, t, e, lse, bank_grad))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_torch_compile_fullgraph(device, impl):
    torch._dynamo.reset()
    q, k, bank = make_inputs(8, 40, 16, device, torch.float32)
    ex = torch.randint(-1, 40, (8,), device=device)

    def f(q, bank):
        lse, rank = vkernels.infonce_bank_partial(q * 2, k, bank, 0.2, exclude=ex, impl=impl)
        return lse.sum(), (rank < 5).float().mean()

    leaves = [t.clone().requires_grad_() for t in (q, bank)]
    got = torch.compile(f, fullgraph=True, dynamic=False)(*leaves)
    want = f(*leaves)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got[0], leaves), torch.autograd.grad(want[0], leaves)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_bad_input_names_the_argument(impl):
    q, k, bank = make_inputs(3, 5, 4, "cpu", torch.float32)
    f = vkernels.infonce_bank_partial
    with pytest.raises(ValueError, match=r"infonce_bank_partial: bank must have shape \(K, 4\)"):
        f(q, k, bank[:, :3], impl=impl)
    with pytest.raises(TypeError, match="bank.dtype"):
        f(q, k, bank.double(), impl=impl)
    with pytest.raises(ValueError, match="temperature"):
        f(q, k, bank, 0.0, impl=impl)
    with pytest.raises(IndexError, match="exclude"):
        f(q, k, bank, exclude=torch.tensor([0, 5, 1]), impl=impl)
    with pytest.raises(ValueError, match="empty"):
        f(q, k, bank[:0], impl=impl)
    if impl == "cpu":
        with pytest.raises(RuntimeError, match="infonce_bank_partial: exclude"):
            torch.ops.vkernels.infonce_bank_partial(q, k, bank, torch.tensor(0.1), torch.tensor([0, 7, 1]))
        with pytest.raises(RuntimeError, match="infonce_bank_partial_backward: lse"):
            torch.ops.vkernels.infonce_bank_partial_backward(torch.zeros(3), q, bank, torch.tensor(0.1), None,
                                                             torch.zeros(4), True)


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: lse / rank forward and the lse backward per dtype, with and without
    exclude, at a small and the largest feature size."""

    def case(dtype, d, exclude):
        def run():
            n, kk = 40, 150
            q, k, bank = (F.normalize(torch.randn(m, d, dtype=torch.float64), dim=1).to(dtype).requires_grad_()
                          for m in (n, n, kk))
            ex = torch.randint(-1, kk, (n, 2)) if exclude else None
            lse, _ = vkernels.infonce_bank_partial(q, k, bank, 0.1, exclude=ex, impl="triton")
            torch.autograd.grad(lse.sum(), (q, bank))
        return f"d={d} exclude={exclude} {dtype}", run

    return [case(dtype, d, ex) for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
            for d in ((24, 256) if full else (256,)) for ex in (False, True)]
