"""A HoloGAN-style generator (Nguyen-Phuoc et al. 2019): 2-D images from a learned 3-D feature volume, on vkernels'
public API, and a tiny synthetic multi-view data set (rendered 3-D shapes) that it trains on for a few steps.

    learned constant volume (C, 4, 4, 4)
      -> [conv3d, x2 trilinear upsampling + AdaIN(z) + lrelu]         one vkernels.upsample_norm_act on 5-D x each
      -> rigid 3-D transform (azimuth / elevation / scale, F.affine_grid + F.grid_sample on the volume)
      -> conv3d -> projection unit (depth folded into channels, 1x1 conv2d, lrelu)
      -> [x2 upsampling + AdaIN(z) + lrelu, conv2d]                    one vkernels.upsample_norm_act on 4-D x each
      -> RGB (tanh)
Each upsampling + AdaIN + activation is one fused call (`vkernels.nn.AdaIN`, 4-D or 5-D input), so the generator
never materialises the upsampled, un-normalised volume. The pose is an explicit input: the same z rendered at
several azimuths gives views of one object.

    python -m models.gan.hologan --steps 20       # synthetic rotating shapes, prints the losses
    python -m models.gan.train --arch hologan     # the GAN training entry (checkpoints, sample grids, --resume)
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import vkernels

__all__ = ["HoloGANGenerator", "HoloGANDiscriminator", "random_poses", "pose_matrices", "synthetic_views",
           "hologan_trainer", "train_example"]


def pose_matrices(azimuth, elevation, scale):
    """(N, 3, 4) affine_grid matrices of a rotation by azimuth (about the vertical axis) and elevation (about the
    horizontal one), in radians, and a uniform scale; the volume is sampled at R^T p / scale."""
    ca, sa, ce, se = azimuth.cos(), azimuth.sin(), elevation.cos(), elevation.sin()
    o, z = torch.ones_like(ca), torch.zeros_like(ca)
    # grid_sample's coordinates are (x, y, z) = (W, H, D).
    ry = torch.stack([torch.stack([ca, z, sa], -1), torch.stack([z, o, z], -1), torch.stack([-sa, z, ca], -1)], -2)
    rx = torch.stack([torch.stack([o, z, z], -1), torch.stack([z, ce, -se], -1), torch.stack([z, se, ce], -1)], -2)
    r = (rx @ ry) / scale[:, None, None]
    return torch.cat([r, torch.zeros_like(r[:, :, :1])], -1)


def random_poses(n, generator=None, device="cpu", elevation=0.35):
    """Azimuth uniform over the circle, elevation in [-elevation, elevation], scale in [0.9, 1.1]."""
    u = torch.rand(n, 3, generator=generator)
    return ((u[:, 0] * 2 - 1) * math.pi).to(device), ((u[:, 1] * 2 - 1) * elevation).to(device), \
        (0.9 + 0.2 * u[:, 2]).to(device)


class HoloGANGenerator(torch.nn.Module):
    """z (N, z_dim) and a pose (azimuth, elevation, scale: (N,) each) -> image (N, 3, res, res)."""

    def __init__(self, z_dim: int = 32, ch: int = 32, res: int = 16, vol: int = 8, img_channels: int = 3,
                 impl: str = "auto"):
        super().__init__()
        if vol < 8 or vol & (vol - 1) or res < vol or res & (res - 1):
            raise ValueError(f"HoloGANGenerator: vol and res must be powers of 2 with 8 <= vol <= res, got vol={vol}, "
                             f"res={res}")
        self.z_dim, self.vol = z_dim, vol
        n3 = int(math.log2(vol)) - 2  # 4^3 -> vol^3
        n2 = int(math.log2(res // vol))
        c3 = [max(ch // 2 ** i, 4) for i in range(n3 + 1)]
        self.const = torch.nn.Parameter(torch.randn(1, c3[0], 4, 4, 4))
        self.conv3 = torch.nn.ModuleList([torch.nn.Conv3d(c3[i], c3[i + 1], 3, padding=1) for i in range(n3)])
        # AdaIN: style -> (1 + scale, bias) per channel, fused with the x2 trilinear upsampling and the activation.
        self.ada3 = torch.nn.ModuleList([vkernels.nn.AdaIN(c3[i + 1], z_dim, scale=2, mode="trilinear", act="lrelu",
                                                           impl=impl) for i in range(n3)])
        c = c3[-1]
        self.post3 = torch.nn.Conv3d(c, c, 3, padding=1)
        self.project = torch.nn.Conv2d(c * vol, ch, 1)
        c2 = [max(ch // 2 ** i, 4) for i in range(n2 + 1)]
        self.ada2 = torch.nn.ModuleList([vkernels.nn.AdaIN(c2[i], z_dim, scale=2, mode="bilinear", act="lrelu",
                                                           impl=impl) for i in range(n2)])
        self.conv2 = torch.nn.ModuleList([torch.nn.Conv2d(c2[i], c2[i + 1], 3, padding=1) for i in range(n2)])
        self.to_rgb = torch.nn.Conv2d(c2[-1], img_channels, 3, padding=1)

    def forward(self, z, azimuth, elevation, scale):
        n = z.shape[0]
        h = self.const.expand(n, -1, -1, -1, -1)
        for conv, ada in zip(self.conv3, self.ada3):
            h = ada(conv(h), z)  # (N, C, D, H, W): conv3d, then x2 trilinear + AdaIN + lrelu in one call
        theta = pose_matrices(azimuth, elevation, scale).to(h.dtype)
        grid = F.affine_grid(theta, list(h.shape), align_corners=False)
        h = F.grid_sample(h, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        h = F.leaky_relu(self.post3(h), 0.2)
        h = F.leaky_relu(self.project(h.flatten(1, 2)), 0.2)  # projection unit: (C, D) -> channels
        for ada, conv in zip(self.ada2, self.conv2):
            h = conv(ada(h, z))
        return torch.tanh(self.to_rgb(F.leaky_relu(h, 0.2)))


class HoloGANDiscriminator(torch.nn.Module):
    """image (N, 3, res, res) -> logit (N,): strided convs with leaky ReLU (HoloGAN's D without its style and latent
    heads)."""

    def __init__(self, ch: int = 32, res: int = 16, img_channels: int = 3):
        super().__init__()
        layers, c = [torch.nn.Conv2d(img_channels, ch, 3, padding=1), torch.nn.LeakyReLU(0.2)], ch
        for _ in range(int(math.log2(res)) - 2):  # down to 4x4
            layers += [torch.nn.Conv2d(c, min(2 * c, 4 * ch), 4, stride=2, padding=1), torch.nn.LeakyReLU(0.2)]
            c = min(2 * c, 4 * ch)
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(c * 16, 1)

    def forward(self, img):
        return self.head(self.body(img).flatten(1)).squeeze(1)


def _shape_volume(n, size, generator):
    """(n, 4, size, size, size) RGB + density volumes of random objects: an ellipsoid with a smaller box attached
    off-centre (so that views differ with the azimuth), each part in its own random colour."""
    g = torch.linspace(-1, 1, size)
    zz, yy, xx = torch.meshgrid(g, g, g, indexing="ij")
    u = torch.rand(n, 12, generator=generator)
    ax = (0.35 + 0.3 * u[:, :3])[:, :, None, None, None]
    ell = ((xx / ax[:, 0]) ** 2 + (yy / ax[:, 1]) ** 2 + (zz / ax[:, 2]) ** 2 <= 1).float()
    cx = (0.3 + 0.3 * u[:, 3])[:, None, None, None]
    half = (0.15 + 0.15 * u[:, 4])[:, None, None, None]
    box = ((xx - cx).abs() <= half) & ((yy + 0.2).abs() <= half) & (zz.abs() <= half)
    box = box.float() * (1 - ell)
    c1 = u[:, 5:8][:, :, None, None, None] * 2 - 1
    c2 = u[:, 8:11][:, :, None, None, None] * 2 - 1
    rgb = c1 * ell[:, None] + c2 * box[:, None]
    return torch.cat([rgb, (ell + box)[:, None]], 1)


def synthetic_views(n, res, generator=None, poses=None):
    """n images (n, 3, res, res) in [-1, 1] of random 3-D shapes, each rendered at a random pose (random_poses):
    the volume is rotated with the same affine_grid / grid_sample as the generator and composited front to back
    along the depth axis (alpha from the density) on a grey background."""
    vol = _shape_volume(n, res, generator)
    az, el, sc = random_poses(n, generator) if poses is None else poses
    grid = F.affine_grid(pose_matrices(az, el, sc), list(vol.shape), align_corners=False)
    v = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    alpha = v[:, 3:].clamp(0, 1) * 0.6
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha[:, :, :-1]], 2), 2)
    w = alpha * trans
    img = (w * v[:, :3]).sum(2) + (1 - w.sum(2)) * 0.0
    return img.clamp(-1, 1)


def hologan_trainer(args, run):
    """The `python -m models.gan.train --arch hologan` trainer: HoloGANGenerator vs HoloGANDiscriminator on
    synthetic_views (the global RNG draws the global batch and the poses, each rank keeps its part), non-saturating
    logistic loss, sample grids of fixed z at 8 azimuths. --data is not used."""
    from models.gan.train import Trainer  # here: train imports this module

    class HoloGANTrainer(Trainer):
        desc = "hologan"

        def __init__(self, args, run):
            super().__init__(args, run)
            ch = max(4, args.channels // 2)
            self.G = HoloGANGenerator(z_dim=args.z_dim, ch=ch, res=args.res, vol=8).to(run.device)
            self.D = HoloGANDiscriminator(ch=ch, res=args.res).to(run.device)
            self.opts["G"] = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.0, 0.999))
            self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(0.0, 0.999))
            self.modules.update(G=self.G, D=self.D)
            g = torch.Generator().manual_seed(123)
            z = torch.randn(4, args.z_dim, generator=g).repeat_interleave(8, 0)
            az = torch.linspace(-math.pi, math.pi, 9)[:8].repeat(4)
            self.fixed = (z.to(run.device), az.to(run.device), torch.zeros(32, device=run.device),
                          torch.ones(32, device=run.device))

        def _latents(self):
            n = self.args.batch_size * self.run.world
            z = torch.randn(n, self.args.z_dim)
            return [self._rank_slice(t).to(self.run.device) for t in (z, *random_poses(n))]

        def train_step(self):
            G, D, a = self.G, self.D, self.args
            real = self._rank_slice(synthetic_views(a.batch_size * self.run.world, a.res)).to(self.run.device)
            G.requires_grad_(False)
            D.requires_grad_(True)
            with torch.no_grad():
                fake = G(*self._latents())
            loss_D = F.softplus(D(fake)).mean() + F.softplus(-D(real)).mean()
            self._opt_step("D", D, loss_D)
            G.requires_grad_(True)
            D.requires_grad_(False)
            loss_G = F.softplus(-D(G(*self._latents()))).mean()
            self._opt_step("G", G, loss_G)
            self.step += 1
            return {"loss_G": loss_G.item(), "loss_D": loss_D.item()}

        def sample_grid(self, path):
            from models import _common as C
            with torch.no_grad():
                img = self.G(*self.fixed)
            C.save_image_grid(img, path, nrow=8)  # a row per z, a column per azimuth

    return HoloGANTrainer(args, run)


def train_example(steps=20, res=16, batch=8, ch=16, impl="auto", seed=0, lr=2e-4, log=print):
    """A few non-saturating GAN steps on synthetic_views; returns the (loss_G, loss_D) per step."""
    torch.manual_seed(seed)
    G = HoloGANGenerator(z_dim=32, ch=ch, res=res, vol=8, impl=impl)
    D = HoloGANDiscriminator(ch=ch, res=res)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.999))
    losses = []
    for step in range(steps):
        real = synthetic_views(batch, res)
        z = torch.randn(batch, 32)
        pose = random_poses(batch)
        with torch.no_grad():
            fake = G(z, *pose)
        loss_d = F.softplus(D(fake)).mean() + F.softplus(-D(real)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        z = torch.randn(batch, 32)
        loss_g = F.softplus(-D(G(z, *random_poses(batch)))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        losses.append((loss_g.item(), loss_d.item()))
        if log is not None and (step % 5 == 0 or step == steps - 1):
            log(f"step {step}: loss_G {loss_g.item():.4f} loss_D {loss_d.item():.4f}")
    return losses


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.gan.hologan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--res", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--impl", default="auto")
    a = p.parse_args(argv)
    t = time.time()
    train_example(a.steps, a.res, a.batch_size, a.channels, a.impl)
    print(f"{(time.time() - t) / max(a.steps, 1):.3f} s/iter")


if __name__ == "__main__":
    main()
