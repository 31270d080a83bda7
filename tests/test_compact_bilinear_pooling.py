"""compact_bilinear_pooling: every implementation against an fp64 per-location Tensor Sketch computed from the
definition (rfft / irfft per location with the same hashes and signs); gradients; odd shapes; layouts; empty
batches; heavily unbalanced hashes; unbiasedness over random hashes; determinism; gradcheck; opcheck; torch.compile;
the Triton bin lists' cache and layout; bad input; the module."""
import importlib
import math

import pytest
import torch

import vkernels
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling as reference
from vkernels.reference.compact_bilinear_pooling import tensor_sketch_per_location as definition
from conftest import DEVICES
from _common import check_close, impl_params, kernels, randn, raw_ops

OP = "compact_bilinear_pooling"
cbp_ops = importlib.import_module("vkernels.ops.compact_bilinear_pooling")  # the module (the package exports the fn)
IMPLS = impl_params(OP)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Both sum-pooled routes of every implementation: "gram" (G = X Y^T + signed scatter) and "freq" (chunked count
# sketches, rfft, spectrum products summed before one irfft).
ROUTES = ["gram", "freq"]


def hashes(c, d, device, gen=None):
    h = torch.randint(0, d, (c,), generator=gen).to(device)
    s = (2 * torch.randint(0, 2, (c,), generator=gen) - 1).float().to(device)
    return h, s


def make(B, C1, C2, H, W, D, dtype, device, layout="contiguous"):
    x = randn((B, C1, H, W), dtype, device)
    y = randn((B, C2, H, W), dtype, device)
    if layout == "channels_last":
        x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
    elif layout == "strided":  # every other channel of a wider tensor, and y transposed in H/W storage
        x = torch.cat([x, x], 1)[:, ::2]
        y = y.transpose(2, 3).contiguous().transpose(2, 3)
        assert not (x.is_contiguous() or y.is_contiguous())
    h1, s1 = hashes(C1, D, device)
    h2, s2 = hashes(C2, D, device)
    return x, y, h1, s1, h2, s2


def run_case(device, impl, dtype, B, C1, C2, H, W, D, layout="contiguous", same=False, route="gram"):
    x, y, h1, s1, h2, s2 = make(B, C1, C2, H, W, D, dtype, device, layout)
    if same:
        y, h2, s2 = x, h1, s1
    xl = x.detach().clone().requires_grad_()
    yl = xl if same else y.detach().clone().requires_grad_()
    out = vkernels.compact_bilinear_pooling(xl, yl, h1, s1, h2, s2, D, impl=impl, route=route)
    assert out.shape == (B, D) and out.dtype == dtype and out.device.type == device
    g = torch.randn(B, D, dtype=torch.float64)
    leaves = [xl] if same else [xl, yl]
    grads = torch.autograd.grad((out.double().cpu() * g).sum(), leaves) if B else None
    cpu = [t.cpu() for t in (h1, s1, h2, s2)]

    def oracle_run(fn, prec):
        a = x.detach().cpu().to(prec).requires_grad_()
        b = a if same else y.detach().cpu().to(prec).requires_grad_()
        o = fn(a, b, *cpu, D)
        gs = torch.autograd.grad((o.double() * g).sum(), [a] if same else [a, b]) if B else None
        return o, gs

    o64, g64 = oracle_run(definition, torch.float64)
    ol, gl = oracle_run(reference, dtype)
    check_close(out, ol, o64, dtype, "out")
    if B:
        for name, a, b, c in zip(("dx", "dy"), grads, gl, g64):
            check_close(a, b, c, dtype, name)


@pytest.mark.ci_cover("dtype", "route")
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_definition(device, impl, dtype, route):
    run_case(device, impl, dtype, 3, 12, 10, 5, 4, 23, route=route)


# (B, C1, C2, H, W, D): C1 != C2, odd / prime / non-power-of-two D, D = 1, D > C1 C2, H != W, 1x1 maps, and B
# both below and above the thread count (the CPU kernel's two paths).
SHAPES = [(2, 7, 5, 3, 4, 11), (1, 3, 9, 1, 6, 1), (5, 4, 4, 2, 3, 100), (9, 16, 6, 7, 2, 37), (4, 6, 6, 1, 1, 8),
          (17, 5, 3, 2, 2, 12)]


# B above the thread count is a CPU-kernel path; in the interpreter those two shapes cost 2/3 of this test.
@pytest.mark.full_only(lambda p: p["shape"][0] > 8)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_odd_shapes(device, impl, shape, route):
    run_case(device, impl, torch.float32, *shape, route=route)


# B = 5 vs 1 matters to the CPU kernel's thread split; the Triton path's chunk length does not depend on it here.
@pytest.mark.full_only(lambda p: p["B"] == 5)
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("B", [1, 5])
def test_freq_route_many_chunks(device, impl, B):
    """More locations than one chunk holds (the CPU kernel takes 32 at a time, the Triton path a size-dependent
    number), with a ragged last chunk and, for B below the thread count, several location groups per image."""
    run_case(device, impl, torch.float64, B, 6, 5, 9, 11, 20, route="freq")
    run_case(device, impl, torch.float32, B, 6, 5, 9, 11, 20, layout="channels_last", route="freq")


@pytest.mark.ci_cover("layout", "dtype", "route")
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layouts(device, impl, layout, dtype, route):
    run_case(device, impl, dtype, 3, 8, 6, 4, 5, 19, layout=layout, route=route)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
def test_y_is_x(device, impl, route):
    run_case(device, impl, torch.float32, 3, 9, 9, 3, 2, 17, same=True, route=route)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
def test_empty(device, impl, route):
    run_case(device, impl, torch.float32, 0, 5, 4, 3, 3, 7, route=route)
    # No locations: zero output and zero gradients.
    x, y, h1, s1, h2, s2 = make(2, 5, 4, 0, 3, 7, torch.float32, device)
    x.requires_grad_()
    out = vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, 7, impl=impl, route=route)
    assert out.shape == (2, 7) and (out == 0).all()
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device,impl", IMPLS + [pytest.param("cpu", "reference", id="cpu-reference")])
def test_not_sum_pooled_is_per_location_sketch(device, impl):
    x, y, h1, s1, h2, s2 = make(2, 6, 5, 3, 4, 13, torch.float64, device)
    out = vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, 13, sum_pool=False, impl=impl)
    assert out.shape == (2, 13, 3, 4)
    want = definition(*(t.cpu() for t in (x, y, h1, s1, h2, s2)), 13, sum_pool=False)
    torch.testing.assert_close(out.cpu(), want)
    # ... whose sum over locations is the pooled output.
    torch.testing.assert_close(out.sum((2, 3)), vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, 13,
                                                                                  impl=impl))


