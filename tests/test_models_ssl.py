"""models/ssl: the three methods train, --impl reference agrees, resume is bit-exact, 2-rank gloo DDP works.

Tiny sizes (8x8 synthetic images, width 4, d=16) so the whole file stays fast on a shared 2-core machine.
"""
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import vkernels
from models.ssl import augment, train
from models.ssl.encoders import SplitBatchNorm
from models.ssl.knn import weighted_knn
from models.ssl.moco import MoCo

TINY = ["--image-size", "8", "--width", "4", "--dim", "16", "--hidden", "32", "--queue-size", "40",
        "--batch-size", "8", "--knn-every", "0", "--knn-k", "20", "--no-peak", "--log-every", "1000",
        "--threads", "1"]


def _run(method, *extra):
    try:
        return train.main(["--method", method, *TINY, *map(str, extra)])
    finally:
        vkernels.set_impl("auto")


@pytest.mark.parametrize("method", train.METHODS)
def test_method_trains(method):
    rec = _run(method, "--steps", 4)
    losses = [l for _, l in rec["history"]]
    assert len(losses) == 4 and all(math.isfinite(l) for l in losses), losses
    assert max(losses) - min(losses) > 1e-4, losses
    assert 0.0 <= rec["knn"] <= 1.0


@pytest.mark.parametrize("method", train.METHODS)
def test_reference_impl_same_loss_at_step0(method):
    auto = _run(method, "--steps", 1, "--impl", "auto")["history"][0][1]
    ref = _run(method, "--steps", 1, "--impl", "reference")["history"][0][1]
    assert abs(auto - ref) <= 1e-5 * max(1.0, abs(ref)), (auto, ref)


def _ckpt(path):
    return torch.load(path / "checkpoint.pt", weights_only=False)


def _assert_same_state(a, b):
    assert a["step"] == b["step"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), k


@pytest.mark.parametrize("method", train.METHODS)
def test_resume_is_bit_exact(method, tmp_path):
    full = _run(method, "--steps", 5, "--out", tmp_path / "full")
    _run(method, "--steps", 5, "--out", tmp_path / "cut", "--ckpt-every", 2, "--stop-after", 3)  # killed after 3
    assert _ckpt(tmp_path / "cut")["step"] == 2
    resumed = _run(method, "--steps", 5, "--out", tmp_path / "cut", "--resume")
    assert resumed["start"] == 2
    assert resumed["history"] == full["history"][2:]
    _assert_same_state(_ckpt(tmp_path / "full"), _ckpt(tmp_path / "cut"))


def test_split_batchnorm_equals_per_group_bn():
    x = torch.randn(12, 5, 3, 3)
    bn = SplitBatchNorm(5, num_splits=3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    y = bn(x)
    ref = torch.nn.BatchNorm2d(5)
    ref.load_state_dict({k: v for k, v in bn.state_dict().items()}, strict=False)
    for i in range(3):
        torch.testing.assert_close(y[4 * i:4 * i + 4], torch.nn.functional.batch_norm(
            x[4 * i:4 * i + 4], None, None, bn.weight, bn.bias, True), rtol=1e-5, atol=1e-5)
    # running stats: the mean over groups of each group's update
    means = torch.stack([x[4 * i:4 * i + 4].mean((0, 2, 3)) for i in range(3)]).mean(0)
    torch.testing.assert_close(bn.running_mean, 0.1 * means, rtol=1e-5, atol=1e-6)


def test_moco_shuffled_keys_are_unshuffled():
    # With one BN group the key encoder's output cannot depend on the order of the batch: shuffle + unshuffle must
    # return each key at its own sample's position.
    m = MoCo(3, width=4, hidden=16, dim=8, queue_size=16, bn_splits=1)
    im = torch.randn(8, 3, 8, 8)
    k = m._shuffled_keys(im, torch.Generator().manual_seed(3))
    torch.testing.assert_close(k, m.encoder_k(im), rtol=1e-5, atol=1e-5)
    # With 4 groups, it must differ from unshuffled per-group BN (the point of shuffling).
    m2 = MoCo(3, width=4, hidden=16, dim=8, queue_size=16, bn_splits=4)
    k2 = m2._shuffled_keys(im, torch.Generator().manual_seed(3))
    assert not torch.allclose(k2, m2.encoder_k(im), atol=1e-4)


def test_augment_identity_and_flip():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(0)
    same = augment.random_resized_crop_flip(x, g, scale=(1, 1), ratio=(1, 1), flip_p=0.0)
    torch.testing.assert_close(same, x, rtol=0, atol=1e-5)
    flipped = augment.random_resized_crop_flip(x, g, scale=(1, 1), ratio=(1, 1), flip_p=1.0)
    torch.testing.assert_close(flipped, x.flip(-1), rtol=0, atol=1e-5)
    a = augment.augment_images(x, torch.Generator().manual_seed(5))
    b = augment.augment_images(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.allclose(a, x)
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1


def test_weighted_knn():
    train_f = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    test_f = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.2, 1.0], [0.6, 0.4]]), dim=1)
    assert weighted_knn(train_f, labels, test_f, torch.tensor([0, 1, 0]), 2, k=4) == 1.0
    # k=1 picks the single nearest; a wrong label for it must cost accuracy.
    assert weighted_knn(train_f, labels, test_f, torch.tensor([1, 1, 0]), 2, k=1) == pytest.approx(2 / 3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RUNS = [(m, "gather") for m in train.METHODS] + [("moco", "sharded")]


def _ddp_worker(rank, world, ports, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    for (method, sync), port in zip(RUNS, ports):
        os.environ["MASTER_PORT"] = str(port)
        rec = train.main(["--method", method, *TINY, "--steps", "2", "--bank-sync", sync])
        torch.save({"history": rec["history"], "model": rec["model"]}, f"{out_dir}/{method}-{sync}-{rank}.pt")


def test_ddp_two_ranks_gloo(tmp_path):
    ports = [_free_port() for _ in RUNS]
    mp.start_processes(_ddp_worker, args=(2, ports, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    # A queue sharded over the 2 ranks is the gathered queue split in two: same losses (the sharded loss merges the
    # per-shard log-sum-exps), up to summation order.
    g0, s0 = (torch.load(tmp_path / f"moco-{sync}-0.pt", weights_only=False)["history"]
              for sync in ("gather", "sharded"))
    for (_, lg), (_, ls) in zip(g0, s0):
        assert abs(lg - ls) <= 1e-5 * max(1.0, abs(lg)), (g0, s0)
    for method in train.METHODS:
        r0, r1 = (torch.load(tmp_path / f"{method}-gather-{r}.pt", weights_only=False) for r in (0, 1))
        assert all(math.isfinite(l) for _, l in r0["history"] + r1["history"])
        # DDP keeps the trained parameters identical on both ranks and sync="gather" the banks. BN running
        # statistics legitimately differ: each rank's last forward updated them from its own batch.
        checked = [k for k in r0["model"] if "running_" not in k and "num_batches" not in k]
        assert any(k.endswith(".memory") for k in checked), checked
        for k in checked:
            torch.testing.assert_close(r0["model"][k], r1["model"][k], rtol=0, atol=0, msg=f"{method}: {k}")
