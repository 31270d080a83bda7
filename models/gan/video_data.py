"""Synthetic videos and captions for the video and text-conditioned GANs (mocogan.py, vid2vid.py, textgan.py), made
in code: nothing is downloaded.

- `moving_shapes`: one coloured shape (square, disc or diamond) per clip, moving in a straight line (left, right, up
  or down) over a dark background; its attributes make the captions.
- `captions`: token ids of "a <colour> <shape> moving <direction>" (or "a <colour> <shape>") over `VOCAB`.
- `semantic_videos`: vid2vid's input: one-hot label maps of rectangles drifting with constant velocities, and the
  target frames painting each class a fixed colour with a fixed left-to-right shading.

Every function draws from `gen` (a torch.Generator), or from torch's global RNG when gen is None, which the training
loop saves in its checkpoints: a resumed run draws the same clips.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SHAPES = ("square", "disc", "diamond")
COLOURS = ("red", "green", "blue", "yellow")
MOTIONS = ("left", "right", "up", "down")
VOCAB = ("<pad>", "a", "moving") + SHAPES + COLOURS + MOTIONS
_WORD = {w: i for i, w in enumerate(VOCAB)}
_RGB = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.15, 0.25, 1.0], [0.95, 0.9, 0.1]])
_STEP = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # (dx, dy) per frame, in radii / 2


def moving_shapes(n: int, frames: int, size: int, gen: torch.Generator | None = None):
    """Clips (n, frames, 3, size, size) in [-1, 1] and their attributes (shape, colour, motion): int64 (n,) each.

    The shape has radius size / 5 and moves radius / 2 pixels per frame; it starts where the whole path stays
    inside the frame, so every frame shows all of it (for up to 2 * size / radius frames)."""
    shape = torch.randint(0, len(SHAPES), (n,), generator=gen)
    colour = torch.randint(0, len(COLOURS), (n,), generator=gen)
    motion = torch.randint(0, len(MOTIONS), (n,), generator=gen)
    r = size / 5
    step = _STEP[motion] * (r / 2)                                             # (n, 2)
    travel = step * (frames - 1)
    lo = r + travel.clamp(max=0).neg()                                         # keep start and end inside
    hi = size - r - travel.clamp(min=0)
    start = lo + torch.rand(n, 2, generator=gen) * (hi - lo).clamp(min=0)
    t = torch.arange(frames, dtype=torch.float32)
    centre = start[:, None, :] + t[None, :, None] * step[:, None, :]           # (n, frames, 2)
    coord = torch.arange(size, dtype=torch.float32) + 0.5
    dx = (coord[None, None, None, :] - centre[..., 0, None, None]) / r          # (n, frames, 1, size)
    dy = (coord[None, None, :, None] - centre[..., 1, None, None]) / r          # (n, frames, size, 1)
    inside = torch.stack([torch.maximum(dx.abs(), dy.abs()), (dx.square() + dy.square()).sqrt(),
                          dx.abs() + dy.abs()], 0)                              # (3, n, frames, size, size)
    dist = inside.gather(0, shape[None, :, None, None, None].expand(1, n, frames, size, size))[0]
    mask = (1 - dist).mul(4).clamp(0, 1)                                       # one-pixel soft edge
    fg = _RGB[colour][:, None, :, None, None]
    video = 0.08 + mask[:, :, None] * (fg - 0.08)
    return video * 2 - 1, (shape, colour, motion)


def captions(shape, colour, motion=None) -> torch.Tensor:
    """Token ids (n, 5) of "a <colour> <shape> moving <direction>", or (n, 3) "a <colour> <shape>" without motion."""
    n = shape.shape[0]
    cols = [torch.full((n,), _WORD["a"]), colour + _WORD[COLOURS[0]], shape + _WORD[SHAPES[0]]]
    if motion is not None:
        cols += [torch.full((n,), _WORD["moving"]), motion + _WORD[MOTIONS[0]]]
    return torch.stack(cols, 1)


def decode(tokens: torch.Tensor) -> list[str]:
    """Captions as text (for sample grids' side files and debugging)."""
    return [" ".join(VOCAB[i] for i in row if i) for row in tokens.tolist()]


def semantic_videos(n: int, frames: int, size: int, label_nc: int, gen: torch.Generator | None = None):
    """vid2vid data: one-hot maps (n, frames, label_nc, size, size) and target frames (n, frames, 3, size, size).

    Class 0 is the background; classes 1..label_nc-1 are rectangles (later ones on top) drifting up to one pixel per
    frame. The target paints class c with a fixed colour, shaded from left to right within the frame."""
    lo, hi = max(2, size // 8), max(3, size // 2)
    wh = torch.randint(lo, hi, (n, label_nc - 1, 2), generator=gen).float()
    xy = torch.rand(n, label_nc - 1, 2, generator=gen) * (size - wh)
    vel = torch.randint(-1, 2, (n, label_nc - 1, 2), generator=gen).float()
    t = torch.arange(frames, dtype=torch.float32)
    pos = (xy[:, None] + t[None, :, None, None] * vel[:, None]).clamp(min=0)   # (n, frames, k, 2)
    pos = torch.minimum(pos, size - wh[:, None])
    coord = torch.arange(size, dtype=torch.float32) + 0.5
    inx = (coord >= pos[..., 0, None]) & (coord < pos[..., 0, None] + wh[:, None, :, 0, None])   # (n, T, k, S)
    iny = (coord >= pos[..., 1, None]) & (coord < pos[..., 1, None] + wh[:, None, :, 1, None])
    inside = iny[..., :, None] & inx[..., None, :]                             # (n, T, k, S, S)
    cls = torch.arange(1, label_nc).view(1, 1, -1, 1, 1)
    labels = (inside * cls).amax(2)                                            # topmost rectangle wins
    seg = F.one_hot(labels, label_nc).permute(0, 1, 4, 2, 3).float()
    palette = torch.linspace(-0.8, 0.8, label_nc * 3).reshape(label_nc, 3)
    shade = torch.linspace(-0.15, 0.15, size)
    img = palette[labels].permute(0, 1, 4, 2, 3) + shade
    return seg, img.clamp(-1, 1)


def dominant_colour(images: torch.Tensor) -> torch.Tensor:
    """Index into COLOURS (n,) of each image's shape colour: the palette colour nearest to the mean of its brightest
    10% of pixels (the shape covers about 12% of a frame). images (n, 3, H, W) in [-1, 1]. On moving_shapes' own
    frames it returns the caption's colour; on samples of text2image / text2video it measures how well the generator
    follows the caption's colour word (chance: 1 / len(COLOURS))."""
    x = (images.detach().float().cpu() + 1) / 2
    lum = x.sum(1).flatten(1)
    idx = lum.topk(max(1, lum.shape[1] // 10), 1).indices
    top = x.flatten(2).gather(2, idx[:, None].expand(-1, 3, -1)).mean(2)
    return torch.cdist(top, _RGB).argmin(1)
