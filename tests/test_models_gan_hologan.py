"""HoloGAN-style GAN (models/gan/hologan.py): the 5-D fused AdaIN on its feature volume (auto path against the
reference path), pose-dependent synthetic views, the discriminator's style and z heads, the losses, and the metrics
(rotation agreement, z reconstruction, the trainer's evaluate()). Training (--arch hologan: a few steps with finite
losses that move, step 0 against the reference path, bit-exact resume) runs in tests/test_models_gan.py's per-arch
tests."""
import json
import math

import pytest
import torch

import vkernels
from models import _common as C
from models.gan import train as T
from models.gan.hologan import (POSE_BINS, HoloGANDiscriminator, HoloGANGenerator, d_losses, g_losses,
                                latent_recovery, random_poses, rotation_agreement, synthetic_views)

TINY = ["--arch", "hologan", "--res", "16", "--batch-size", "4", "--channels", "8", "--z-dim", "4", "--threads", "1",
        "--device", "cpu", "--probe-steps", "2", "--eval-objects", "4"]


def test_volume_adain_is_5d_and_matches_reference():
    torch.manual_seed(0)
    G = HoloGANGenerator(z_dim=8, ch=8, res=16, vol=8)
    shapes = []
    orig = vkernels.nn.AdaIN.forward

    def spy(self, x, style):
        shapes.append(tuple(x.shape))
        return orig(self, x, style)

    z = torch.randn(2, 8)
    pose = random_poses(2, torch.Generator().manual_seed(1))
    try:
        vkernels.nn.AdaIN.forward = spy
        y = G(z, *pose)
    finally:
        vkernels.nn.AdaIN.forward = orig
    assert y.shape == (2, 3, 16, 16) and torch.isfinite(y).all()
    assert any(len(s) == 5 for s in shapes) and any(len(s) == 4 for s in shapes)
    for m in G.modules():
        if isinstance(m, vkernels.nn.AdaIN):
            m.impl = "reference"
    torch.testing.assert_close(G(z, *pose), y, rtol=1e-4, atol=1e-4)


def test_synthetic_views_depend_on_pose():
    a = synthetic_views(2, 16, torch.Generator().manual_seed(3), poses=(torch.zeros(2), torch.zeros(2), torch.ones(2)))
    b = synthetic_views(2, 16, torch.Generator().manual_seed(3),
                        poses=(torch.full((2,), 1.5), torch.zeros(2), torch.ones(2)))
    assert a.shape == (2, 3, 16, 16) and a.abs().max() <= 1
    assert (a - b).abs().max() > 0.1  # the shapes are not rotation invariant


def test_discriminator_heads_and_losses():
    """Image logit, one style logit per strided layer, a z estimate; every head and the fused instance norm get
    gradients from the losses, and the fused norm equals the reference path."""
    torch.manual_seed(0)
    G, D = HoloGANGenerator(z_dim=4, ch=8, res=16, vol=8), HoloGANDiscriminator(ch=8, res=16, z_dim=4)
    real = synthetic_views(3, 16, torch.Generator().manual_seed(0))
    z = torch.randn(3, 4)
    fake = G(z, *random_poses(3, torch.Generator().manual_seed(1)))
    logit, style, z_hat = D(real)
    assert logit.shape == (3,) and style.shape == (3, len(D.norms)) == (3, 2) and z_hat.shape == (3, 4)
    adv, sty, lat = d_losses(D, real, fake.detach(), z)
    (adv + sty + lat).backward()
    for name, p in D.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    adv, sty, lat = g_losses(D, fake, z)
    G.zero_grad()
    (sty + lat).backward()  # the style and z terms alone reach G
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    out = {}
    for impl in ("auto", "reference"):
        for m in D.norms:
            m.impl = impl
        out[impl] = D(real)
    for a, b in zip(out["auto"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_rotation_agreement_scores():
    g = torch.Generator().manual_seed(0)
    req = torch.arange(8) * (2 * math.pi / 8) + torch.rand(50, 1, generator=g) * 6
    offset = torch.rand(50, 1, generator=g) * 6  # each object's own frontal view does not count
    assert rotation_agreement(req + offset, req) == pytest.approx((1.0, 0.0), abs=1e-4)
    agree, err = rotation_agreement(torch.zeros_like(req), req)  # images that ignore the pose
    assert agree == 0.0 and err > 90
    agree, err = rotation_agreement(torch.rand(4000, 8, generator=g) * 7, req.repeat(80, 1))
    assert agree == pytest.approx(1 / POSE_BINS, abs=0.01) and err == pytest.approx(90, abs=2)


def test_trainer_loss_goes_down_and_metrics_reported(tmp_path):
    """40 steps: D's adversarial loss falls (mean of the last 10 steps below the first 10); a 2-step run reports
    the metrics before and after training, and evaluate() leaves the global RNG stream (the batches) alone."""
    args = T.parse_args(TINY + ["--lr", "1e-3"])
    t = T.make_trainer(args, C.setup(args))
    logs = [t.train_step() for _ in range(40)]
    first, last = (sum(lg["loss_D"] for lg in part) / 10 for part in (logs[:10], logs[-10:]))
    assert last < first, (first, last)
    state = torch.get_rng_state()
    m = t.evaluate()
    assert torch.equal(state, torch.get_rng_state())
    assert 0 <= m["rot_agree"] <= 1 and 0 <= m["rot_agree_real"] <= 1 and 0 <= m["probe_acc"] <= 1
    assert 0 <= m["rot_err"] <= 180 and math.isfinite(m["z_mse"])
    args = T.parse_args(TINY + ["--steps", "2", "--out", str(tmp_path)])
    run = C.setup(args)
    try:
        T.train(args, run)
    finally:
        run.close()
    rec = json.loads((tmp_path / "report.json").read_text())
    for k in ("z_mse", "rot_agree", "rot_agree_real", "probe_acc"):
        assert math.isfinite(rec[k]) and math.isfinite(rec[k + "_init"]), k


def test_latent_recovery_of_a_zero_head():
    """A z head that always answers 0 scores E[z^2], about 1."""
    G = HoloGANGenerator(z_dim=4, ch=8, res=16, vol=8)

    class Zero(torch.nn.Module):
        def forward(self, img):
            return None, None, torch.zeros(img.shape[0], 4)

    assert latent_recovery(G, Zero(), n=256) == pytest.approx(1.0, abs=0.2)


def test_example_entry_runs(capsys):
    from models.gan.hologan import main

    main(["--steps", "1", "--batch-size", "2", "--channels", "4"])
    assert "loss_D" in capsys.readouterr().out
