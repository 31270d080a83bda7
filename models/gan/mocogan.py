"""Image -> video in the manner of MoCoGAN (Tulyakov et al. 2018, "MoCoGAN: Decomposing Motion and Content for Video
Generation") on vkernels' public API.

A clip's latent is a content code z_C, fixed for the clip, and a motion code z_M(t) per frame from a GRU driven by
fresh noise each frame. Every frame [z_C, z_M(t)] goes through a StyleGAN2 image generator (models/gan/stylegan2.py:
pixel_norm mapping, ModulatedConv2d synthesis, FIR toRGB skips through upfirdn2d, bias_act). Two discriminators:
MoCoGAN's image D on single frames (stylegan2.py's residual D: upfirdn2d down-sampling, bias_act) and a video D of
3-D convolutions whose bias + leaky ReLU are vkernels.bias_act calls. Non-saturating logistic loss for both.
"""
from __future__ import annotations

import math

import torch

import vkernels
from models.gan.stylegan2 import Discriminator, Generator

__all__ = ["MotionRNN", "VideoGenerator", "VideoDiscriminator", "image_discriminator", "random_frames"]


class MotionRNN(torch.nn.Module):
    """z_M(1..T): a GRU cell stepped over noise eps_t ~ N(0, I), from a random initial state (MoCoGAN's R_M).
    forward(n, frames) -> (n, frames, motion_dim); the noise comes from torch's global RNG."""

    def __init__(self, motion_dim: int = 8, noise_dim: int = 8):
        super().__init__()
        self.motion_dim, self.noise_dim = motion_dim, noise_dim
        self.cell = torch.nn.GRUCell(noise_dim, motion_dim)

    def forward(self, n: int, frames: int, device=None) -> torch.Tensor:
        device, dtype = device or self.cell.weight_ih.device, self.cell.weight_ih.dtype
        h = torch.randn(n, self.motion_dim, device=device, dtype=dtype)
        eps = torch.randn(frames, n, self.noise_dim, device=device, dtype=dtype)
        out = []
        for t in range(frames):
            h = self.cell(eps[t], h)
            out.append(h)
        return torch.stack(out, 1)


class VideoGenerator(torch.nn.Module):
    """(z_C (n, content_dim), frames) -> clip (n, frames, img_channels, resolution, resolution).

    The image generator is stylegan2.Generator with z = [z_C, z_M(t)], run on all n * frames frames at once."""

    def __init__(self, content_dim: int = 32, motion_dim: int = 8, resolution: int = 16, img_channels: int = 3,
                 channel_base: int = 1024, channel_max: int = 64):
        super().__init__()
        self.content_dim, self.motion_dim = content_dim, motion_dim
        self.motion = MotionRNN(motion_dim, motion_dim)
        z_dim = content_dim + motion_dim
        self.image = Generator(z_dim=z_dim, w_dim=z_dim, resolution=resolution, img_channels=img_channels,
                               channel_base=channel_base, channel_max=channel_max)

    def forward(self, z_content: torch.Tensor, frames: int, noise_mode: str = "random") -> torch.Tensor:
        n = z_content.shape[0]
        z_m = self.motion(n, frames, z_content.device)
        z = torch.cat([z_content[:, None].expand(-1, frames, -1), z_m], 2).flatten(0, 1)
        img = self.image(z, noise_mode=noise_mode)
        return img.unflatten(0, (n, frames))


class Conv3dLayer(torch.nn.Module):
    """Conv3d (equalized learning rate, no bias) -> vkernels.bias_act(bias, lrelu, gain sqrt(2)) along channels."""

    def __init__(self, in_ch, out_ch, kernel=(3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_ch, in_ch, *kernel))
        self.bias = torch.nn.Parameter(torch.zeros(out_ch))
        self.weight_gain = 1 / math.sqrt(in_ch * math.prod(kernel))
        self.stride, self.padding = stride, padding

    def forward(self, x):
        x = torch.nn.functional.conv3d(x, self.weight * self.weight_gain, stride=self.stride, padding=self.padding)
        return vkernels.bias_act(x, self.bias, dim=1, act="lrelu")


class VideoDiscriminator(torch.nn.Module):
    """MoCoGAN's D_V: clip (n, T, C, H, W) -> logit (n, 1). 3-D convolutions halving H and W down to 4x4 (time kept),
    each followed by bias_act, then the mean over (T, H, W) and a linear layer. With cond_dim > 0, forward takes a
    condition c (n, cond_dim) and adds the projection <P c, h> to the logit (Miyato & Koyama 2018)."""

    def __init__(self, img_channels: int = 3, resolution: int = 16, ch: int = 16, channel_max: int = 64,
                 cond_dim: int = 0):
        super().__init__()
        n_down = int(math.log2(resolution)) - 2
        chs = [img_channels] + [min(ch * 2 ** i, channel_max) for i in range(n_down)]
        self.layers = torch.nn.ModuleList(Conv3dLayer(chs[i], chs[i + 1]) for i in range(n_down))
        self.out = torch.nn.Linear(chs[-1], 1)
        self.proj = torch.nn.Linear(cond_dim, chs[-1], bias=False) if cond_dim else None

    def forward(self, video: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = video.transpose(1, 2)                                   # (n, C, T, H, W)
        for layer in self.layers:
            x = layer(x)
        h = x.mean((2, 3, 4))
        logit = self.out(h)
        if self.proj is not None:
            if cond is None:
                raise ValueError("VideoDiscriminator: built with cond_dim > 0, so forward needs cond (n, cond_dim)")
            logit = logit + (self.proj(cond) * h).sum(1, keepdim=True)
        return logit


def random_frames(video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random frame per clip: (n, T, C, H, W) -> (n, C, H, W) (the input of MoCoGAN's image discriminator)."""
    n, t = video.shape[:2]
    idx = torch.randint(0, t, (n,), generator=generator).to(video.device)
    return video[torch.arange(n, device=video.device), idx]


def image_discriminator(resolution: int, img_channels: int = 3, channel_base: int = 1024,
                        channel_max: int = 64) -> Discriminator:
    """MoCoGAN's D_I: stylegan2.py's residual discriminator on single frames."""
    return Discriminator(resolution=resolution, img_channels=img_channels, channel_base=channel_base,
                         channel_max=channel_max)
