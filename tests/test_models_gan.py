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


# ---- every --arch (helper gan-models): trains and the losses move, auto == reference at step 0, bit-exact resume,
# and the path-length penalty (double backward through G's kernels) equals the reference path's.
ARCH_ARGS = {
    "stylegan2": ["--arch", "stylegan2", "--pl-weight", "2", "--pl-every", "2"] + TINY[:-2],
    "biggan": ["--arch", "biggan", "--data", "synthetic:0", "--res", "8", "--batch-size", "4", "--z-dim", "16",
               "--channels", "8", "--threads", "1"],
    "spade": ["--arch", "spade", "--res", "16", "--batch-size", "2", "--channels", "8", "--threads", "1"],
    "hologan": ["--arch", "hologan", "--res", "16", "--batch-size", "2", "--channels", "8", "--z-dim", "8",
                "--threads", "1", "--probe-steps", "2", "--eval-objects", "4"],
}
# Video and text archs (models/gan/video_train.py): 3-frame clips at 8x8.
VIDEO_TINY = ["--res", "8", "--batch-size", "2", "--z-dim", "8", "--channels", "8", "--frames", "3", "--motion-dim",
              "4", "--r1-every", "2", "--threads", "1"]
ARCH_ARGS.update({arch: ["--arch", arch] + VIDEO_TINY for arch in T.VIDEO_ARCHS})


def _run_arch(arch, tmp_path, steps, resume=False):
    args = T.parse_args(ARCH_ARGS[arch] + ["--device", "cpu", "--steps", str(steps), "--out", str(tmp_path),
                                           "--sample-every", "2", "--ckpt-every", "2",
                                           *(["--resume"] if resume else [])])
    run = C.setup(args)
    try:
        return T.train(args, run)
    finally:
        run.close()


@pytest.mark.parametrize("arch", T.ARCHS)
def test_arch_trains_and_losses_move(arch, tmp_path):
    t = _run_arch(arch, tmp_path, 2)
    assert (tmp_path / "samples_000002.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "report.json").exists()
    before = [p.detach().clone() for p in t.G.parameters()]
    logs = [t.train_step() for _ in range(3)]
    for k in logs[0]:
        vals = [lg[k] for lg in logs]
        assert all(torch.isfinite(torch.tensor(vals))), (k, vals)
        if k not in ("r1", "pl"):  # lazy terms: logged as of the last step that ran them
            assert len(set(vals)) > 1, (k, vals)
    assert any(not torch.equal(a, b) for a, b in zip(before, t.G.parameters()))


@pytest.mark.parametrize("arch", T.ARCHS)
def test_arch_step0_matches_reference(arch):
    """Same seed, same weights and batches: the first step's losses with our kernels equal the reference path's."""
    args = T.parse_args(ARCH_ARGS[arch] + ["--device", "cpu"])
    logs = {}
    for impl in ("auto", "reference"):
        args.impl = impl
        run = C.setup(args)
        t = T.make_trainer(args, run)
        logs[impl] = t.train_step()
        logs[impl]["G_after"] = [p.grad.clone() for p in t.G.parameters() if p.grad is not None]
    ga, gr = logs["auto"].pop("G_after"), logs["reference"].pop("G_after")
    assert logs["auto"].keys() == logs["reference"].keys()
    for k in logs["auto"]:
        assert logs["auto"][k] == pytest.approx(logs["reference"][k], rel=1e-4, abs=1e-5), k
    if arch == "stylegan2":
        assert logs["auto"]["pl"] != 0 and logs["auto"]["r1"] != 0  # both lazy terms ran on step 0
    assert len(ga) == len(gr) > 0
    for a, b in zip(ga, gr):  # G's gradients of that step (fp32 rounding of different summation orders)
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * (1 + float(b.abs().max())))


@pytest.mark.parametrize("arch", T.ARCHS)
def test_arch_resume_bit_exact(arch, tmp_path):
    a = _run_arch(arch, tmp_path / "a", 4)
    _run_arch(arch, tmp_path / "b", 2)
    b = _run_arch(arch, tmp_path / "b", 4, resume=True)
    for name in a.modules:
        for (n, p), q in zip(a.modules[name].state_dict().items(), b.modules[name].state_dict().values()):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{name}.{n}")


def test_path_length_penalty_matches_reference_path():
    from models.gan.stylegan2 import path_length_penalty

    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, resolution=8, img_channels=3, channel_base=128, channel_max=16).double()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))  # nonzero biases and noise strengths
    z = torch.randn(3, 16, dtype=torch.float64)
    out = {}
    for impl in ("auto", "reference"):
        vkernels.set_impl(impl)
        G.zero_grad()
        G.pl_mean.zero_()
        torch.manual_seed(1)  # same noise and path-length direction
        pen = path_length_penalty(G, z)
        pen.sum().backward()
        # A parameter the penalty does not depend on (toRGB's bias) has no gradient on one path, zeros on the other.
        out[impl] = (pen.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                    for p in G.parameters()])
    torch.testing.assert_close(out["auto"][0], out["reference"][0])
    for a, b in zip(out["auto"][1], out["reference"][1]):
        torch.testing.assert_close(a, b)
    assert sum(bool(g.abs().sum() > 0) for g in out["auto"][1]) > len(out["auto"][1]) // 2
