"""Trainers of the video and text-conditioned archs of `python -m models.gan.train`: mocogan (image -> video),
vid2vid (video -> video), text2image and text2video. train.py's loop (progress bar, samples, checkpoints, --resume,
report) runs them like its own archs; train.py imports this module when one of these archs is asked for, since these
classes subclass its Trainer.

Data are made in code each step from torch's global RNG (models/gan/video_data.py), which checkpoints save: a resumed
run draws the same clips. Sample grids: one clip per row, one frame per column.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models import _common as C
from models.gan.biggan import hinge_d_loss, hinge_g_loss
from models.gan.mocogan import VideoDiscriminator, VideoGenerator, image_discriminator, random_frames
from models.gan.spade import PatchDiscriminator
from models.gan.stylegan2 import make_ema, r1_penalty, update_ema
from models.gan.textgan import (TextImageDiscriminator, TextImageGenerator, TextVideoDiscriminator,
                                TextVideoGenerator, matching_hinge_d_loss)
from models.gan.train import Trainer
from models.gan.vid2vid import TemporalDiscriminator, Vid2VidGenerator, warp
from models.gan.video_data import COLOURS, MOTIONS, SHAPES, captions, moving_shapes, semantic_videos


def _sample(module, fn):
    """Samples in eval mode (batch norm on its running statistics) from a fixed RNG state, leaving the training
    state and the global RNG stream (saved in checkpoints) as they were."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            return fn()
    finally:
        module.train(was)


def _freeze(train: torch.nn.Module, frozen: torch.nn.Module):
    train.requires_grad_(True)
    frozen.requires_grad_(False)


class _VideoTrainer(Trainer):
    def _z(self):
        """This rank's part of the global batch's latents (as the biggan arch): ranks generate different clips.
        The per-frame noise inside G (motion GRU, StyleGAN noise) comes from the global RNG, alike on every rank."""
        a = self.args
        return self._rank_slice(torch.randn(a.batch_size * self.run.world, a.z_dim)).to(self.run.device)


