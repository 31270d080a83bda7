"""models/ssl: every method trains, --impl reference agrees, resume is bit-exact, 2-rank gloo DDP works; BigBiGAN's
and the video model's updates reach every parameter and lower their loss on a fixed batch; the moving-shapes videos
move as their labels say.

Tiny sizes (8x8 synthetic images or videos, width 4, d=16) so the whole file stays fast on a shared 2-core machine.
"""
import copy
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import vkernels
from models.ssl import augment, train
from models.ssl import data as D
from models.ssl import video
from models.ssl.bigbigan import BigBiGAN
from models.ssl.encoders import SplitBatchNorm
from models.ssl.knn import linear_probe, weighted_knn
from models.ssl.moco import MoCo

TINY = ["--image-size", "8", "--width", "4", "--dim", "16", "--hidden", "32", "--queue-size", "40",
        "--batch-size", "8", "--knn-every", "0", "--knn-k", "20", "--no-peak", "--log-every", "1000",
        "--threads", "1"]


def _run(method, *extra):
    data = ["--data", "synthetic:0"] if method == "bigbigan" else []  # its default, digits, costs an sklearn import
    try:
        return train.main(["--method", method, *TINY, *data, *map(str, extra)])
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
    assert sa.keys() == sb.keys() and sa
    for k in sa:  # SGD's momentum_buffer, Adam's step / exp_avg / exp_avg_sq
        assert sa[k].keys() == sb[k].keys()
        for name in sa[k]:
            assert torch.equal(sa[k][name], sb[k][name]), (k, name)


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


DDP_METHODS = [m for m in train.METHODS if m != "bigbigan"]  # bigbigan refuses torchrun
RUNS = [(m, "gather") for m in DDP_METHODS] + [("moco", "sharded")]


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
    for method in DDP_METHODS:
        r0, r1 = (torch.load(tmp_path / f"{method}-gather-{r}.pt", weights_only=False) for r in (0, 1))
        assert all(math.isfinite(l) for _, l in r0["history"] + r1["history"])
        # DDP keeps the trained parameters identical on both ranks and sync="gather" the banks. BN running
        # statistics legitimately differ: each rank's last forward updated them from its own batch.
        checked = [k for k in r0["model"] if "running_" not in k and "num_batches" not in k]
        assert any(k.endswith(".memory") for k in checked), checked
        for k in checked:
            torch.testing.assert_close(r0["model"][k], r1["model"][k], rtol=0, atol=0, msg=f"{method}: {k}")


def test_bigbigan_refuses_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = train.parse_args(["--arch", "bigbigan", *TINY, "--data", "synthetic:0"])
    run = train.C.Run(0, 2, 0, torch.device("cpu"), None, 0)
    data = D.load("bigbigan", args.data, args.image_size, args.seed)
    with pytest.raises(SystemExit, match="one process"):
        train.build(args, data, run)


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_bigbigan_updates_reach_every_part_and_d_loss_falls():
    torch.manual_seed(0)
    model = BigBiGAN(3, resolution=8, z_dim=8, width=4, hidden=16)
    opt = model.make_optimizer(train.parse_args(["--arch", "bigbigan"]))
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    before = _params(model)
    losses = []
    for step in range(8):  # one fixed batch and z: D must learn to tell its real pairs from its fake ones
        loss, metrics, _ = model.train_step(model, opt, x, None, 0, 0, 0)
        losses.append(float(loss))
        if step == 0:
            # the E+G backward left gradients on E and G only (D's own update used the detached pair)
            assert all(p.grad is None for p in model.D.parameters())
            for part in (model.E, model.G):
                assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    after = _params(model)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, unchanged
    assert losses[-1] < losses[0], losses


