"""models/finegrained: every head trains at a tiny size on CPU; on the synthetic covariance task a second-order head
beats average pooling by a wide margin; a resumed run equals an uninterrupted one."""
import pytest
import torch

import vkernels
from models.finegrained import train
from models.finegrained.archs import ARCHS, TAKES_HEAD, build
from models.finegrained.data import covariance_patches, covariance_textures, part_cover
from models.finegrained.model import HEADS, FineGrainedClassifier


def _available(head):
    need = {"cbp": "CompactBilinearPooling", "rm": "RandomMaclaurinPooling"}.get(head)
    return need is None or hasattr(vkernels.nn, need)


@pytest.mark.parametrize("head", HEADS)
def test_head_trains(head, tmp_path):
    if not _available(head):
        pytest.skip(f"vkernels.nn has no module for head {head!r} in this build")
    res = train.main(["--head", head, "--steps", "3", "--batch-size", "8", "--width", "4", "--image-size", "8",
                      "--dim", "64", "--device", "cpu", "--out", str(tmp_path)])
    r = res[head]
    assert 0.0 <= r["test_acc"] <= 1.0 and r["s_per_iter"] > 0
    assert torch.isfinite(torch.tensor(r["final_loss"]))
    assert (tmp_path / head / "checkpoint.pt").exists()


def test_custom_backbone():
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU())
    m = FineGrainedClassifier(5, "isqrt", backbone=backbone, channels=6)
    assert m(torch.randn(4, 3, 8, 8)).shape == (4, 5)
    with pytest.raises(ValueError, match="channels"):
        FineGrainedClassifier(5, "gap", backbone=backbone)


def test_covariance_task_has_no_first_order_signal():
    x, y = covariance_textures(0, n=2048)
    means = torch.stack([x[y == k].mean((0, 2, 3)) for k in range(4)])
    stds = torch.stack([x[y == k].std((0, 2, 3)) for k in range(4)])
    assert means.abs().max() < 0.05 and (stds - 1).abs().max() < 0.05


def test_second_order_beats_gap():
    # The linear backbone: the ReLU ResNet lets average pooling learn covariance too (see model.LinearBackbone).
    res = train.main(["--head", "gap,isqrt", "--backbone", "linear", "--steps", "40", "--batch-size", "32",
                      "--width", "4", "--image-size", "12", "--device", "cpu", "--lr", "0.05"])
    gap, second = res["gap"]["test_acc"], res["isqrt"]["test_acc"]
    assert second >= 0.8 and second - gap >= 0.3, (gap, second)


