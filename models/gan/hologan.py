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

The discriminator carries HoloGAN's two training devices: style discriminators on each layer's feature mean / std
(its instance norm + lrelu is one fused upsample_norm_act call at scale 1) and a z head (the identity regulariser).
Two measures say whether the model does what it is for: latent_recovery (can z be read back from G's images?) and
pose_consistency (a pose probe trained on real views, whose poses are known, reads G's images of one z at 8
azimuths: do they turn as asked?).

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

__all__ = ["HoloGANGenerator", "HoloGANDiscriminator", "d_losses", "g_losses", "random_poses", "pose_matrices",
           "synthetic_views", "PoseProbe", "train_pose_probe", "rotation_agreement", "pose_consistency",
           "pose_consistency_real", "latent_recovery", "hologan_trainer", "train_example"]


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
    """HoloGAN's discriminator: image (N, 3, res, res) -> (logit (N,), style logits (N, L), z estimate (N, z_dim)).

    A conv stem, then L strided convs down to 4x4, each followed by instance norm + lrelu (one fused
    vkernels.upsample_norm_act call at scale 1). Before each norm, the per-channel mean and std over (H, W) -- the
    layer's "style" -- go to a linear style discriminator of their own (HoloGAN's style discriminators: real and
    fake images must agree in their feature statistics at every scale). The latent head regresses z from the last
    features (HoloGAN's identity regulariser: G must keep z recoverable from its image, so it cannot ignore z)."""

    def __init__(self, ch: int = 32, res: int = 16, img_channels: int = 3, z_dim: int = 32, impl: str = "auto"):
        super().__init__()
        self.stem = torch.nn.Conv2d(img_channels, ch, 3, padding=1)
        self.down, self.norms, self.styles, c = torch.nn.ModuleList(), torch.nn.ModuleList(), torch.nn.ModuleList(), ch
        for _ in range(int(math.log2(res)) - 2):  # down to 4x4
            c_out = min(2 * c, 4 * ch)
            self.down.append(torch.nn.Conv2d(c, c_out, 4, stride=2, padding=1))
            self.norms.append(vkernels.nn.UpsampleNormAct(c_out, scale=1, norm="instance", act="lrelu", impl=impl))
            self.styles.append(torch.nn.Linear(2 * c_out, 1))
            c = c_out
        self.head = torch.nn.Linear(c * 16, 1)
        self.latent = torch.nn.Sequential(torch.nn.Linear(c * 16, 4 * z_dim), torch.nn.LeakyReLU(0.2),
                                          torch.nn.Linear(4 * z_dim, z_dim))

    def forward(self, img):
        h = F.leaky_relu(self.stem(img), 0.2)
        styles = []
        for conv, norm, style in zip(self.down, self.norms, self.styles):
            h = conv(h)
            std, mean = torch.std_mean(h, dim=(2, 3))
            styles.append(style(torch.cat([mean, std], 1)))
            h = norm(h)
        h = h.flatten(1)
        return self.head(h).squeeze(1), torch.cat(styles, 1), self.latent(h)


def d_losses(D, real, fake, z):
    """The discriminator's terms on a real and a (detached) fake batch made from z: (adversarial, style, latent).
    Non-saturating logistic loss on the image logit and on each layer's style logit (summed over layers, as
    HoloGAN), squared error of the z estimate on the fakes (HoloGAN trains the z head with D and G alike)."""
    lr, sr, _ = D(real)
    lf, sf, zf = D(fake)
    adv = F.softplus(lf).mean() + F.softplus(-lr).mean()
    style = F.softplus(sf).mean(0).sum() + F.softplus(-sr).mean(0).sum()
    return adv, style, (zf - z).square().mean()


def g_losses(D, fake, z):
    """The generator's terms on a fake batch made from z: (adversarial, style, latent)."""
    lf, sf, zf = D(fake)
    return F.softplus(-lf).mean(), F.softplus(-sf).mean(0).sum(), (zf - z).square().mean()


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


# ---- metrics: is z recoverable from G's images, and does G's pose input rotate what it draws?
POSE_BINS = 8


class PoseProbe(torch.nn.Module):
    """image (N, 3, res, res) -> logits over POSE_BINS azimuth bins of width 2 pi / POSE_BINS, starting at -pi.
    Trained on synthetic_views, whose poses are known, then only applied to G's images."""

    def __init__(self, res: int = 16, ch: int = 32, img_channels: int = 3):
        super().__init__()
        layers, c = [torch.nn.Conv2d(img_channels, ch, 3, padding=1), torch.nn.ReLU()], ch
        for _ in range(int(math.log2(res)) - 2):
            layers += [torch.nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), torch.nn.ReLU()]
            c *= 2
        self.body = torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(c * 16, POSE_BINS))

    def forward(self, img):
        return self.body(img)

    def azimuth(self, img):
        """The predicted azimuth (N,) in radians: the circular mean of the bin centres under the softmax."""
        p = self(img).softmax(1)
        centres = -math.pi + (torch.arange(POSE_BINS, device=img.device) + 0.5) * (2 * math.pi / POSE_BINS)
        return torch.atan2(p @ centres.sin(), p @ centres.cos())