class MoCoGANTrainer(_VideoTrainer):
    """Non-saturating logistic loss for the image and the video discriminator, lazy R1 on the image D's real frames
    every --r1-every steps, EMA generator for samples (as the stylegan2 arch)."""

    desc = "mocogan"

    def __init__(self, args, run):
        super().__init__(args, run)
        kw = dict(resolution=args.res, img_channels=3, channel_base=args.channel_base)
        self.G = VideoGenerator(args.z_dim, args.motion_dim, channel_max=args.channels, **kw).to(run.device)
        self.D = torch.nn.ModuleDict({
            "image": image_discriminator(channel_max=args.channels, **kw),
            "video": VideoDiscriminator(3, args.res, ch=max(1, args.channels // 4), channel_max=args.channels),
        }).to(run.device)
        self.G_ema = make_ema(self.G)
        cd = args.r1_every / (args.r1_every + 1)
        self.opts["G"] = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
        self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=args.lr * cd, betas=(0.0, 0.99 ** cd), eps=1e-8)
        self.modules.update(G=self.G, D=self.D, G_ema=self.G_ema)
        self.fixed_z = torch.randn(8, args.z_dim, generator=torch.Generator().manual_seed(123)).to(run.device)
        self.last_r1 = float("nan")

    def batch(self):
        video, _ = moving_shapes(self.args.batch_size * self.run.world, self.args.frames, self.args.res)
        return self._rank_slice(video).to(self.run.device)

    def train_step(self):
        a, G, D = self.args, self.G, self.D
        real = self.batch()
        _freeze(G, D)
        fake = G(self._z(), a.frames)
        loss_G = F.softplus(-D["image"](random_frames(fake))).mean() + F.softplus(-D["video"](fake)).mean()
        self._opt_step("G", G, loss_G)
        _freeze(D, G)
        with torch.no_grad():
            fake = G(self._z(), a.frames)
        real_frames = random_frames(real)
        do_r1 = a.r1_gamma > 0 and self.step % a.r1_every == 0
        if do_r1:
            pen, real_logits = r1_penalty(D["image"], real_frames)
            r1 = pen.mean() * (a.r1_gamma / 2) * a.r1_every
        else:
            real_logits, r1 = D["image"](real_frames), torch.zeros((), device=real.device)
        loss_img = F.softplus(D["image"](random_frames(fake))).mean() + F.softplus(-real_logits).mean()
        loss_vid = F.softplus(D["video"](fake)).mean() + F.softplus(-D["video"](real)).mean()
        self._opt_step("D", D, loss_img + loss_vid + r1)
        update_ema(self.G_ema, G, a.ema_beta)
        if do_r1:
            self.last_r1 = r1.item()
        self.step += 1
        return {"loss_G": loss_G.item(), "loss_D_img": loss_img.item(), "loss_D_vid": loss_vid.item(),
                "r1": self.last_r1}

    def sample_grid(self, path):
        clips = _sample(self.G_ema, lambda: self.G_ema(self.fixed_z, self.args.frames, noise_mode="const"))
        C.save_image_grid(clips.flatten(0, 1), path, nrow=self.args.frames)


class Vid2VidTrainer(_VideoTrainer):
    """Hinge loss for the per-frame and the temporal discriminator; G adds --l1-weight * L1 to the target clip and
    --flow-weight * the warp loss |warp(real_{t-1}, flow_t) - real_t| (vid2vid supervises its flow with optical flow
    of the real clip; a synthetic clip has none, so the warp error of the real frames stands in)."""

    desc = "vid2vid"

    def __init__(self, args, run):
        super().__init__(args, run)
        ch = max(1, args.channels // 2)
        n_up = max(1, int(math.log2(args.res)) - 3)
        self.G = Vid2VidGenerator(args.label_nc, size=args.res, ch=ch, n_up=n_up, hidden=ch).to(run.device)
        self.D = torch.nn.ModuleDict({
            "image": PatchDiscriminator(args.label_nc, 3, ch=ch),
            "temporal": TemporalDiscriminator(args.label_nc, k=min(3, args.frames), ch=ch),
        }).to(run.device)
        self.opts["G"] = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.0, 0.999))
        self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(0.0, 0.999))
        self.modules.update(G=self.G, D=self.D)
        seg, img = semantic_videos(4, args.frames, args.res, args.label_nc, torch.Generator().manual_seed(123))
        self.fixed = (seg.to(run.device), img.to(run.device))

    def batch(self):
        seg, img = semantic_videos(self.args.batch_size * self.run.world, self.args.frames, self.args.res,
                                   self.args.label_nc)
        return self._rank_slice(seg).to(self.run.device), self._rank_slice(img).to(self.run.device)

    def train_step(self):
        a, G, D = self.args, self.G, self.D
        seg, img = self.batch()
        _freeze(D, G)
        with torch.no_grad():
            fake, _ = G(seg)
        seg1, img1 = seg.flatten(0, 1), img.flatten(0, 1)
        loss_img = hinge_d_loss(D["image"](seg1, img1), D["image"](seg1, fake.flatten(0, 1)))
        loss_tmp = hinge_d_loss(D["temporal"](seg, img), D["temporal"](seg, fake))
        self._opt_step("D", D, loss_img + loss_tmp)
        _freeze(G, D)
        fake, flows = G(seg)
        adv = hinge_g_loss(D["image"](seg1, fake.flatten(0, 1))) + hinge_g_loss(D["temporal"](seg, fake))
        l1 = F.l1_loss(fake, img)
        warped = warp(img[:, :-1].flatten(0, 1), flows.flatten(0, 1))
        warp_l1 = F.l1_loss(warped, img[:, 1:].flatten(0, 1))
        self._opt_step("G", G, adv + a.l1_weight * l1 + a.flow_weight * warp_l1)
        self.step += 1
        return {"loss_G": adv.item(), "loss_D_img": loss_img.item(), "loss_D_tmp": loss_tmp.item(),
                "l1": l1.item(), "warp": warp_l1.item()}

    def sample_grid(self, path):
        seg, img = self.fixed
        fake, _ = _sample(self.G, lambda: self.G(seg))
        # Per clip: the target row, then the generated row.
        C.save_image_grid(torch.stack([img, fake], 1).flatten(0, 2), path, nrow=self.args.frames)


def _caption_grid(motion: bool, n_rows: int):
    """Every (colour, shape[, motion]) caption once per row of the grid, as token ids."""
    grid = torch.cartesian_prod(torch.arange(len(COLOURS)), torch.arange(len(SHAPES)),
                                torch.arange(len(MOTIONS) if motion else 1))
    tokens = captions(grid[:, 1], grid[:, 0], grid[:, 2] if motion else None)
    return tokens.repeat(n_rows, 1)