def unbalanced_hashes(device):
    """14 of 16 channels of each input in bin 0 (196 of 256 pairs), the rest spread: most of D = 100 bins empty, and D
    not a multiple of the Triton block (32 in the interpreter, 128 on a GPU)."""
    h1 = torch.tensor([0] * 14 + [7, 44], device=device)
    h2 = torch.tensor([0] * 13 + [30, 44, 1], device=device)
    s1, s2 = hashes(16, 100, device)[1], hashes(16, 100, device)[1]
    return h1, s1, h2, s2


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
def test_unbalanced_hashes(device, impl, route, monkeypatch):
    """Heavily unbalanced hashes against the definition. The Triton gram route cuts bin 0's pair list into segments
    summed by a second level, and by a third with a smaller minimum segment; its freq route's sketch lists are one
    level however long."""
    h1, s1, h2, s2 = unbalanced_hashes(device)
    tk = importlib.import_module("vkernels.triton.compact_bilinear_pooling") if impl == "triton" else None
    for segment_min in ((64, 2) if tk is not None and route == "gram" else (None,)):
        if segment_min is not None:
            monkeypatch.setattr(tk, "_SEGMENT_MIN", segment_min)
        for dtype in (torch.float64, torch.float32):
            x, y = randn((3, 16, 3, 2), dtype, device), randn((3, 16, 3, 2), dtype, device)
            out = vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, 100, impl=impl, route=route)
            cpu = [t.cpu() for t in (x, y, h1, s1, h2, s2)]
            want = definition(*(t.double() if t.is_floating_point() else t for t in cpu), 100)
            check_close(out, reference(*cpu, 100), want, dtype, f"out ({dtype}, segment_min={segment_min})")
        if segment_min is not None:
            block = tk._blocks(tk._launch.target(torch.device(device)))[0]
            levels = tk.pair_lists(h1, s1, h2, s2, 100, torch.float32, block)
            assert len(levels) == (2 if segment_min == 64 else 3), [lv[4] for lv in levels]


