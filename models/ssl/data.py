"""Data for the SSL models: offline images (models/_common.load_images), paired synthetic two-modality data, a
train / held-out split, and a sampler whose batches are a pure function of (seed, step, rank).

The sampler keeps no state: the batch of step s is the slice [s*B*W + r*B, s*B*W + (r+1)*B) of the concatenation of
per-epoch permutations, each drawn from a generator seeded with (seed, epoch). A resumed run therefore sees the same
batches as an uninterrupted one without saving a data-loader state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models import _common as C


@dataclass
class SSLData:
    x: torch.Tensor                 # (M, C, H, W) training images in [-1, 1] (modality A); videos: (M, C, L, H, W)
    y: torch.Tensor                 # (M,) labels (kNN evaluation only; never used for training)
    x_test: torch.Tensor            # held-out split
    y_test: torch.Tensor
    s: torch.Tensor | None = None   # (M, 1, L) paired signals (modality B), cross-modal data only
    s_test: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y, self.y_test]).max()) + 1


def paired_synthetic(seed: int, n: int = 512, size: int = 16, length: int = 256, classes: int = 4, latent: int = 8):
    """Two 'modalities' rendered from one latent per instance: z = centre[y] + 0.6 * noise.

    A: a 3-channel image, a fixed random linear map of z to a 4x4 colour grid, upsampled (bicubic) to size x size.
    B: a 1-D signal of `length` samples, a sum of 4 sinusoids whose frequencies, amplitudes and phases are fixed
       random functions of z, plus noise. Instance identity is shared only through z, so matching an image to its
       own signal (cross-modal instance discrimination) has to recover z.
    Returns (images (n, 3, size, size) in [-1, 1], signals (n, 1, length), labels (n,)).
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, latent, generator=g) * 1.5
    z = centres[y] + 0.6 * torch.randn(n, latent, generator=g)
    to_img = torch.randn(latent, 3 * 16, generator=g) / latent ** 0.5
    grid = torch.sigmoid(z @ to_img).view(n, 3, 4, 4)
    img = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    img = (img + 0.03 * torch.randn(img.shape, generator=g)).clamp(0, 1) * 2 - 1
    w_f, w_a, w_p = (torch.randn(latent, 4, generator=g) / latent ** 0.5 for _ in range(3))
    freq = 2 + 14 * torch.sigmoid(z @ w_f)            # cycles per signal
    amp = F.softplus(z @ w_a)
    phase = 3.14159 * torch.tanh(z @ w_p)
    t = torch.linspace(0, 1, length)
    sig = (amp[:, :, None] * torch.sin(2 * 3.14159 * freq[:, :, None] * t + phase[:, :, None])).sum(1, keepdim=True)
    sig = sig / sig.std(dim=2, keepdim=True).clamp_min(1e-3) + 0.05 * torch.randn(sig.shape, generator=g)
    return img.contiguous(), sig.contiguous(), y


MOTIONS = ("horizontal", "vertical", "diagonal", "circular")  # the classes of moving_shapes