def test_resume_equals_uninterrupted(tmp_path):
    common = ["--head", "bilinear", "--batch-size", "8", "--width", "4", "--image-size", "8", "--device", "cpu",
              "--ckpt-every", "100"]
    train.main(common + ["--steps", "4", "--out", str(tmp_path / "a")])
    # Interrupted: 2 steps (a checkpoint), then a new process-equivalent run resumes to 4.
    train.main(common + ["--steps", "4", "--stop-at", "2", "--out", str(tmp_path / "b")])
    train.main(common + ["--steps", "4", "--out", str(tmp_path / "b"), "--resume"])
    a = torch.load(tmp_path / "a" / "bilinear" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "bilinear" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ----------------------------------------------------------------------------- the archs of models/finegrained/archs.py
NEW_ARCHS = [a for a in ARCHS if a != "single"]


def _tiny(arch, seed=0):
    torch.manual_seed(seed)
    return build(arch, 4, "bilinear" if arch in TAKES_HEAD else None, width=4, dim=64, seed=seed)


def _batch(n=16, size=8):
    x, y = covariance_textures(3, n=n, size=size)
    return x, y


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_arch_trains_through_entry_point(arch, tmp_path):
    res = train.main(["--arch", arch, "--head", "bilinear", "--steps", "3", "--batch-size", "8", "--width", "4",
                      "--image-size", "8", "--dim", "64", "--device", "cpu", "--out", str(tmp_path)])
    (name, r), = res.items()
    assert name == (arch if arch not in TAKES_HEAD else f"{arch}/bilinear")
    assert 0.0 <= r["test_acc"] <= 1.0 and r["s_per_iter"] > 0 and r["peak_mem_bytes"] > 0
    assert torch.isfinite(torch.tensor([r["final_loss"], r["loss_start"], r["loss_end"]])).all()
    assert (tmp_path / name / "checkpoint.pt").exists()


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_arch_gradients_flow_and_loss_decreases(arch):
    model = _tiny(arch)
    x, y = _batch()
    loss = model(x, y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name, child in model.named_children():
        grads = [p.grad.abs().sum() for p in child.parameters()]
        assert not grads or sum(grads) > 0, f"{arch}: no gradient reaches {name}"
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(12):
        opt.zero_grad()
        loss = model(x, y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first, (arch, first, loss.item())


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_arch_reference_impl_matches_default(arch):
    model = _tiny(arch)
    x, y = _batch(8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}
    try:
        for impl in ("auto", "reference"):
            vkernels.set_impl(impl)
            model.load_state_dict(state)  # the training-mode pass below updates BatchNorm's running statistics
            with torch.no_grad():
                model.eval()
                logits = model(x)
                model.train()
                torch.manual_seed(1)  # apinet's dropout
                loss = model(x, y)
            out[impl] = (logits, loss)
    finally:
        vkernels.set_impl("auto")
    torch.testing.assert_close(out["auto"][0], out["reference"][0], rtol=1e-4, atol=1e-4, msg="logits")
    torch.testing.assert_close(out["auto"][1], out["reference"][1], rtol=1e-4, atol=1e-4, msg="training loss")


def test_dbt_groups_are_one_batched_call_on_a_view():
    model = _tiny("dbt")
    z = torch.randn(3, model.groups * 4, 5, 5).relu()
    zg = model.grouped_input(z)
    assert zg.data_ptr() == z.data_ptr() and zg.shape == (3 * model.groups, 4, 5, 5)  # a view: no copy
    batched = vkernels.bilinear_pooling(zg, normalize="signed_sqrt_l2", triu=True).view(3, model.groups, -1)
    for g in range(model.groups):
        alone = vkernels.bilinear_pooling(z[:, 4 * g:4 * g + 4], normalize="signed_sqrt_l2", triu=True)
        torch.testing.assert_close(batched[:, g], alone, msg=f"group {g}")


def test_racnn_box_covers_the_peak_and_zoom_is_a_crop():
    model = _tiny("racnn")
    act = torch.zeros(2, 4, 4)
    act[0, 1, 3] = 1.0  # row 1, column 3
    centre, side = model.boxes(act)
    assert torch.allclose(side[0], torch.tensor([0.5, 0.5]))  # one cell (1/4) widened to min_side
    assert torch.allclose(centre[0], torch.tensor([0.75, 0.375]))  # clamped inside the image on the x side
    assert torch.allclose(side[1], torch.tensor([1.0, 1.0]))  # a flat map: the whole image
    x = torch.randn(2, 3, 8, 8)
    full = model.zoom(x, torch.full((2, 2), 0.5), torch.ones(2, 2))
    torch.testing.assert_close(full, x)
    # A ramp (linear in row and column) is reproduced exactly by bilinear sampling: the top-right quarter zoomed x2
    # reads input column (2j+1)/4 + 3.5 and row (2i+1)/4 - 0.5 (pixel units, clamped at the border).
    idx = torch.arange(8.0)
    ramp = (idx[None, :] + 10 * idx[:, None]).expand(1, 1, 8, 8)
    half = model.zoom(ramp, torch.tensor([[0.75, 0.25]]), torch.full((1, 2), 0.5))
    col, row = ((2 * idx + 1) / 4 + 3.5).clamp(0, 7), ((2 * idx + 1) / 4 - 0.5).clamp(0, 7)
    torch.testing.assert_close(half[0, 0], col[None, :] + 10 * row[:, None])


def test_bench_times_both_impls():
    res = train.main(["--bench", "--arch", "dbt,cin", "--head", "bilinear", "--bench-steps", "2", "--batch-size", "8",
                      "--width", "4", "--image-size", "8", "--device", "cpu"])
    assert set(res) == {"dbt", "cin/bilinear"}
    for r in res.values():
        for impl in ("auto", "reference"):
            assert r[impl]["s_per_iter"] > 0 and r[impl]["peak_bytes"] > 0


def test_resume_equals_uninterrupted_pairs(tmp_path):
    # apinet: dropout in the mutual MLP and in-batch pairing, both restored on resume.
    common = ["--arch", "apinet", "--head", "bilinear", "--batch-size", "8", "--width", "4", "--image-size", "8",
              "--dim", "64", "--device", "cpu", "--ckpt-every", "100"]
    train.main(common + ["--steps", "4", "--out", str(tmp_path / "a")])
    train.main(common + ["--steps", "4", "--stop-at", "2", "--out", str(tmp_path / "b")])
    train.main(common + ["--steps", "4", "--out", str(tmp_path / "b"), "--resume"])
    a = torch.load(tmp_path / "a" / "apinet" / "bilinear" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "apinet" / "bilinear" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_covpatch_parts_and_cover():
    x, y, parts = covariance_patches(0, n=64, size=8, return_parts=True)
    assert x.shape == (64, 3, 8, 8) and (parts[:, 2] == 4).all() and (parts[:, :2] <= 4).all()
    exact = torch.stack([parts[:, 1], parts[:, 0], parts[:, 1] + 4, parts[:, 0] + 4], 1).float() / 8
    r = part_cover(exact, parts, 8)
    assert r["part_cover"] == pytest.approx(1.0) and r["box_area"] == pytest.approx(0.25)
    right = torch.tensor([[0.5, 0.0, 1.0, 1.0]]).expand(64, 4)  # the right half of the image
    expect = (parts[:, 1].float() / 4).mean().item()  # columns [left, left + 4) meet [4, 8) in `left` columns
    assert part_cover(right, parts, 8)["part_cover"] == pytest.approx(expect)
    res = train.main(["--arch", "racnn", "--head", "bilinear", "--data", "covpatch:0", "--steps", "2",
                      "--batch-size", "8", "--width", "4", "--image-size", "8", "--dim", "64", "--device", "cpu"])
    assert 0.0 <= res["racnn/bilinear"]["part_cover"] <= 1.0