def test_per_location_sketch_is_the_pair_hash():
    """The oracle itself: irfft(rfft(CS1) rfft(CS2)) equals the explicit sum over pairs with hash (h1+h2) mod D."""
    x, y, h1, s1, h2, s2 = make(1, 4, 3, 1, 1, 5, torch.float64, "cpu")
    want = torch.zeros(5, dtype=torch.float64)
    for i in range(4):
        for j in range(3):
            want[(h1[i] + h2[j]) % 5] += s1[i] * s2[j] * x[0, i, 0, 0] * y[0, j, 0, 0]
    torch.testing.assert_close(definition(x, y, h1, s1, h2, s2, 5)[0], want)


# The 1500 interpreter draws of the Triton gram route run under make test-full; in CI its equality with the
# definition on fresh hashes is what every other test checks (as for the Triton freq route).
@pytest.mark.full_only(lambda p: True)
@pytest.mark.parametrize("impl,route", [(i, "gram") for i in kernels(OP, "cpu")] + [("cpu", "freq")])
def test_unbiased_over_hash_draws(impl, route):
    # (The Triton freq path is not drawn 1500 times through the interpreter: its equality with the definition on
    # fresh hashes is checked by every other test.)
    """E_h,s <TS(a(x)b), TS(c(x)e)> = <a, c><b, e>: the mean over N independent hash draws lies within 5 standard
    errors (the sample standard deviation / sqrt(N)) of the exact value; a biased estimator (e.g. a hash that
    drops the mod D, or signs that are not independent) misses it by far more at this N."""
    torch.manual_seed(0)
    C, D, N = 6, 5, 1500
    a, b = torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    c = a + 0.5 * torch.randn(C, dtype=torch.float64)
    e = b + 0.5 * torch.randn(C, dtype=torch.float64)
    x = torch.stack([a, c])[:, :, None, None]
    y = torch.stack([b, e])[:, :, None, None]
    est = torch.empty(N, dtype=torch.float64)
    for n in range(N):
        h1, s1 = hashes(C, D, "cpu")
        h2, s2 = hashes(C, D, "cpu")
        out = vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, D, impl=impl, route=route)
        est[n] = out[0] @ out[1]
    exact = float((a @ c) * (b @ e))
    se = float(est.std()) / math.sqrt(N)
    assert abs(float(est.mean()) - exact) < 5 * se, (float(est.mean()), exact, se)
    # And the estimate is not trivially exact (the test could not fail otherwise): the draws vary.
    assert se > 1e-3 * abs(exact)


