"""infonce_bank_loss: every implementation against an fp64 reference (loss, lse, rank, gradients of q, k, bank and
temperature); smoothing, exclusion, odd sizes, strides; gradcheck; opcheck; torch.compile; memory; bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

import vkernels
from vkernels._backend import TRITON_INTERPRET
from vkernels.reference.infonce_bank_loss import infonce_bank_loss as reference
from conftest import DEVICES
from _common import cpu_peak_bytes, impl_params, kernels
from _infonce import check_close, gpu_slack

OP = "infonce_bank_loss"
# Absolute slack on top of the 2x-the-reference's-error rule (flash-attention's), per dtype, times (1 + max|oracle|).
# Sizes not multiples of any block size; the Triton interpreter is slow, so its shapes are smaller.
SIZES = {"cpu": (37, 301, 24), "triton": (19, 133, 20)}


IMPLS = impl_params(OP)


def features(n, d, device, dtype=torch.float64, near=None):
    """L2-normalised features (MoCo's), optionally close to `near` (positives that score high)."""
    x = torch.randn(n, d, dtype=torch.float64)
    if near is not None:
        x = near.double().cpu() + 0.4 * x
    return F.normalize(x, dim=1).to(device=device, dtype=dtype)


def make_inputs(n, kk, d, device, dtype):
    q = features(n, d, device, dtype)
    k = features(n, d, device, dtype, near=q)
    bank = features(kk, d, device, dtype)
    return q, k, bank


def oracle_rank(q, k, bank, exclude):
    """Position of the positive in a stable descending argsort of the fp64 logits (= candidates strictly above)."""
    logits = torch.cat([(q.double() * k.double()).sum(1, keepdim=True), q.double() @ bank.double().t()], 1).cpu()
    if exclude is not None:
        ex = exclude.reshape(exclude.shape[0], -1).cpu()
        for i, j in (ex >= 0).nonzero().tolist():
            logits[i, ex[i, j] + 1] = float("-inf")
    order = torch.argsort(-logits, dim=1, stable=True)
    return (order == 0).nonzero()[:, 1], logits


def run_case(device, impl, dtype, temperature, smoothing=0.0, exclude=None, sizes=None, layout="contiguous"):
    n, kk, d = sizes or SIZES[impl]
    q, k, bank = make_inputs(n, kk, d, device, dtype)
    if layout == "strided":  # q transposed in memory, k every other column of a wider tensor, bank every other row
        q = q.t().contiguous().t()
        k = torch.cat([k, k], 1).reshape(n, 2, d).transpose(1, 2).reshape(n, 2 * d)[:, ::2]
        bank = torch.stack([bank, bank], 1).reshape(2 * kk, d)[::2]
        assert not (q.is_contiguous() or k.is_contiguous() or bank.is_contiguous())
    ex = None
    if exclude == "self":  # NPID: each row excludes one entry, some none
        ex = torch.randint(-1, kk, (n,), device=device)
    elif exclude == "multi":  # several per row, with repeats and -1 padding
        ex = torch.randint(-1, kk, (n, 3), device=device)
        ex[:, 2] = ex[:, 1]
    tdt = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, bank)]
    t_leaf = torch.tensor(temperature, dtype=tdt, device=device, requires_grad=True)
    loss, lse, rank = vkernels.infonce_bank_loss(*leaves, t_leaf, reduction="none", label_smoothing=smoothing,
                                                 exclude=ex, return_lse=True, return_rank=True, impl=impl)
    assert loss.dtype == dtype and lse.dtype == tdt and rank.dtype == torch.int64
    g = torch.randn(n, dtype=torch.float64)
    h = 0.3 * torch.randn(n, dtype=torch.float64)
    grads = torch.autograd.grad((loss.double().cpu() * g).sum() + (lse.double().cpu() * h).sum(), leaves + [t_leaf])

    def ref_run(prec):
        ls = [t.detach().to(device="cpu", dtype=prec).requires_grad_() for t in (q, k, bank)]
        tl_ = torch.tensor(temperature, dtype=torch.float64 if prec == torch.float64 else torch.float32,
                           requires_grad=True)
        L, LSE, R = reference(*ls, tl_, smoothing, None if ex is None else ex.cpu())
        gs = torch.autograd.grad((L.double() * g).sum() + (LSE.double() * h).sum(), ls + [tl_])
        return L, LSE, R, gs

    L64, LSE64, _, g64 = ref_run(torch.float64)
    Ll, LSEl, _, gl = ref_run(dtype)
    slack = gpu_slack(device, dtype, temperature)
    check_close(loss, Ll, L64, dtype, "loss", slack)
    check_close(lse, LSEl, LSE64, dtype, "lse", slack)
    for name, a, b, c in zip(("dq", "dk", "dbank", "dtemperature"), grads, gl, g64):
        check_close(a, b, c, dtype, name, slack)
    # Rank: exact, except where a bank logit is within rounding of the positive's (a near-tie can go either way).
    want, logits = oracle_rank(q, k, bank, ex)
    # The kernels accumulate in fp32 from the same (rounded) inputs, so only logits within ~1e-5 relative can flip.
    near = ((logits[:, 1:] - logits[:, :1]).abs() < 1e-3).sum(1)
    slack = near if dtype != torch.float64 else torch.zeros_like(near)
    assert ((rank.cpu() - want).abs() <= slack).all(), "rank"
    assert (rank.cpu() == want).float().mean() > 0.9


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.ci_cover("dtype", "temperature")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [0.07, 0.02])
def test_matches_reference(device, impl, dtype, temperature):
    run_case(device, impl, dtype, temperature)