def train_pose_probe(res, steps=600, batch=64, seed=0, lr=1e-3, device="cpu", n_test=512):
    """A PoseProbe trained on fresh synthetic_views (random shapes and poses from a private generator, so the
    global RNG stream is left alone). Returns (probe in eval mode, bin accuracy on n_test new views)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = PoseProbe(res).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)

    def views(n):
        pose = random_poses(n, g)
        bins = ((pose[0] + math.pi) * (POSE_BINS / (2 * math.pi))).long().clamp(0, POSE_BINS - 1)
        return synthetic_views(n, res, g, poses=pose).to(device), bins.to(device)

    for _ in range(steps):
        x, b = views(batch)
        loss = F.cross_entropy(probe(x), b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    probe.eval()
    x, b = views(n_test)
    with torch.no_grad():
        acc = (probe(x).argmax(1) == b).float().mean().item()
    return probe, acc


def _wrap(a):
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def rotation_agreement(pred, requested, tol=math.pi / POSE_BINS):
    """How well predicted azimuths (n_objects, n_views) turn with the requested ones, over every pair of views of
    an object: (fraction of pairs whose predicted turn is within tol of the requested turn, mean |error| in
    degrees). Only turns count, not absolute azimuths: G picks its own frontal view per object. Uniformly random
    predictions score tol / pi (0.125 at 8 bins) and 90 degrees; images that do not change with the pose, 0."""
    j, k = torch.triu_indices(pred.shape[1], pred.shape[1], 1)
    err = _wrap((pred[:, k] - pred[:, j]) - (requested[:, k] - requested[:, j])).abs()
    return (err <= tol).float().mean().item(), math.degrees(err.mean().item())


def _turntable(n, views, generator):
    """Per object a random start azimuth and `views` evenly spaced turns of it, elevation 0, scale 1: (n, views)."""
    start = (torch.rand(n, 1, generator=generator) * 2 - 1) * math.pi
    return _wrap(start + torch.arange(views) * (2 * math.pi / views))


@torch.no_grad()
def pose_consistency(G, probe, n=64, views=8, seed=7, batch=128):
    """rotation_agreement of the probe's azimuths on n random z's, each rendered by G at `views` turns."""
    g = torch.Generator().manual_seed(seed)
    dev = next(G.parameters()).device
    z = torch.randn(n, G.z_dim, generator=g).repeat_interleave(views, 0).to(dev)
    az = _turntable(n, views, g)
    flat = az.flatten().to(dev)
    pred = torch.cat([probe.azimuth(G(z[i:i + batch], flat[i:i + batch], torch.zeros_like(flat[i:i + batch]),
                                      torch.ones_like(flat[i:i + batch]))) for i in range(0, n * views, batch)])
    return rotation_agreement(pred.view(n, views).cpu(), az)


@torch.no_grad()
def pose_consistency_real(probe, res, n=64, views=8, seed=7):
    """rotation_agreement on synthetic_views of n random shapes, each rendered at `views` turns: what the probe
    reads from views whose rotation is exact (the ceiling for G)."""
    g = torch.Generator().manual_seed(seed)
    az = _turntable(n, views, g)
    shape_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    dev = next(probe.parameters()).device
    pred = torch.stack([probe.azimuth(synthetic_views(n, res, torch.Generator().manual_seed(shape_seed),
                                                      poses=(az[:, k], torch.zeros(n), torch.ones(n))).to(dev))
                        for k in range(views)], 1)
    return rotation_agreement(pred.cpu(), az)


@torch.no_grad()
def latent_recovery(G, D, n=256, seed=7, batch=128):
    """Mean squared error of D's z estimate on G's images of n random z's at random poses (1.0 = estimating 0)."""
    g = torch.Generator().manual_seed(seed)
    dev = next(G.parameters()).device
    z = torch.randn(n, G.z_dim, generator=g)
    pose = random_poses(n, g)
    err = 0.0
    for i in range(0, n, batch):
        zi = z[i:i + batch].to(dev)
        err += (D(G(zi, *(p[i:i + batch].to(dev) for p in pose)))[2] - zi).square().sum().item()
    return err / z.numel()