@pytest.mark.full_only(lambda p: p["B"] == 9)  # B above the thread count: the CPU kernel's other path
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("B", [1, 9])
def test_deterministic(device, impl, B, route):
    x, y, h1, s1, h2, s2 = make(B, 33, 17, 6, 5, 29, torch.float32, device)
    g = torch.randn(B, 29, device=device)
    runs = []
    for _ in range(2):
        xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = vkernels.compact_bilinear_pooling(xl, yl, h1, s1, h2, s2, 29, impl=impl, route=route)
        runs.append((out, *torch.autograd.grad(out, [xl, yl], g)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# In the interpreter each input form and route once (test_y_is_x checks both routes' y-is-x gradients).
@pytest.mark.ci_cover("same", "route")
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("same", [False, True], ids=["x,y", "y_is_x"])
def test_gradcheck(device, impl, same, route):
    x, y, h1, s1, h2, s2 = make(2, 4, 3, 2, 3, 7, torch.float64, device)
    if same:
        y, h2, s2 = x, h1, s1
    xl = x.clone().requires_grad_()
    if same:
        f = lambda a: vkernels.compact_bilinear_pooling(a, a, h1, s1, h2, s2, 7, impl=impl, route=route)  # noqa: E731
        torch.autograd.gradcheck(f, [xl])
    else:
        f = lambda a, b: vkernels.compact_bilinear_pooling(a, b, h1, s1, h2, s2, 7, impl=impl,  # noqa: E731
                                                           route=route)
        torch.autograd.gradcheck(f, [xl, y.clone().requires_grad_()])


def _ops(impl, route="gram"):
    return raw_ops(OP + ("_freq" if route == "freq" else ""), impl)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl, route):
    fwd, bwd = _ops(impl, route)
    for B, layout in ((3, "contiguous"), (2, "channels_last"), (0, "contiguous")):
        x, y, h1, s1, h2, s2 = make(B, 5, 4, 3, 2, 9, torch.float32, device, layout)
        torch.library.opcheck(fwd.default, (x.requires_grad_(), y.requires_grad_(), h1, s1, h2, s2, 9))
        g = torch.randn(B, 9, device=device)
        torch.library.opcheck(bwd.default, (g, x.detach(), y.detach(), h1, s1, h2, s2))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("device,impl", IMPLS)
def test_torch_compile_fullgraph(device, impl, route):
    torch._dynamo.reset()
    x, y, h1, s1, h2, s2 = make(3, 6, 5, 3, 3, 11, torch.float32, device)

    # The frequency route leaves FFT rounding (~1e-7) in bins no pair hashes to, where the Gram route leaves exact
    # zeros; the signed square root's slope is unbounded there (inf / NaN gradients that differ with the last bit),
    # so that route's gradients are compared through a smooth map.
    post = (lambda o: o.sign() * o.abs().sqrt()) if route == "gram" else torch.tanh

    def f(x, y):
        out = vkernels.compact_bilinear_pooling(x.relu(), y, h1, s1, h2, s2, 11, impl=impl, route=route)
        return torch.nn.functional.normalize(post(out), dim=1)

    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    got = torch.compile(f, fullgraph=True, dynamic=False)(xs, ys)
    xe, ye = x.clone().requires_grad_(), y.clone().requires_grad_()
    want = f(xe, ye)
    torch.testing.assert_close(got, want)
    got.square().sum().backward()
    want.square().sum().backward()
    # A bin that is exactly 0 (no pair hashes to it, or its pairs are all zero after the ReLU) gives the signed
    # square root a NaN slope in both paths: compile must reproduce those NaNs where eager has them.
    torch.testing.assert_close(xs.grad, xe.grad, equal_nan=True)
    torch.testing.assert_close(ys.grad, ye.grad, equal_nan=True)


def test_auto_is_the_cpu_kernel():
    assert vkernels.resolve_impl(OP, torch.randn(1)) == "cpu"


def test_auto_route_follows_the_cost_model(monkeypatch):
    """route="auto" is the Gram route at the issue's C = 512 sizes and the frequency route at C = 2048, 14x14,
    D = 8192 (where the measured Gram GEMM alone is ~2x the frequency route); it runs the op choose_route names."""
    assert cbp_ops.choose_route(512, 512, 8192) == "gram"
    assert cbp_ops.choose_route(512, 512, 16000) == "gram"
    assert cbp_ops.choose_route(2048, 2048, 8192) == "freq"
    assert cbp_ops.choose_route(4, 3, 1) == "gram"
    called = []
    for name in ("compact_bilinear_pooling", "compact_bilinear_pooling_freq"):
        op = getattr(torch.ops.vkernels, name)
        monkeypatch.setattr(torch.ops.vkernels, name, lambda *a, _op=op, _n=name: called.append(_n) or _op(*a))
    x, y, h1, s1, h2, s2 = make(1, 40, 40, 2, 2, 3, torch.float32, "cpu")  # 1600 > 20 * 3 log2(3): freq
    x2, y2, h12, s12, h22, s22 = make(1, 4, 4, 2, 2, 64, torch.float32, "cpu")  # 16 < 20 * 64 * 6: gram
    vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, 3, impl="cpu")
    vkernels.compact_bilinear_pooling(x2, y2, h12, s12, h22, s22, 64, impl="cpu")
    assert called == ["compact_bilinear_pooling_freq", "compact_bilinear_pooling"]