def test_bigbigan_fused_and_reference_forward_agree():
    torch.manual_seed(0)
    model = BigBiGAN(1, resolution=16, z_dim=8, width=4, hidden=16).double()  # fp64: differences are the ops'
    x, z = torch.rand(6, 1, 16, 16, dtype=torch.float64) * 2 - 1, torch.randn(6, 8, dtype=torch.float64)
    outs = {}
    for impl in ("auto", "reference"):
        m = copy.deepcopy(model)  # a training-mode forward moves spectral norm's power iteration and BN statistics
        vkernels.set_impl(impl)
        try:
            outs[impl] = (m.generate(z), *m.D(x, z), m.G.blocks[0].bn1.running_var)
        finally:
            vkernels.set_impl("auto")
    for a, b in zip(outs["auto"], outs["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_moving_shapes_move_as_labelled():
    x, y = D.moving_shapes(3, n=16, frames=12, size=16)
    x2, y2 = D.moving_shapes(3, n=16, frames=12, size=16)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (16, 3, 12, 16, 16) and x.min() >= -1 and x.max() <= 1
    # Centroid of the foreground over time: horizontal motion keeps its row, vertical its column, the others move both.
    fg = (x - x[:, :, :, :1, :1]).abs().sum(1)                                    # (n, T, H, W), bg ~ 0
    fg = torch.where(fg > 0.6, fg, torch.zeros_like(fg))
    coords = torch.arange(16.0)
    w = fg.sum((2, 3))
    cx = (fg.sum(2) * coords).sum(2) / w
    cy = (fg.sum(3) * coords).sum(2) / w
    sx, sy = cx.std(1), cy.std(1)
    names = D.MOTIONS
    for i in range(16):
        kind = names[int(y[i])]
        if kind == "horizontal":
            assert sx[i] > 4 * sy[i], (i, sx[i], sy[i])
        elif kind == "vertical":
            assert sy[i] > 4 * sx[i], (i, sx[i], sy[i])
        else:
            assert min(sx[i], sy[i]) > 0.3, (i, kind, sx[i], sy[i])


def test_sample_clips_strides_and_starts():
    n, length = 64, 20
    vids = torch.arange(length, dtype=torch.float32).view(1, 1, length, 1, 1).expand(n, 2, length, 3, 3).clone()
    clips, cls = video.sample_clips(vids, torch.Generator().manual_seed(0), frames=6)
    t = clips[:, 0, :, 0, 0]                                                       # the frame index of each frame
    stride = torch.tensor(video.SPEEDS)[cls].float()
    torch.testing.assert_close(t[:, 1:] - t[:, :-1], stride[:, None].expand(-1, 5))
    assert t.min() >= 0 and t.max() <= length - 1 and set(cls.tolist()) == {0, 1}
    assert torch.equal(clips[:, 0], clips[:, 1])
    with pytest.raises(ValueError, match="frames"):
        video.sample_clips(vids[:, :, :8], torch.Generator(), frames=6)


def test_video_step_reaches_every_parameter_and_loss_falls():
    torch.manual_seed(0)
    x, _ = D.moving_shapes(1, n=8, frames=20, size=8)
    # bank momentum 0: each update replaces the rows, so after one pass the negatives are the other videos' clips
    # (with random rows the loss starts artificially low and rises while the bank fills)
    model = video.VideoInstance(3, num_videos=8, width=4, dim=16, frames=6, bank_momentum=0.0)
    opt = torch.optim.SGD(model.trainable().parameters(), lr=0.01, momentum=0.9)
    idx = torch.arange(8)
    with torch.no_grad():
        model.after_step(model.step(model.encoder, x, idx, 0, 0, 0)[2], idx)
    before = _params(model.encoder)
    losses = []
    for step in range(10):  # same batch, same clips and augmentations (seed and step fixed)
        loss, metrics, z = model.step(model.encoder, x, idx, 0, 0, 0)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
        opt.step()
        model.after_step(z, idx)
        losses.append(float(loss.detach()))
    after = _params(model.encoder)
    assert not [n for n in before if torch.equal(before[n], after[n])]
    assert losses[-1] < losses[0], losses
    # the bank rows of this batch hold the momentum-updated clip embeddings, the others their random init
    bank = model.criterion.bank.negatives()
    assert torch.allclose(bank[:8].norm(dim=1), torch.ones(8), atol=1e-5)
    assert (bank[:8] @ z.t()).diagonal().min() > 0.9


def test_linear_probe_separates_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 5, generator=g) * 3
    y = torch.arange(90) % 3
    f = centres[y] + torch.randn(90, 5, generator=g)
    acc = linear_probe(f[:60], y[:60], f[60:], y[60:], 3)
    assert acc > 0.9 and acc == linear_probe(f[:60], y[:60], f[60:], y[60:], 3)
    # labels unrelated to the features: held-out accuracy near chance
    shuffled = y[torch.randperm(90, generator=g)]
    assert linear_probe(f[:60], shuffled[:60], f[60:], shuffled[60:], 3) < 0.6
