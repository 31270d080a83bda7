"""vkernels/triton/_launch.py: grids past CUDA's limits are split (never passed on, never failing), tested on the grid
computation with a fake kernel (no giant tensors), and on a real kernel run in the interpreter with a small
artificial limit, whose split result must equal the unsplit one."""
import pytest
import torch

pytest.importorskip("triton")
from vkernels.triton import _launch  # noqa: E402

LIMIT = 65535
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the interpreter (conftest sets TRITON_INTERPRET)


class FakeKernel:
    """Records the launches kernel[grid](*args, **kwargs) would make, with Triton's arg_names."""

    def __init__(self, *bases):
        self.arg_names = ["x_ptr", "n", *bases, "BLOCK"]
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((tuple(grid), args, kwargs))


def covered(calls, grid):
    """The (pid0, pid1, pid2) ranges the launches cover, as sets of global program ids per axis pair."""
    seen1, seen2 = [], []
    for sub, _, kw in calls:
        assert len(sub) == 3 and sub[0] == grid[0]
        assert 1 <= sub[1] <= LIMIT and 1 <= sub[2] <= LIMIT, sub
        b1, b2 = kw.get("pid1_base", 0), kw.get("pid2_base", 0)
        seen1.append((b1, sub[1]))
        seen2.append((b2, sub[2]))
    return seen1, seen2


@pytest.mark.parametrize("grid", [(3, 200_000), (1, 65_535), (7, 65_536), (2, 1, 131_071), (5, 70_000, 140_000),
                                  (2**31 - 1, 3, 2)])