def test_freq_route_memory_is_bounded():
    """The frequency route never holds every location's sketch or spectrum: its peak allocation (one thread, so the
    profiler sees every allocation) stays within the inputs' size plus a chunk's buffers, whatever H W is; all
    per-location spectra at 64x64 would be 2 * HW * (D/2 + 1) * 8 B = 134 MB."""
    from vkernels.utils.profile import peak_bytes

    D = 4096
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        peaks = {}
        for hw in (8, 64):
            x, y, h1, s1, h2, s2 = make(1, 8, 8, hw, hw, D, torch.float32, "cpu")
            for impl in ("cpu", "reference"):
                peaks[impl, hw] = peak_bytes({"f": lambda: vkernels.compact_bilinear_pooling(
                    x, y, h1, s1, h2, s2, D, impl=impl, route="freq")}, "cpu")["f"]
    finally:
        torch.set_num_threads(threads)
    chunk_bytes = 2 * 64 * D * 4 * 3  # CPU: 2 x 32 sketches + their spectra + the products; reference: 64 locations
    for impl in ("cpu", "reference"):
        assert peaks[impl, 64] is not None and peaks[impl, 64] < chunk_bytes + 8 * 8 * 64 * 64 * 4 * 2, peaks
        assert peaks[impl, 64] < 2 * peaks[impl, 8] + 8 * 8 * 64 * 64 * 4 * 2, peaks  # grows only by the input


@pytest.mark.parametrize("route", ["gram", "freq"])
def test_triton_bin_lists_cached_and_invalidated(route):
    """The Triton path builds its CSR bin lists once per (h, s) tensors: reused by the next call (and the module's
    next forward), rebuilt after an in-place change of a hash or sign, for a new tensor, and after .to()."""
    if "triton" not in vkernels.available_impls(OP, "cpu"):
        pytest.skip("no Triton (interpreter) here")
    tk = importlib.import_module("vkernels.triton.compact_bilinear_pooling")
    x, y, h1, s1, h2, s2 = make(2, 5, 4, 2, 3, 11, torch.float64, "cpu")

    def run():
        n = tk.csr_builds
        out = vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, 11, impl="triton", route=route)
        torch.testing.assert_close(out, reference(x, y, h1, s1, h2, s2, 11))
        return tk.csr_builds - n

    run()
    assert run() == 0  # same tensors, unchanged: cached
    h1[0] = (h1[0] + 3) % 11  # in place: the version counter moves
    assert run() > 0 and run() == 0
    s2.mul_(-1)
    assert run() > 0
    h2 = h2.clone()  # a new tensor with equal values: not trusted to be the same
    assert run() > 0 and run() == 0
    m = vkernels.nn.CompactBilinearPooling(5, 4, 11, seed=0, route=route, impl="triton").double()
    n = tk.csr_builds
    m(x, y)
    m(x, y)
    assert tk.csr_builds - n == (1 if route == "gram" else 2)  # gram: one pair list; freq: one list per sketch
    m.to("cpu", torch.float64)
    m.h1.copy_(torch.arange(5) % 11)  # what load_state_dict does
    n = tk.csr_builds
    got = m(x, y)
    assert tk.csr_builds - n == 1
    torch.testing.assert_close(got, reference(x, y, m.h1, m.s1, m.h2, m.s2, 11))