@pytest.mark.ci_cover("dtype", "smoothing,exclude")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("smoothing,exclude", [(0.1, None), (0.0, "self"), (0.2, "multi")])
def test_smoothing_and_exclusion(device, impl, dtype, smoothing, exclude):
    run_case(device, impl, dtype, 0.05, smoothing, exclude)


@pytest.mark.parametrize("device,impl", IMPLS)
# (3, 70, 40): d past the Triton interpreter's d chunk and dq / dbank column block (32)
@pytest.mark.parametrize("sizes", [(1, 1, 3), (5, 1, 7), (33, 65, 17), (2, 200, 1), (3, 70, 40)], ids=str)
def test_odd_sizes(device, impl, sizes):
    run_case(device, impl, torch.float32, 0.1, 0.1, "self", sizes=sizes)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_strided_inputs(device, impl, dtype):
    run_case(device, impl, dtype, 0.07, 0.1, "multi", layout="strided")


@pytest.mark.parametrize("device,impl", IMPLS)
def test_k1_with_everything_excluded(device, impl):
    """K = 1 and the only bank entry excluded: the positive alone, loss 0, lse = l_pos, rank 0, zero gradients."""
    q, k, bank = make_inputs(4, 1, 8, device, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, bank)]
    ex = torch.zeros(4, dtype=torch.long, device=device)
    loss, lse, rank = vkernels.infonce_bank_loss(*leaves, 0.1, reduction="none", exclude=ex, return_lse=True,
                                                 return_rank=True, impl=impl)
    torch.testing.assert_close(loss, torch.zeros_like(loss))
    torch.testing.assert_close(lse, (q * k).sum(1) / 0.1)
    assert (rank == 0).all()
    grads = torch.autograd.grad(loss.sum(), leaves)
    for gr in grads:
        torch.testing.assert_close(gr, torch.zeros_like(gr))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_empty_batch(device, impl):
    """N = 0: empty per-row results, sum 0, zero bank gradient (mean is NaN, as F.cross_entropy's)."""
    q, k, bank = [t.requires_grad_() for t in make_inputs(0, 7, 5, device, torch.float32)]
    loss, lse, rank = vkernels.infonce_bank_loss(q, k, bank, 0.1, reduction="sum", return_lse=True,
                                                 return_rank=True, impl=impl)
    assert loss.item() == 0 and lse.shape == (0,) and rank.shape == (0,)
    loss.backward()
    assert q.grad.shape == (0, 5) and (bank.grad == 0).all()