def test_split_grid_covers_each_program_once(grid):
    launches = _launch.split_grid(grid)
    g = tuple(grid) + (1,) * (3 - len(grid))
    for sub, base in launches:
        assert sub[0] == g[0] and 1 <= sub[1] <= LIMIT and 1 <= sub[2] <= LIMIT, sub
        assert set(base) == {"pid1_base", "pid2_base"}
    # The sub-grids tile [0, g1) x [0, g2) exactly once: every (axis-1 span, axis-2 span) pair appears once, and the
    # spans of each axis are contiguous from 0 to the axis' size.
    pairs = [((b["pid1_base"], s[1]), (b["pid2_base"], s[2])) for s, b in launches]
    assert len(set(pairs)) == len(pairs)
    rows = sorted({p[0] for p in pairs})
    cols = sorted({p[1] for p in pairs})
    assert len(pairs) == len(rows) * len(cols)
    for spans, total in ((rows, g[1]), (cols, g[2])):
        assert spans[0][0] == 0
        assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
        assert spans[-1][0] + spans[-1][1] == total
    assert len(rows) == -(-g[1] // LIMIT) and len(cols) == -(-g[2] // LIMIT)


def test_split_grid_refuses_what_it_cannot_split():
    with pytest.raises(ValueError, match="axis 1 .* pid1_base"):
        _launch.split_grid((1, LIMIT + 1), bases=())
    with pytest.raises(ValueError, match="axis 2 .* pid2_base"):
        _launch.split_grid((1, 1, LIMIT + 1), bases=("pid1_base",))
    with pytest.raises(ValueError, match="axis 0"):
        _launch.split_grid((2**31, 1))
    assert _launch.split_grid((4, LIMIT, LIMIT), bases=()) == [((4, LIMIT, LIMIT), {})]


def test_launch_splits_declared_axes_and_passes_bases():
    k = FakeKernel("pid1_base", "pid2_base")
    _launch.launch(k, (3, 140_000, 70_000), "x", 5, BLOCK=64)
    assert len(k.calls) == 3 * 2
    seen1, seen2 = covered(k.calls, (3, 140_000, 70_000))
    assert sorted(set(seen1)) == [(0, LIMIT), (LIMIT, LIMIT), (2 * LIMIT, 140_000 - 2 * LIMIT)]
    assert sorted(set(seen2)) == [(0, LIMIT), (LIMIT, 70_000 - LIMIT)]
    assert all(args == ("x", 5) and kw["BLOCK"] == 64 for _, args, kw in k.calls)


def test_launch_small_grid_is_one_launch_with_zero_bases():
    k = FakeKernel("pid1_base")
    _launch.launch(k, (10, 4), "x", 5, BLOCK=64)
    assert k.calls == [((10, 4, 1), ("x", 5), {"BLOCK": 64, "pid1_base": 0})]
    k = FakeKernel()
    _launch.launch(k, (10,), "x", 5, BLOCK=64)
    assert k.calls == [((10, 1, 1), ("x", 5), {"BLOCK": 64})]


def test_launch_empty_grid_launches_nothing():
    k = FakeKernel("pid1_base")
    _launch.launch(k, (0, 100_000), "x", 5, BLOCK=64)
    _launch.launch(k, (4, 0), "x", 5, BLOCK=64)
    assert k.calls == []


def test_launch_refuses_an_undeclared_axis_over_the_limit():
    k = FakeKernel()
    with pytest.raises(ValueError, match="pid1_base"):
        _launch.launch(k, (1, LIMIT + 1), "x", 5, BLOCK=64)
    assert k.calls == []


def test_recording_sees_the_unsplit_grid():
    k = FakeKernel("pid1_base")
    seen = []
    with _launch.recording(lambda kern, grid, args, kwargs: seen.append((kern, grid, kwargs))):
        _launch.launch(k, (2, 200_000), "x", 5, BLOCK=64)
    assert seen == [(k, (2, 200_000, 1), {"BLOCK": 64, "pid1_base": 0})]
    assert len(k.calls) == 4


def test_tune_for_sets_the_target():
    dev = torch.device("cpu")
    with _launch.tune_for(80) as t:
        assert t == _launch.target(dev) and (t.interpret, t.arch, t.sms) == (False, 80, 108)
    if DEVICE == "cpu":
        assert _launch.target(dev).interpret


@pytest.mark.parametrize("backward", [False, True])
def test_pixel_norm_split_grid_equals_unsplit(monkeypatch, backward):
    """NCHW normalised over C: axis 1 is cdiv(H W, 64) = 10 column blocks; with the limit at 3 they run as 4
    launches (bases 0, 3, 6, 9), and the result must be the one-launch result, bit for bit."""
    from vkernels.triton import pixel_norm

    x = torch.randn(2, 3, 20, 31, dtype=torch.float64, device=DEVICE)
    g = torch.randn_like(x) if backward else None
    whole = pixel_norm.launch(x, g, 1, 1e-8)
    launches = []
    real = _launch.split_grid
    monkeypatch.setattr(_launch, "MAX_GRID", (2**31 - 1, 3, 2))
    monkeypatch.setattr(_launch, "split_grid", lambda grid, bases: launches.append(real(grid, bases)) or launches[-1])
    split = pixel_norm.launch(x, g, 1, 1e-8)
    assert [[(sub, base) for sub, base in ls] for ls in launches] == [
        [((2, 3, 1), {"pid1_base": 0}), ((2, 3, 1), {"pid1_base": 3}), ((2, 3, 1), {"pid1_base": 6}),
         ((2, 1, 1), {"pid1_base": 9})]]
    assert torch.equal(split, whole)
    if not backward:
        ref = x * (x.pow(2).mean(1, keepdim=True) + 1e-8).rsqrt()  # the op's definition
        torch.testing.assert_close(split, ref)


def test_upsample_stats_chunks_split_grid_match_reference(monkeypatch):
    """Batch-norm statistics of a bilinear 2x upsampling as the GPU launcher cuts them (tune_for(90): chunks of at
    least 4 blocks of 1024, enough for ~4 programs per SM): 2 chunks of one channel's 2 * 48 * 48 values, the chunk
    axis (grid axis 1) split into 2 launches by a small artificial limit. The partials combined must give the
    reference mean and biased variance of up(x)."""
    from vkernels.triton import upsample_norm_act as una

    x = torch.randn(2, 1, 24, 24, dtype=torch.float64, device=DEVICE) * 2 + 0.5
    up = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    launches = []
    real = _launch.split_grid
    monkeypatch.setattr(_launch, "MAX_GRID", (2**31 - 1, 1, 1))
    monkeypatch.setattr(_launch, "split_grid", lambda grid, bases: launches.append(real(grid, bases)) or launches[-1])
    with _launch.tune_for(90):
        mean, var = una.stats(x, 2, "bilinear", False)
    assert launches == [[((1, 1, 1), {"pid1_base": 0}), ((1, 1, 1), {"pid1_base": 1})]]
    torch.testing.assert_close(mean, up.mean((0, 2, 3)), rtol=0, atol=1e-13)
    torch.testing.assert_close(var, up.var((0, 2, 3), unbiased=False), rtol=0, atol=1e-12)