def test_triton_bin_list_layout():
    """The sliced-ELL lists themselves (no kernel runs): every bin written once by the last level, every entry in
    exactly one slot, no block runs a trip that all its lanes pad, and the sketch lists keep bins 8 at a time in
    aligned, ordered lane groups (whole output sectors)."""
    if "triton" not in vkernels.available_impls(OP, "cpu"):
        pytest.skip("no Triton (interpreter) here")
    tk = importlib.import_module("vkernels.triton.compact_bilinear_pooling")
    g = torch.Generator().manual_seed(3)
    uh1, us1, uh2, us2 = unbalanced_hashes("cpu")
    cases = ((100, (uh1, us1, uh2, us2)), (300, hashes(40, 300, "cpu", g) + hashes(24, 300, "cpu", g)))
    for D, (h1, s1, h2, s2) in cases:
        for block in (32, 128):
            for levels, entries in ((tk.pair_lists(h1, s1, h2, s2, D, torch.float32, block), h1.numel() * h2.numel()),
                                    ([tk.channel_lists(h1, s1, D, torch.float32, block)], h1.numel())):
                dst = levels[-1][3]
                assert sorted(dst[dst >= 0].tolist()) == list(range(D))
                idx = levels[0][0]
                assert sorted(idx[idx >= 0].tolist()) == list(range(entries))
                for idx, _, base, dst, _ in levels:
                    for q in range(base.numel() - 1):
                        if base[q + 1] > base[q]:
                            assert (idx[base[q + 1] - block:base[q + 1]] >= 0).any(), (D, block, q)
            lanes = tk.channel_lists(h1, s1, D, torch.float32, block)[3].view(-1, 8)
            for grp in lanes.tolist():
                real = [d for d in grp if d >= 0]
                assert not real or (real[0] % 8 == 0 and real == list(range(real[0], real[0] + len(real)))), grp


def test_triton_freq_chunk_is_bounded():
    from vkernels.triton import compact_bilinear_pooling as tk
    for B, D, HW in ((32, 8192, 784), (32, 16000, 784), (1, 7, 10 ** 6), (4, 1 << 26, 5)):
        L = tk.freq_chunk(B, D, HW)
        assert 1 <= L <= HW and (B * L * D <= tk.FREQ_CHUNK_ELEMS or L == 1)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(device):
    x, y, h1, s1, h2, s2 = make(2, 5, 4, 3, 3, 7, torch.float32, device)
    call = vkernels.compact_bilinear_pooling
    cases = [
        (dict(h1=torch.tensor([0, 1, 7, 2, 3], device=device)), IndexError, r"h1 must hold hashes in \[0, "),
        (dict(h2=torch.tensor([0, -1, 2, 3], device=device)), IndexError, "h2 must hold hashes"),
        (dict(s1=torch.tensor([1., -1, 0, 1, 1], device=device)), ValueError, "s1 must hold only"),
        (dict(s2=torch.tensor([1., 2, 1, 1], device=device)), ValueError, "s2 must hold only"),
        (dict(h1=h1.int()), TypeError, "h1 must be int64"),
        (dict(h1=h1[:4]), ValueError, r"h1 must have shape \(5,\)"),
        (dict(s2=s2[:3]), ValueError, r"s2 must have shape \(4,\)"),
        (dict(y=y[:1]), ValueError, "y must have x's batch and spatial"),
        (dict(y=y[:, :, :2]), ValueError, "y must have x's batch and spatial"),
        (dict(y=y.double()), TypeError, r"y.dtype"),
        (dict(x=x.long(), y=y.long()), TypeError, "x must be float"),
        (dict(x=x[0]), ValueError, r"x must have shape \(B, C1, H, W\)"),
        (dict(y=y[0]), ValueError, r"y must have shape \(B, C2, H, W\)"),
        (dict(output_dim=0), ValueError, "output_dim must be an int >= 1"),
        (dict(output_dim=7.0), ValueError, "output_dim must be an int >= 1"),
        (dict(impl="tpu"), ValueError, "impl must be"),
        (dict(route="fft"), ValueError, "route must be one of auto, gram, freq"),
    ]
    if device == "cpu":
        cases.append((dict(h1=h1.to("meta")), ValueError, "h1 is on meta"))
    for kwargs, exc, msg in cases:
        args = {**dict(x=x, y=y, h1=h1, s1=s1, h2=h2, s2=s2, output_dim=7), **kwargs}
        with pytest.raises(exc, match=msg):
            call(**args)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("impl", kernels(OP, "cpu"))