@pytest.mark.parametrize("device,impl", IMPLS)
def test_reductions_and_return_convention(device, impl):
    q, k, bank = make_inputs(6, 11, 8, device, torch.float32)
    rows = vkernels.infonce_bank_loss(q, k, bank, 0.1, reduction="none", impl=impl)
    assert rows.shape == (6,)
    torch.testing.assert_close(vkernels.infonce_bank_loss(q, k, bank, 0.1, impl=impl), rows.mean())
    torch.testing.assert_close(vkernels.infonce_bank_loss(q, k, bank, 0.1, reduction="sum", impl=impl), rows.sum())
    out = vkernels.infonce_bank_loss(q, k, bank, 0.1, return_lse=True, impl=impl)
    assert isinstance(out, tuple) and len(out) == 2 and out[1].shape == (6,)
    out = vkernels.infonce_bank_loss(q, k, bank, 0.1, return_rank=True, impl=impl)
    assert len(out) == 2 and out[1].dtype == torch.int64
    assert len(vkernels.infonce_bank_loss(q, k, bank, 0.1, return_lse=True, return_rank=True, impl=impl)) == 3
    # MoCo's formulation, verbatim.
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ bank.t()], 1) / 0.1
    torch.testing.assert_close(rows, F.cross_entropy(logits, torch.zeros(6, dtype=torch.long, device=device),
                                                     reduction="none"))


def test_reference_exclusion_path_matches_cross_entropy():
    """The reference's masked path with nothing excluded is F.cross_entropy with label smoothing."""
    q, k, bank = make_inputs(7, 13, 5, "cpu", torch.float64)
    none = torch.full((7, 2), -1, dtype=torch.long)
    for eps in (0.0, 0.3):
        a = reference(q, k, bank, 0.2, eps, None)
        b = reference(q, k, bank, 0.2, eps, none)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_gradcheck(device, impl):
    q, k, bank = make_inputs(5, 9, 4, device, torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64, device=device)
    ex = torch.tensor([[1, -1], [3, 3], [-1, -1], [0, 8], [2, 5]], device=device)

    def f(q, k, bank, t):
        loss, lse = vkernels.infonce_bank_loss(q, k, bank, t, reduction="none", label_smoothing=0.1, exclude=ex,
                                               return_lse=True, impl=impl)
        return loss, lse

    args = [x.clone().requires_grad_() for x in (q, k, bank, t)]
    torch.autograd.gradcheck(f, args, fast_mode=impl == "triton")


def _samples(device):
    q, k, bank = make_inputs(6, 10, 8, device, torch.float32)
    t = torch.tensor(0.1, device=device)
    ex = torch.tensor([0, -1, 3, 9, 9, 2], device=device)
    return [(q, k, bank, t, 0.0, None), (q, k, bank, t, 0.1, ex), (q.t().contiguous().t(), k, bank[::2], t, 0.0,
                                                                    ex.clamp(max=4).unsqueeze(1))]


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    fwd = torch.ops.vkernels.infonce_bank_loss_triton if impl == "triton" else torch.ops.vkernels.infonce_bank_loss
    bwd = (torch.ops.vkernels.infonce_bank_loss_backward_triton if impl == "triton"
           else torch.ops.vkernels.infonce_bank_loss_backward)
    for q, k, bank, t, eps, ex in _samples(device):
        args = (q.clone().requires_grad_(), k.clone().requires_grad_(), bank.clone().requires_grad_(),
                t.clone().requires_grad_(), eps, ex)
        torch.library.opcheck(fwd.default, args)
        loss, lse, _ = fwd(q, k, bank, t, eps, ex)
        for bank_grad in (True, False):
            torch.library.opcheck(bwd.default, (torch.randn_like(loss), torch.randn_like(lse), q, k, bank, t, eps, ex,
                                                lse, loss, bank_grad))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_torch_compile_fullgraph(device, impl):
    torch._dynamo.reset()
    q, k, bank = make_inputs(8, 40, 16, device, torch.float32)
    ex = torch.randint(-1, 40, (8,), device=device)

    def f(q, k, bank):
        loss, rank = vkernels.infonce_bank_loss(q * 2, k, bank, 0.2, exclude=ex, label_smoothing=0.1,
                                                return_rank=True, impl=impl)
        return loss, (rank < 5).float().mean()

    leaves = [t.clone().requires_grad_() for t in (q, k, bank)]
    got = torch.compile(f, fullgraph=True, dynamic=False)(*leaves)
    want = f(*leaves)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got[0], leaves), torch.autograd.grad(want[0], leaves)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_saves_only_per_row_tensors(device, impl):
    """Autograd keeps the inputs and O(N) per-row results, nothing of size N x K."""
    n, kk, d = 16, 96, 8
    q, k, bank = [t.requires_grad_() for t in make_inputs(n, kk, d, device, torch.float32)]
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = vkernels.infonce_bank_loss(q, k, bank, 0.1, impl=impl)
    loss.backward()
    assert saved and max(t.numel() for t in saved) <= kk * d < n * kk
    assert sorted(t.numel() for t in saved if t.numel() not in (n * d, kk * d, 1, 0)) == [n, n]