def hologan_trainer(args, run):
    """The `python -m models.gan.train --arch hologan` trainer: HoloGANGenerator vs HoloGANDiscriminator on
    synthetic_views (the global RNG draws the global batch and the poses, each rank keeps its part). Both nets'
    losses: non-saturating logistic + --style-weight * the style discriminators' + --latent-weight * the z
    reconstruction error. evaluate(): latent_recovery and pose_consistency (its probe trained once, --probe-steps).
    Sample grids of fixed z at 8 azimuths. --data is not used."""
    from models.gan.train import Trainer  # here: train imports this module

    class HoloGANTrainer(Trainer):
        desc = "hologan"

        def __init__(self, args, run):
            super().__init__(args, run)
            ch = max(4, args.channels // 2)
            self.G = HoloGANGenerator(z_dim=args.z_dim, ch=ch, res=args.res, vol=8).to(run.device)
            self.D = HoloGANDiscriminator(ch=ch, res=args.res, z_dim=args.z_dim).to(run.device)
            self.opts["G"] = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.0, 0.999))
            self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(0.0, 0.999))
            self.modules.update(G=self.G, D=self.D)
            g = torch.Generator().manual_seed(123)
            z = torch.randn(4, args.z_dim, generator=g).repeat_interleave(8, 0)
            az = torch.linspace(-math.pi, math.pi, 9)[:8].repeat(4)
            self.fixed = (z.to(run.device), az.to(run.device), torch.zeros(32, device=run.device),
                          torch.ones(32, device=run.device))
            self.probe = None

        def _latents(self):
            n = self.args.batch_size * self.run.world
            z = torch.randn(n, self.args.z_dim)
            return [self._rank_slice(t).to(self.run.device) for t in (z, *random_poses(n))]

        def train_step(self):
            G, D, a = self.G, self.D, self.args
            real = self._rank_slice(synthetic_views(a.batch_size * self.run.world, a.res)).to(self.run.device)
            G.requires_grad_(False)
            D.requires_grad_(True)
            latents = self._latents()
            with torch.no_grad():
                fake = G(*latents)
            adv_D, style_D, latent_D = d_losses(D, real, fake, latents[0])
            self._opt_step("D", D, adv_D + a.style_weight * style_D + a.latent_weight * latent_D)
            G.requires_grad_(True)
            D.requires_grad_(False)
            latents = self._latents()
            adv_G, style_G, latent_G = g_losses(D, G(*latents), latents[0])
            self._opt_step("G", G, adv_G + a.style_weight * style_G + a.latent_weight * latent_G)
            self.step += 1
            return {"loss_G": adv_G.item(), "loss_D": adv_D.item(), "style_G": style_G.item(),
                    "style_D": style_D.item(), "latent": latent_G.item()}

        def evaluate(self):
            """z_mse: latent_recovery (1.0 = estimating 0); rot_agree / rot_err: pose_consistency (chance
            1 / POSE_BINS and 90 degrees), rot_agree_real: the same on real views; probe_acc: the pose probe's
            held-out bin accuracy (chance 1 / POSE_BINS)."""
            n = self.args.eval_objects
            if self.probe is None:
                self.probe, self.probe_acc = train_pose_probe(self.args.res, self.args.probe_steps,
                                                              device=self.run.device, n_test=8 * n)
                self.real_agree = pose_consistency_real(self.probe, self.args.res, n)[0]
            agree, err = pose_consistency(self.G, self.probe, n)
            return {"z_mse": latent_recovery(self.G, self.D, 4 * n), "rot_agree": agree, "rot_err": err,
                    "rot_agree_real": self.real_agree, "probe_acc": self.probe_acc}

        def sample_grid(self, path):
            from models import _common as C
            with torch.no_grad():
                img = self.G(*self.fixed)
            C.save_image_grid(img, path, nrow=8)  # a row per z, a column per azimuth

    return HoloGANTrainer(args, run)


def train_example(steps=20, res=16, batch=8, ch=16, z_dim=32, impl="auto", seed=0, lr=2e-4, style_weight=1.0,
                  latent_weight=1.0, log=print):
    """A few GAN steps on synthetic_views with the trainer's losses; returns (loss_G, loss_D, latent) per step."""
    torch.manual_seed(seed)
    G = HoloGANGenerator(z_dim=z_dim, ch=ch, res=res, vol=8, impl=impl)
    D = HoloGANDiscriminator(ch=ch, res=res, z_dim=z_dim, impl=impl)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.999))
    losses = []
    for step in range(steps):
        real = synthetic_views(batch, res)
        z, pose = torch.randn(batch, z_dim), random_poses(batch)
        with torch.no_grad():
            fake = G(z, *pose)
        adv, style, latent = d_losses(D, real, fake, z)
        opt_d.zero_grad(set_to_none=True)
        (adv + style_weight * style + latent_weight * latent).backward()
        opt_d.step()
        loss_d = adv.item()
        z = torch.randn(batch, z_dim)
        adv, style, latent = g_losses(D, G(z, *random_poses(batch)), z)
        opt_g.zero_grad(set_to_none=True)
        (adv + style_weight * style + latent_weight * latent).backward()
        opt_g.step()
        losses.append((adv.item(), loss_d, latent.item()))
        if log is not None and (step % 5 == 0 or step == steps - 1):
            log(f"step {step}: loss_G {adv.item():.4f} loss_D {loss_d:.4f} latent {latent.item():.4f}")
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
    train_example(a.steps, a.res, a.batch_size, a.channels, impl=a.impl)
    print(f"{(time.time() - t) / max(a.steps, 1):.3f} s/iter")


if __name__ == "__main__":
    main()