def test_ops_check_their_own_arguments(impl, route):
    """Direct torch.ops calls (bypassing the Python checks) still get named errors, never a crash."""
    fwd, bwd = _ops(impl, route)
    x, y, h1, s1, h2, s2 = make(2, 5, 4, 3, 3, 7, torch.float32, "cpu")
    for args, msg in [
        ((x, y, torch.tensor([0, 1, 7, 2, 3]), s1, h2, s2, 7), "h1"),
        ((x, y, h1, torch.tensor([1., -1, 0, 1, 1]), h2, s2, 7), "s1"),
        ((x, y[:1], h1, s1, h2, s2, 7), "y must have x's batch"),
        ((x, y, h1, s1, h2, s2, 0), "output_dim must be"),
        ((x, y, h1[:3], s1, h2, s2, 7), "h1 must have shape"),
    ]:
        with pytest.raises(RuntimeError, match=msg):
            fwd(*args)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        bwd(torch.zeros(3, 7), x, y, h1, s1, h2, s2)


# ---- the module -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_module_buffers_state_dict_and_to(device):
    m = vkernels.nn.CompactBilinearPooling(6, 5, 31, seed=3)
    assert m.h1.shape == (6,) and m.s2.shape == (5,) and m.h1.max() < 31
    assert set(m.state_dict()) == {"h1", "s1", "h2", "s2"}
    m2 = vkernels.nn.CompactBilinearPooling(6, 5, 31, seed=4)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.h1, m.h1) and torch.equal(m2.s2, m.s2)
    assert torch.equal(vkernels.nn.CompactBilinearPooling(6, 5, 31, seed=3).h2, m.h2)  # seed reproduces
    m = m.to(device)
    assert m.h1.device.type == device
    x, y = randn((2, 6, 3, 4), torch.float32, device), randn((2, 5, 3, 4), torch.float32, device)
    want = reference(x, y, m.h1, m.s1, m.h2, m.s2, 31)
    torch.testing.assert_close(m(x, y), want)
    # The TensorFlow port's channels-last layout, and gdlg's (B, C) vectors (one location).
    mh = vkernels.nn.CompactBilinearPooling(6, 5, 31, seed=3, input_layout="NHWC").to(device)
    torch.testing.assert_close(mh(x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)), want)
    torch.testing.assert_close(m(x[:, :, 0, 0], y[:, :, 0, 0]), reference(x[:, :, :1, :1], y[:, :, :1, :1], m.h1, m.s1,
                                                                          m.h2, m.s2, 31))
    mcb = vkernels.nn.CompactBilinearPooling(6, 5, 31, sum_pool=False, seed=3, input_layout="NHWC").to(device)
    assert mcb(x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)).shape == (2, 3, 4, 31)


