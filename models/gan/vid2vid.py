"""Video -> video in the manner of vid2vid (Wang et al. 2018, "Video-to-Video Synthesis"), with SPADE residual blocks
as the generator's up-sampling path (as in few-shot vid2vid / NVlabs imaginaire), on vkernels' public API.

Frame t is generated from the semantic map s_t and the previous `prev` generated frames: an encoder of
[s_t, x_{t-prev..t-1}] at the base resolution, SPADEResBlocks (models/gan/spade.py: vkernels.nn.SPADE, the fused
spade_norm_act, is the hot layer) conditioned on s_t, then three heads: a hallucinated image h_t, a flow w_t and a
soft mask m_t. x_t = (1 - m_t) * warp(x_{t-1}, w_t) + m_t * h_t, the warp being torch's grid_sample (bilinear,
border padding). The first frame has no predecessor: x_0 = h_0. Discriminators: spade.py's PatchDiscriminator on
(s_t, x_t) per frame, and a temporal one, the same PatchGAN on `k` consecutive maps and frames stacked along channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.gan.spade import PatchDiscriminator, SPADEResBlock

__all__ = ["Vid2VidGenerator", "TemporalDiscriminator", "warp", "temporal_windows"]


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: out[p] = img[p + flow[p]], flow (n, 2, H, W) in pixels (x, y), bilinear, border padding."""
    n, _, h, w = img.shape
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=img.device, dtype=img.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=img.device, dtype=img.dtype)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)            # (H, W, 2) as (x, y)
    scale = torch.tensor([2 / w, 2 / h], device=img.device, dtype=img.dtype)
    grid = base + flow.permute(0, 2, 3, 1) * scale
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Vid2VidGenerator(torch.nn.Module):
    """forward(seg (n, T, label_nc, S, S)) -> frames (n, T, 3, S, S), and the flows (n, T - 1, 2, S, S)."""

    def __init__(self, label_nc: int, size: int = 16, ch: int = 16, n_up: int = 1, hidden: int = 16,
                 prev: int = 2, max_flow: float = 4.0):
        super().__init__()
        self.prev, self.base, self.max_flow = prev, size // 2 ** n_up, max_flow
        c0 = ch * 2 ** n_up
        self.encode = torch.nn.Sequential(torch.nn.Conv2d(label_nc + 3 * prev, c0, 3, padding=1),
                                          torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(c0, c0, 3, padding=1))
        self.blocks = torch.nn.ModuleList(
            SPADEResBlock(ch * 2 ** (n_up - i), ch * 2 ** (n_up - i - 1), label_nc, hidden) for i in range(n_up))
        self.to_rgb = torch.nn.Conv2d(ch, 3, 3, padding=1)
        self.to_flow = torch.nn.Conv2d(ch, 2, 3, padding=1)
        self.to_mask = torch.nn.Conv2d(ch, 1, 3, padding=1)
        with torch.no_grad():  # start as "no motion, mostly hallucinated": small flows, mask near 1
            self.to_flow.weight.mul_(0.1)
            self.to_flow.bias.zero_()
            self.to_mask.bias.fill_(2.0)

    def frame(self, seg: torch.Tensor, prev_frames: torch.Tensor):
        """One step: seg (n, label_nc, S, S), prev_frames (n, 3 * prev, S, S) -> (hallucinated, flow, mask)."""
        x = torch.cat([seg, prev_frames], 1)
        x = self.encode(F.adaptive_avg_pool2d(x, self.base))
        for blk in self.blocks:
            x = F.interpolate(blk(x, seg), scale_factor=2, mode="nearest")
        x = F.leaky_relu(x, 0.2)
        return (torch.tanh(self.to_rgb(x)), torch.tanh(self.to_flow(x)) * self.max_flow,
                torch.sigmoid(self.to_mask(x)))

    def forward(self, seg: torch.Tensor):
        n, frames, _, s, _ = seg.shape
        out, flows = [], []
        for t in range(frames):
            past = [out[t - k] if t - k >= 0 else seg.new_zeros(n, 3, s, s) for k in range(self.prev, 0, -1)]
            h, w, m = self.frame(seg[:, t], torch.cat(past, 1))
            if t == 0:
                x = h
            else:
                x = (1 - m) * warp(out[t - 1], w) + m * h
                flows.append(w)
            out.append(x)
        flows = torch.stack(flows, 1) if flows else seg.new_zeros(n, 0, 2, s, s)
        return torch.stack(out, 1), flows


def temporal_windows(x: torch.Tensor, k: int) -> torch.Tensor:
    """(n, T, C, H, W) -> (n * (T - k + 1), k * C, H, W): every run of k consecutive frames, stacked on channels."""
    n, t = x.shape[:2]
    win = x.unfold(1, k, 1)                                  # (n, T - k + 1, C, H, W, k)
    return win.permute(0, 1, 5, 2, 3, 4).reshape(n * (t - k + 1), k * x.shape[2], *x.shape[3:])


class TemporalDiscriminator(torch.nn.Module):
    """vid2vid's D_V: spade.py's PatchDiscriminator on `k` consecutive (map, frame) pairs stacked along channels,
    judging whether the frames move like real ones. forward(seg, video) -> logits (n * (T - k + 1), 1, h, w)."""

    def __init__(self, label_nc: int, k: int = 3, ch: int = 16):
        super().__init__()
        self.k = k
        self.net = PatchDiscriminator(label_nc * k, 3 * k, ch=ch)

    def forward(self, seg: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_windows(seg, self.k), temporal_windows(video, self.k))