class Text2ImageTrainer(_VideoTrainer):
    """Captions "a <colour> <shape>" -> the first frame of a moving-shapes clip. Hinge loss, matching-aware D."""

    desc = "text2image"

    def __init__(self, args, run):
        super().__init__(args, run)
        kw = dict(resolution=args.res, ch=args.channels, img_channels=3)
        self.G = TextImageGenerator(args.z_dim, args.z_dim, encoder=args.text_encoder, **kw).to(run.device)
        self.D = TextImageDiscriminator(text_dim=args.z_dim, **kw).to(run.device)
        self.opts["G"] = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.0, 0.999), eps=1e-8)
        self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(0.0, 0.999), eps=1e-8)
        self.modules.update(G=self.G, D=self.D)
        self.fixed_tokens = _caption_grid(False, 3).to(run.device)
        self.fixed_z = torch.randn(3, args.z_dim, generator=torch.Generator().manual_seed(123))
        self.fixed_z = self.fixed_z.repeat_interleave(self.fixed_tokens.shape[0] // 3, 0).to(run.device)

    def batch(self):
        video, (shape, colour, _) = moving_shapes(self.args.batch_size * self.run.world, 1, self.args.res)
        tokens = captions(shape, colour)
        return self._rank_slice(video[:, 0]).to(self.run.device), self._rank_slice(tokens).to(self.run.device)

    def train_step(self):
        a, G, D = self.args, self.G, self.D
        real, tokens = self.batch()
        _freeze(D, G)
        with torch.no_grad():
            fake = G(self._z(), tokens)
        loss_D = matching_hinge_d_loss(D, real, fake, tokens)
        self._opt_step("D", D, loss_D)
        _freeze(G, D)
        loss_G = hinge_g_loss(D(G(self._z(), tokens), tokens))
        self._opt_step("G", G, loss_G)
        self.step += 1
        return {"loss_G": loss_G.item(), "loss_D": loss_D.item()}

    def sample_grid(self, path):
        img = _sample(self.G, lambda: self.G(self.fixed_z, self.fixed_tokens))
        C.save_image_grid(img, path, nrow=len(COLOURS) * len(SHAPES))


class Text2VideoTrainer(_VideoTrainer):
    """Captions "a <colour> <shape> moving <direction>" -> clips. Hinge loss, matching-aware image (random frame)
    and video discriminators."""

    desc = "text2video"

    def __init__(self, args, run):
        super().__init__(args, run)
        kw = dict(resolution=args.res, ch=args.channels, img_channels=3)
        self.G = TextVideoGenerator(args.z_dim, args.z_dim, args.motion_dim, encoder=args.text_encoder,
                                    **kw).to(run.device)
        self.D = torch.nn.ModuleDict({
            "image": TextImageDiscriminator(text_dim=args.z_dim, **kw),
            "video": TextVideoDiscriminator(args.res, ch=max(1, args.channels // 4), text_dim=args.z_dim),
        }).to(run.device)
        self.opts["G"] = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.0, 0.999), eps=1e-8)
        self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(0.0, 0.999), eps=1e-8)
        self.modules.update(G=self.G, D=self.D)
        g = torch.Generator().manual_seed(123)
        pick = torch.randperm(len(COLOURS) * len(SHAPES) * len(MOTIONS), generator=g)[:8]
        self.fixed_tokens = _caption_grid(True, 1)[pick].to(run.device)
        self.fixed_z = torch.randn(8, args.z_dim, generator=g).to(run.device)

    def batch(self):
        video, attrs = moving_shapes(self.args.batch_size * self.run.world, self.args.frames, self.args.res)
        tokens = captions(*attrs)
        return self._rank_slice(video).to(self.run.device), self._rank_slice(tokens).to(self.run.device)

    def train_step(self):
        a, G, D = self.args, self.G, self.D
        real, tokens = self.batch()
        _freeze(D, G)
        with torch.no_grad():
            fake = G(self._z(), tokens, a.frames)
        loss_img = matching_hinge_d_loss(D["image"], random_frames(real), random_frames(fake), tokens)
        loss_vid = matching_hinge_d_loss(D["video"], real, fake, tokens)
        self._opt_step("D", D, loss_img + loss_vid)
        _freeze(G, D)
        fake = G(self._z(), tokens, a.frames)
        loss_G = hinge_g_loss(D["image"](random_frames(fake), tokens)) + hinge_g_loss(D["video"](fake, tokens))
        self._opt_step("G", G, loss_G)
        self.step += 1
        return {"loss_G": loss_G.item(), "loss_D_img": loss_img.item(), "loss_D_vid": loss_vid.item()}

    def sample_grid(self, path):
        clips = _sample(self.G, lambda: self.G(self.fixed_z, self.fixed_tokens, self.args.frames))
        C.save_image_grid(clips.flatten(0, 1), path, nrow=self.args.frames)


TRAINERS = {"mocogan": MoCoGANTrainer, "vid2vid": Vid2VidTrainer, "text2image": Text2ImageTrainer,
            "text2video": Text2VideoTrainer}
