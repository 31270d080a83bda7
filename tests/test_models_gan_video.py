"""Video and text-conditioned GANs (models/gan/mocogan.py, vid2vid.py, textgan.py, video_data.py): the synthetic
clips are what their docstrings say, one training step sends a nonzero gradient to every parameter of G and D, and
the generators and discriminators give the reference path's outputs (float64, same weights and noise).
Training, loss movement, step-0 agreement of losses and resume are tested for every --arch in test_models_gan.py."""
import copy

import pytest
import torch

import vkernels
from models import _common as C
from models.gan import train as T
from models.gan.mocogan import VideoDiscriminator, VideoGenerator, image_discriminator
from models.gan.textgan import (TextImageDiscriminator, TextImageGenerator, TextVideoDiscriminator,
                                TextVideoGenerator)
from models.gan.vid2vid import TemporalDiscriminator, Vid2VidGenerator, temporal_windows, warp
from models.gan.video_data import (MOTIONS, VOCAB, captions, decode, dominant_colour, moving_shapes,
                                   semantic_videos)

TINY = ["--res", "8", "--batch-size", "2", "--z-dim", "8", "--channels", "8", "--frames", "3", "--motion-dim", "4",
        "--threads", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _restore_impl():
    yield
    vkernels.set_impl("auto")


def test_moving_shapes_move_as_captioned():
    g = torch.Generator().manual_seed(0)
    video, (shape, colour, motion) = moving_shapes(16, 4, 16, g)
    assert video.shape == (16, 4, 3, 16, 16) and video.min() >= -1 and video.max() <= 1
    # The shape's centre of mass moves radius / 2 = 1.6 px per frame in the captioned direction.
    mass = (video.mean(2) - video.mean(2).amin((2, 3), keepdim=True)).clamp(min=0)
    coord = torch.arange(16.0) + 0.5
    cx = (mass.sum(2) * coord).sum(-1) / mass.sum((2, 3))
    cy = (mass.sum(3) * coord).sum(-1) / mass.sum((2, 3))
    step = torch.stack([cx.diff(dim=1), cy.diff(dim=1)], -1).mean(1)            # (16, 2)
    want = torch.tensor([[-1.6, 0], [1.6, 0], [0, -1.6], [0, 1.6]])[motion]
    torch.testing.assert_close(step, want, atol=0.05, rtol=0)
    text = decode(captions(shape, colour, motion))
    assert all(t.split()[-1] == MOTIONS[m] for t, m in zip(text, motion.tolist()))
    assert captions(shape, colour).shape == (16, 3) and captions(shape, colour).max() < len(VOCAB)
    assert torch.equal(dominant_colour(video[:, -1]), colour)


def test_semantic_videos_one_hot_and_painted():
    seg, img = semantic_videos(3, 4, 16, 4, torch.Generator().manual_seed(1))
    assert seg.shape == (3, 4, 4, 16, 16) and img.shape == (3, 4, 3, 16, 16)
    torch.testing.assert_close(seg.sum(2), torch.ones(3, 4, 16, 16))
    # Within one column the colour is a function of the class alone.
    labels = seg.argmax(2)
    for c in range(4):
        col = img[:, :, :, :, 5].permute(0, 1, 3, 2)[labels[..., 5] == c]
        if len(col):
            assert (col - col[0]).abs().max() < 1e-6


def test_warp_zero_and_integer_flow():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    flow = torch.zeros(2, 2, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(warp(x, flow), x)
    flow[:, 0] = 1.0  # out[p] = x[p + (1, 0)]: shifted left by one pixel, the last column repeated (border)
    torch.testing.assert_close(warp(x, flow)[..., :-1], x[..., 1:])


def test_temporal_windows_stack_consecutive_frames():
    x = torch.randn(2, 5, 3, 4, 4)
    win = temporal_windows(x, 3)
    assert win.shape == (2 * 3, 9, 4, 4)
    for n in range(2):
        for t in range(3):
            torch.testing.assert_close(win[n * 3 + t], x[n, t:t + 3].flatten(0, 1), rtol=0, atol=0)


def _trainer(arch):
    args = T.parse_args(["--arch", arch] + TINY + ["--r1-every", "1"])
    run = C.setup(args)
    return T.make_trainer(args, run)


@pytest.mark.parametrize("arch", T.VIDEO_ARCHS)
def test_every_parameter_gets_a_gradient(arch):
    """After a step, G's gradients are those of G's loss and D's of D's loss (each optimizer zeroes only its own):
    every parameter tensor of both has a nonzero gradient (motion GRU, caption encoders, flow and mask heads,
    conditional-BN embeddings and the video discriminators included)."""
    t = _trainer(arch)
    t.train_step()  # conditional BN's embeddings start at 0: the caption and motion codes get gradients from step 2
    t.train_step()
    for name in ("G", "D"):
        params = dict(t.modules[name].named_parameters())
        assert all(p.grad is not None for p in params.values()), [n for n, p in params.items() if p.grad is None]
        zero = {n for n, p in params.items() if not p.grad.abs().sum() > 0}
        assert zero <= HINGE_OUTPUT_BIASES.get((arch, name), set()), (arch, name, zero)


# A hinge-loss D's output bias gets d/db [relu(1 - D(real)) + relu(1 + D(fake))] = -1 + 1 = 0 while every margin is
# active, as at initialisation (|logits| < 1); the matching-aware loss likewise gets -1 + (1 + 1) / 2.
HINGE_OUTPUT_BIASES = {
    ("vid2vid", "D"): {"image.net.5.bias", "temporal.net.net.5.bias"},
    ("text2image", "D"): {"linear.bias"},
    ("text2video", "D"): {"image.linear.bias", "video.video.out.bias"},
}


def _same_forward(build, run):
    """run(module) under impl auto and reference from the same RNG state: equal outputs (float64)."""
    torch.manual_seed(0)
    m = build().double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))  # nonzero biases, noise strengths and conditional-BN embeddings
    state = copy.deepcopy(m.state_dict())  # spectral norm's power iteration and BN statistics update in forward
    out = {}
    for impl in ("auto", "reference"):
        vkernels.set_impl(impl)
        m.load_state_dict(state)
        torch.manual_seed(1)
        out[impl] = run(m)
    torch.testing.assert_close(out["auto"], out["reference"])
    assert torch.isfinite(out["auto"]).all() and out["auto"].abs().sum() > 0