def test_cpu_peak_memory_is_far_below_n_by_k():
    n, kk, d = 512, 8192, 32
    q, k, bank = [t.requires_grad_() for t in make_inputs(n, kk, d, "cpu", torch.float32)]

    def ours():
        vkernels.infonce_bank_loss(q, k, bank, 0.07, impl="cpu").backward()

    def eager():
        loss, _, _ = reference(q, k, bank, 0.07)
        loss.mean().backward()

    ours()
    logits_bytes = n * kk * 4  # one N x K fp32 tensor: 16 MB
    peak, peak_eager = cpu_peak_bytes(ours), cpu_peak_bytes(eager)
    assert peak_eager > logits_bytes
    assert peak < logits_bytes / 4, f"peak {peak / 2**20:.1f} MB"


@pytest.mark.parametrize("device,impl", IMPLS)
def test_module_learnable_temperature(device, impl):
    torch.manual_seed(0)
    q, k, bank = make_inputs(9, 50, 12, device, torch.float32)
    m = vkernels.nn.InfoNCEWithBank(0.1, learnable_temperature=True, impl=impl).to(device)
    loss = m(q, k, bank, label_smoothing=0.1)
    loss.backward()
    lt = torch.tensor(math.log(0.1), requires_grad=True)
    want = reference(q.cpu(), k.cpu(), bank.cpu(), lt.exp(), 0.1)[0].mean()
    want.backward()
    torch.testing.assert_close(loss.cpu(), want)
    torch.testing.assert_close(m.log_temperature.grad.cpu(), lt.grad, rtol=1e-4, atol=1e-5)
    fixed = vkernels.nn.InfoNCEWithBank(0.1, impl=impl)
    assert list(fixed.parameters()) == []
    torch.testing.assert_close(fixed(q, k, bank, label_smoothing=0.1), loss.detach())
    assert "learnable_temperature=True" in repr(m)


@pytest.mark.parametrize("precision,want", [("highest", "tf32x3"), ("high", "tf32"), ("medium", "tf32")])
def test_triton_fp32_dot_precision_follows_torch(precision, want):
    """The Triton launchers read torch.get_float32_matmul_precision() when they run and pass tl.dot's input_precision
    to every matmul kernel as a constexpr: fp32 on tensor cores, 3xTF32 (fp32 accuracy) unless TF32 is allowed;
    fp64 stays IEEE, fp16/bf16 ignore it. Checked on the launches themselves (forward, backward, partial)."""
    pytest.importorskip("triton")
    from vkernels.triton import _launch
    from vkernels.triton import infonce_bank_loss as tri
    from vkernels.triton import infonce_bank_partial as tri_partial
    if not (torch.cuda.is_available() or TRITON_INTERPRET):
        pytest.skip("Triton kernels need a GPU or the interpreter")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seen = []
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        # fp64 once, where TF32 is allowed: it must stay IEEE
        for dtype, expect in ((torch.float32, want),) + (((torch.float64, "ieee"),) if precision == "high" else ()):
            q, k, bank = make_inputs(3, 5, 4, device, dtype)
            t = torch.tensor(0.1, dtype=dtype, device=device)
            ex = torch.tensor([0, -1, 4], device=device)
            with _launch.recording(lambda kern, grid, args, kw: seen.append((dtype, kw.get("PREC"), kw))):
                loss, lse, _ = tri.forward(q, k, bank, t, 0.1, ex)
                tri.backward(torch.ones_like(loss), torch.ones_like(lse), q, k, bank, t, 0.1, ex, lse, loss, True)
                plse, _ = tri_partial.partial(q, k, bank, t, ex)
                tri_partial.partial_backward(torch.ones_like(plse), q, bank, t, ex, plse, True)
            precs = {p for d, p, kw in seen if d == dtype and "BM" in kw}
            assert precs == {expect}, (dtype, precs)
    finally:
        torch.set_float32_matmul_precision(saved)
    # forward split, dq, dbank, each for the loss and the partial, per dtype
    assert sum("BM" in kw for _, _, kw in seen) == 6 * (2 if precision == "high" else 1)