def test_module_blames_the_input_for_a_channel_mismatch():
    """A 256-channel input to a module built for 512 channels names the input and input_dim1, not a hash buffer."""
    m = vkernels.nn.CompactBilinearPooling(8, 8, 16, seed=0)
    with pytest.raises(ValueError, match=r"x has 4 channels \(\(B, C, H, W\) layout\), but this module was built "
                                         r"for input_dim1=8"):
        m(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"y has 5 channels \(\(B, C\) layout\).*input_dim2=8"):
        m(torch.randn(2, 8), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"h1 must have shape \(4,\), one hash per channel of x"):
        vkernels.compact_bilinear_pooling(torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3), m.h1, m.s1, m.h2, m.s2, 16)


def test_module_accepts_the_ports_argument_names():
    h1, s1 = hashes(4, 9, "cpu")
    h2, s2 = hashes(3, 9, "cpu")
    a = vkernels.nn.CompactBilinearPooling(input1_size=4, input2_size=3, output_size=9, h1=h1, s1=s1, h2=h2, s2=s2)
    b = vkernels.nn.CompactBilinearPooling(4, 3, 9, True, cuda=False, rand_h_1=h1.numpy(), rand_s_1=s1.numpy(),
                                           rand_h_2=h2.tolist(), rand_s_2=s2.tolist())
    for m in (a, b):
        assert torch.equal(m.h1, h1) and torch.equal(m.s1, s1) and torch.equal(m.h2, h2) and torch.equal(m.s2, s2)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(vkernels.nn.CompactBilinearPooling(4, 4, 9, seed=1)(x).shape, torch.Size([2, 9]))
    with pytest.raises(ValueError, match="output_dim or output_size"):
        vkernels.nn.CompactBilinearPooling(4, 3, 9, output_size=9)
    with pytest.raises(ValueError, match="output_dim must be an int >= 1"):
        vkernels.nn.CompactBilinearPooling(4, 3, 0)


def test_module_route():
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    gram = vkernels.nn.CompactBilinearPooling(6, 6, 13, seed=2, route="gram")
    freq = vkernels.nn.CompactBilinearPooling(6, 6, 13, seed=2, route="freq")
    torch.testing.assert_close(freq(x), gram(x))
    assert "route='freq'" in repr(freq)
    with pytest.raises(ValueError, match="route must be"):
        vkernels.nn.CompactBilinearPooling(6, 6, 13, route="fft")


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: both routes (gram: scatter / gather kernels; freq: sketch / spectrum
    kernels), y distinct or x itself, contiguous and channels_last, forward + backward per dtype; unbalanced hashes
    (split pair lists: further scatter levels) per accumulation dtype."""

    def case(dtype, route, same, layout):
        def run():
            x, y, h1, s1, h2, s2 = make(2, 24, 40, 5, 6, 64, dtype, "cpu", layout)[:6]
            x.requires_grad_()
            y = x if same else y.requires_grad_()
            if same:
                h2, s2 = h1, s1
            out = vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, 64, impl="triton", route=route)
            torch.autograd.grad(out, (x,) if same else (x, y), torch.randn_like(out))
        return f"route={route} y_is_x={same} {layout} {dtype}", run

    def unbalanced(dtype):  # the gram route's further levels: the scatter kernel on (B, width) partial sums
        def run():
            h1, s1, h2, s2 = unbalanced_hashes("cpu")
            x, y = randn((2, 16, 3, 2), dtype, "cpu"), randn((2, 16, 3, 2), dtype, "cpu")
            vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, 100, impl="triton", route="gram")
        return f"route=gram unbalanced hashes {dtype}", run

    layouts = ("contiguous", "channels_last") if full else ("contiguous",)
    return [case(dtype, route, same, layout) for dtype in DTYPES for route in ROUTES for same in (False, True)
            for layout in layouts] + [unbalanced(dtype) for dtype in (torch.float32, torch.float64)]