def moving_shapes(seed: int, n: int = 320, frames: int = 24, size: int = 16):
    """Synthetic videos of one moving shape on a noisy background; the class is the motion type.

    Per video: a shape (square, disc or diamond, radius 2.5-4 px), a random colour on a random dark background, and a
    trajectory p(t) = c + A * u(w t + phi) with u(a) = (cos a, 0) horizontal, (0, cos a) vertical, (cos a, +-cos a) /
    sqrt 2 diagonal, (cos a, sin a) circular; amplitude A in [3, 5] px, angular speed w in [0.2, 0.45] rad/frame,
    random phase and centre. Shape, colour and speed are nuisances shared by all clips of a video (they identify the
    instance); only the motion type is the label, so kNN on it measures whether the embedding encodes motion.
    Rendered with soft (1-px ramp) edges. Returns (videos (n, 3, frames, size, size) in [-1, 1], labels (n,)).
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(MOTIONS)

    def u(lo, hi, *shape):
        return torch.rand(*(shape or (n,)), generator=g) * (hi - lo) + lo

    amp, speed, phase = u(3, 5), u(0.2, 0.45), u(0, 2 * math.pi)
    centre = size / 2 + torch.stack([u(-1.5, 1.5), u(-1.5, 1.5)], 1)
    radius, shape = u(2.5, 4.0), torch.randint(0, 3, (n,), generator=g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    a = speed[:, None] * torch.arange(frames) + phase[:, None]                     # (n, T)
    c, s = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(c)
    dirs = torch.stack([torch.stack([c, zero], -1), torch.stack([zero, c], -1),
                        torch.stack([c, sign[:, None] * c], -1) / math.sqrt(2), torch.stack([c, s], -1)])  # (4,n,T,2)
    pos = centre[:, None] + amp[:, None, None] * dirs[y, torch.arange(n)]              # (n, T, 2): (x, y)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dx = coords.view(1, 1, 1, size) - pos[..., 0, None, None]                      # (n, T, 1, W)
    dy = coords.view(1, 1, size, 1) - pos[..., 1, None, None]                      # (n, T, H, 1)
    dist = torch.stack([torch.maximum(dx.abs(), dy.abs()),                         # square: L-inf ball
                        torch.sqrt(dx ** 2 + dy ** 2),                             # disc: L2 ball
                        dx.abs() + dy.abs()])                                      # diamond: L1 ball
    dist = dist[shape, torch.arange(n)]                                            # (n, T, H, W)
    mask = (radius.view(n, 1, 1, 1) + 0.5 - dist).clamp(0, 1)
    fg = u(0.5, 1.0, n, 3)
    bg = u(0.0, 0.3, n, 3)
    vid = bg.view(n, 3, 1, 1, 1) + (fg - bg).view(n, 3, 1, 1, 1) * mask[:, None]
    vid = (vid + 0.04 * torch.randn(vid.shape, generator=g)).clamp(0, 1)
    return (vid * 2 - 1).contiguous(), y


def load(method: str, data: str, size: int | None, seed: int, heldout: float = 0.2) -> SSLData:
    """The training and held-out split for `method` ("xmodal" needs paired data: data must be synthetic:<seed>;
    "video" needs --data shapes:<seed>, the moving shapes of `moving_shapes`)."""
    kind, _, arg = data.partition(":")
    s = None
    if method == "video" or kind == "shapes":
        if method != "video" or kind != "shapes":
            raise SystemExit(f"--data shapes:<seed> (videos) goes with --arch video and only with it; got --arch "
                             f"{method} --data {data}")
        x, y = moving_shapes(int(arg or 0), size=size or 16)
    elif method == "xmodal":
        if kind != "synthetic":
            raise SystemExit(f"--method xmodal needs paired data: --data synthetic:<seed>, got {data!r}")
        x, s, y = paired_synthetic(int(arg or 0), size=size or 16)
    else:
        x, y = C.load_images(data, size)
        if y is None:
            raise SystemExit(f"--data {data}: the SSL models need labels for their kNN evaluation; use digits or "
                             f"synthetic:<seed>")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 7919))
    n_test = max(1, int(round(heldout * x.shape[0])))
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    return SSLData(x[tr].contiguous(), y[tr], x[te].contiguous(), y[te],
                   None if s is None else s[tr].contiguous(), None if s is None else s[te].contiguous())


def batch_indices(step: int, rank: int, world: int, batch: int, m: int, seed: int) -> torch.Tensor:
    """Indices into the M training samples for `rank`'s batch at `step` (see the module docstring)."""
    pos = torch.arange(batch) + (step * world + rank) * batch
    epochs = pos // m
    out = torch.empty(batch, dtype=torch.long)
    for e in epochs.unique().tolist():
        perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed * 100_003 + e))
        sel = epochs == e
        out[sel] = perm[pos[sel] % m]
    return out


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for the random draws of (step, rank, stream): augmentation, shuffles."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + rank) * 31 + stream)