@pytest.mark.cuda
@pytest.mark.parametrize("d", [100, 256])
def test_triton_tf32_within_tf32_rounding_on_gpu(d):
    """fp32 with TF32 allowed ("high"): inputs rounded to TF32's 10-bit mantissa, so a logit q.b / T of unit
    features is off by <= 2 * 2^-11 / T (both operands rounded), lse and the loss by at most that; the gradients'
    weights p / T move by ~2x it, relative, and the second matmul rounds w and b again (2^-10). Bounds below are those
    with 2x margin, against the fp64 oracle. "highest" (3xTF32) must be far closer than TF32, which shows the
    precision reaches the kernels on the GPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    n, kk, temperature = 96, 1000, 0.1
    q, k, bank = make_inputs(n, kk, d, "cuda", torch.float32)
    ex = torch.randint(-1, kk, (n,), device="cuda")
    g = torch.randn(n, dtype=torch.float64)
    leaves64 = [t.detach().cpu().double().requires_grad_() for t in (q, k, bank)]
    L64, _, _ = reference(*leaves64, torch.tensor(temperature, dtype=torch.float64), 0.1, ex.cpu())
    g64 = torch.autograd.grad((L64 * g).sum(), leaves64)
    errs = {}
    saved = torch.get_float32_matmul_precision()
    try:
        for precision in ("high", "highest"):
            torch.set_float32_matmul_precision(precision)
            leaves = [t.clone().requires_grad_() for t in (q, k, bank)]
            loss = vkernels.infonce_bank_loss(*leaves, temperature, reduction="none", label_smoothing=0.1,
                                              exclude=ex, impl="triton")
            grads = torch.autograd.grad((loss.double().cpu() * g).sum(), leaves)
            errs[precision] = [((a.double().cpu() - b).abs().max() / (1 + b.abs().max())).item()
                               for a, b in zip((loss,) + grads, (L64,) + g64)]
    finally:
        torch.set_float32_matmul_precision(saved)
    delta = 2 * 2.0**-11 / temperature  # the logits' error bound under TF32
    bounds = [2 * delta] + [2 * (2 * delta + 2.0**-10)] * 3
    for name, err, bound in zip(("loss", "dq", "dk", "dbank"), errs["high"], bounds):
        assert err <= bound, f"TF32 {name}: relative error {err:.3g} > {bound:.3g}"
    for name, err, bound in zip(("loss", "dq", "dk", "dbank"), errs["highest"], bounds):
        assert err <= bound / 64, f"3xTF32 {name}: relative error {err:.3g} > {bound / 64:.3g}"
    assert errs["highest"][0] < errs["high"][0] / 4, errs  # TF32 really ran under "high"


def test_auto_is_the_cpu_kernel():
    q = torch.randn(3, 4)
    assert vkernels.resolve_impl(OP, q) == "cpu"


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(device):
    q, k, bank = make_inputs(4, 6, 5, device, torch.float32)
    call = vkernels.infonce_bank_loss
    cases = [
        (dict(k=k[:, :3]), ValueError, "k must have q's shape"),
        (dict(bank=bank[:, :4]), ValueError, r"bank must have shape \(K, 5\)"),
        (dict(bank=bank[:0]), ValueError, "bank must not be empty"),
        (dict(q=q[0]), ValueError, "q must have shape"),
        (dict(temperature=0.0), ValueError, "temperature must be"),
        (dict(temperature=-1.0), ValueError, "temperature must be"),
        (dict(temperature=float("inf")), ValueError, "temperature must be"),
        (dict(bank=bank.double()), TypeError, r"bank.dtype"),
        (dict(q=q.half()), TypeError, r"k.dtype"),
        (dict(q=q.long()), TypeError, "q must be float"),
        (dict(exclude=torch.tensor([0, 1, 6, -1], device=device)), IndexError, "exclude indices must be in"),
        (dict(exclude=torch.tensor([0, 1, -2, -1], device=device)), IndexError, "exclude indices must be in"),
        (dict(exclude=torch.zeros(3, dtype=torch.long, device=device)), ValueError, "exclude must have shape"),
        (dict(exclude=torch.zeros(4, dtype=torch.int32, device=device)), TypeError, "exclude must be an int64"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing must be in"),
        (dict(impl="tpu"), ValueError, "impl must be"),
    ]
    for kwargs, exc, msg in cases:
        args = {**dict(q=q, k=k, bank=bank), **kwargs}
        with pytest.raises(exc, match=msg):
            call(args.pop("q"), args.pop("k"), args.pop("bank"), **args)


@pytest.mark.parametrize("impl", kernels(OP, "cpu"))
def test_ops_check_their_own_arguments(impl):
    """Direct torch.ops calls (bypassing the Python checks) still get named errors, never a crash."""
    op = torch.ops.vkernels.infonce_bank_loss_triton if impl == "triton" else torch.ops.vkernels.infonce_bank_loss
    q, k, bank = make_inputs(4, 6, 5, "cpu", torch.float32)
    t = torch.tensor(0.1)
    if impl == "cpu":
        for args, msg in [
            ((q, k[:, :3], bank, t, 0.0, None), "k must have q's shape"),
            ((q, k, bank[:, :4], t, 0.0, None), r"bank must have shape \[K, 5\]"),
            ((q, k, bank[:0], t, 0.0, None), "bank must not be empty"),
            ((q, k, bank.double(), t, 0.0, None), "k and bank must have q's dtype"),
            ((q, k, bank, torch.tensor(0.0), 0.0, None), "temperature must be a finite number > 0"),
            ((q, k, bank, t, 0.0, torch.tensor([0, 1, 6, -1])), r"exclude\[2\] holds 6, out of range"),
            ((q, k, bank, t, 0.0, torch.zeros(3, dtype=torch.long)), "exclude must have shape"),
            ((q, k, bank, t, 2.0, None), "label_smoothing must be in"),
        ]:
            with pytest.raises(RuntimeError, match=msg):
                op(*args)
        with pytest.raises(RuntimeError, match="grad_loss must have shape"):
            torch.ops.vkernels.infonce_bank_loss_backward(torch.zeros(3), torch.zeros(4), q, k, bank, t, 0.0, None,
                                                          torch.zeros(4), torch.zeros(4), True)
    else:
        with pytest.raises(RuntimeError, match="exclude holds an index out of range"):
            op(q, k, bank, t, 0.0, torch.tensor([0, 1, 6, -1]))


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: forward + backward (q, bank, temperature) per dtype, over the feature
    sizes that change the launcher's tiles (up to d = 256), with and without exclude ((N,) makes E == 1) and label
    smoothing; fp32 under each torch.get_float32_matmul_precision() setting."""
    dims = (20, 64, 128, 256) if full else (32, 256)
    excludes = (None, "row", "matrix")

    def case(dtype, d, exclude, smoothing, precision="highest"):
        def run():
            n, kk = 40, 150
            q, k, bank = (t.requires_grad_() for t in make_inputs(n, kk, d, "cpu", dtype))
            ex = None
            if exclude == "row":
                ex = torch.randint(0, kk, (n,))
            elif exclude == "matrix":
                ex = torch.randint(-1, kk, (n, 3))
            t = torch.tensor(0.1, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                             requires_grad=True)
            saved = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(precision)
            try:
                loss, lse = vkernels.infonce_bank_loss(q, k, bank, t, label_smoothing=smoothing, exclude=ex,
                                                       return_lse=True, impl="triton")
                torch.autograd.grad(loss + lse.sum(), (q, k, bank, t))
            finally:
                torch.set_float32_matmul_precision(saved)
        return f"d={d} exclude={exclude} smoothing={smoothing} precision={precision} {dtype}", run

    out = [case(dtype, d, ex, s) for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
           for d in dims for ex in excludes for s in ((0.0, 0.1) if ex is None else (0.0,))]
    out += [case(torch.float32, d, None, 0.0, p) for d in dims for p in ("high", "medium")]
    return out
