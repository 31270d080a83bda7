"""models/gan: a few StyleGAN2 steps at tiny resolution on CPU (finite losses, grid and checkpoint written), R1
through vkernels' ops equals the reference path's R1 on the same weights and inputs, and resume equals an
uninterrupted run."""
import argparse

import pytest
import torch

import vkernels
from models import _common as C
from models.gan import train as T
from models.gan.stylegan2 import Discriminator, Generator, r1_penalty

TINY = ["--data", "synthetic:0", "--res", "8", "--batch-size", "4", "--z-dim", "16", "--channels", "16",
        "--r1-every", "2", "--threads", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _restore_impl():
    yield
    vkernels.set_impl("auto")


def _run(tmp_path, steps, resume=False, extra=()):
    args = T.parse_args(TINY + ["--steps", str(steps), "--out", str(tmp_path), "--sample-every", "2",
                                "--ckpt-every", "2", *(["--resume"] if resume else []), *extra])
    run = C.setup(args)
    try:
        return T.train(args, run)
    finally:
        run.close()


def test_train_few_steps(tmp_path, capsys):
    t = _run(tmp_path, 3)
    assert (tmp_path / "checkpoint.pt").exists()
    assert (tmp_path / "samples_000002.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logs = t.train_step()
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values()), logs
    assert "s/iter" in capsys.readouterr().out


def test_resume_equals_uninterrupted(tmp_path):
    a = _run(tmp_path / "a", 4)
    _run(tmp_path / "b", 2)
    b = _run(tmp_path / "b", 4, resume=True)
    for (n, p), q in zip(a.G.state_dict().items(), b.G.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    for (n, p), q in zip(a.D.state_dict().items(), b.D.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


def test_r1_matches_reference_path():
    torch.manual_seed(0)
    D = Discriminator(resolution=8, img_channels=3, channel_base=128, channel_max=16).double()
    with torch.no_grad():
        for p in D.parameters():
            p.add_(0.1 * torch.randn_like(p))  # nonzero biases
    real = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    out = {}
    for impl in ("auto", "reference"):
        vkernels.set_impl(impl)
        D.zero_grad()
        pen, logits = r1_penalty(D, real)
        (pen.sum() + logits.sum()).backward()
        out[impl] = (pen.detach(), logits.detach(), [p.grad.clone() for p in D.parameters()])
    torch.testing.assert_close(out["auto"][0], out["reference"][0])
    torch.testing.assert_close(out["auto"][1], out["reference"][1])
    for a, b in zip(out["auto"][2], out["reference"][2]):
        torch.testing.assert_close(a, b)
    assert any(g.abs().sum() > 0 for g in out["auto"][2])


def test_generator_matches_reference_path():
    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, resolution=8, img_channels=3, channel_base=128, channel_max=16).double()
    z = torch.randn(3, 16, dtype=torch.float64)
    out = {}
    for impl in ("auto", "reference"):
        vkernels.set_impl(impl)
        G.zero_grad()
        img = G(z, noise_mode="const")
        img.square().sum().backward()
        out[impl] = (img.detach(), [p.grad.clone() for p in G.parameters()])
    torch.testing.assert_close(out["auto"][0], out["reference"][0])
    for a, b in zip(out["auto"][1], out["reference"][1]):
        torch.testing.assert_close(a, b)