def _tokens(n, motion=True):
    g = torch.Generator().manual_seed(2)
    _, attrs = moving_shapes(n, 2, 8, g)
    return captions(*attrs) if motion else captions(*attrs[:2])


def _clip(n=3, frames=3, size=8):
    return torch.randn(n, frames, 3, size, size, dtype=torch.float64)


CASES = {
    "mocogan_G": (lambda: VideoGenerator(8, 4, resolution=8, channel_base=64, channel_max=8),
                  lambda m: m(torch.randn(3, 8, dtype=torch.float64), 3)),
    "mocogan_D_image": (lambda: image_discriminator(8, channel_base=64, channel_max=8),
                        lambda m: m(_clip()[:, 0])),
    "mocogan_D_video": (lambda: VideoDiscriminator(3, 8, ch=4, channel_max=8), lambda m: m(_clip())),
    "vid2vid_G": (lambda: Vid2VidGenerator(4, size=16, ch=4, n_up=1, hidden=4),
                  lambda m: torch.cat([t.flatten() for t in m(semantic_videos(2, 3, 16, 4)[0].double())])),
    "vid2vid_D_temporal": (lambda: TemporalDiscriminator(4, 3, ch=4),
                           lambda m: m(semantic_videos(2, 4, 16, 4)[0].double(), _clip(2, 4, 16))),
    "text2image_G": (lambda: TextImageGenerator(8, 8, resolution=8, ch=4),
                     lambda m: m(torch.randn(3, 8, dtype=torch.float64), _tokens(3, False))),
    "text2image_G_bag": (lambda: TextImageGenerator(8, 8, resolution=8, ch=4, encoder="bag"),
                         lambda m: m(torch.randn(3, 8, dtype=torch.float64), _tokens(3, False))),
    "text2image_D": (lambda: TextImageDiscriminator(8, ch=4, text_dim=8),
                     lambda m: m(_clip()[:, 0], _tokens(3, False))),
    "text2video_G": (lambda: TextVideoGenerator(8, 8, 4, resolution=8, ch=4),
                     lambda m: m(torch.randn(3, 8, dtype=torch.float64), _tokens(3), 3)),
    "text2video_D": (lambda: TextVideoDiscriminator(8, ch=4, text_dim=8), lambda m: m(_clip(), _tokens(3))),
}


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference_path(case):
    _same_forward(*CASES[case])
