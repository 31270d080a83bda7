"""models/finegrained: every head trains at a tiny size on CPU; on the synthetic covariance task a second-order head
beats average pooling by a wide margin; a resumed run equals an uninterrupted one."""
import pytest
import torch

import vkernels
from models.finegrained import train
from models.finegrained.data import covariance_textures
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
