r"""Train a small GAN on an offline dataset: `python -m models.gan.train --arch stylegan2|biggan|spade [--impl reference]`.

    python -m models.gan.train --data faces --res 16 --steps 400 --out runs/gan
    python -m models.gan.train --data faces --res 16 --steps 400 --out runs/gan --resume   # continue
    python -m models.gan.train --pl-weight 2 --out runs/gan-pl                           # + path-length penalty
    python -m models.gan.train --arch biggan --data digits --res 16 --out runs/biggan    # class-conditional
    python -m models.gan.train --arch spade --res 32 --out runs/spade                    # segmentation -> image
    python -m models.gan.train --arch mocogan --res 16 --frames 4 --out runs/mocogan     # image -> video
    python -m models.gan.train --arch vid2vid --res 16 --frames 4 --out runs/vid2vid     # video -> video
    python -m models.gan.train --arch text2video --res 16 --out runs/t2v                 # or text2image
    torchrun --nproc_per_node 2 -m models.gan.train --data digits --out runs/gan-ddp      # DDP (gloo/NCCL)
    python -m models.gan.train --bench --res 32 --batch-size 16                          # G+D step, auto vs reference
    python -m models.gan.train --bench --res 256 --batch-size 2 --channel-base 16384 --channels 512 --z-dim 512 \
        --threads 1 --bench-steps 2 --out runs/bench                                     # StyleGAN2 256^2 widths

Architectures (--arch):
- stylegan2 (models/gan/stylegan2.py): non-saturating logistic loss, lazy R1 on reals every --r1-every steps (double
  backward through the discriminator's bias_act and upfirdn2d), optional lazy path-length penalty every --pl-every
  steps (--pl-weight > 0: double backward through the generator's modulated_conv2d / upfirdn2d / bias_act), EMA
  generator for samples. Data: faces (default), digits or synthetic:<seed>.
- biggan (models/gan/biggan.py): class-conditional generator of BigGAN blocks (conditional BN fused with the x2
  upsampling, vkernels.upsample_norm_act) against a projection discriminator with spectral norm, hinge loss.
  Data: a labelled set, digits (default) or synthetic:<seed>.
- spade (models/gan/spade.py): SPADE ResBlk generator, segmentation map -> image, on the synthetic rectangles of
  spade.py (one-hot maps with --label-nc classes, each painted a fixed colour), against a PatchGAN discriminator
  conditioned on the map; hinge loss + --l1-weight * L1 to the target image. --data is not used.
- mocogan (models/gan/mocogan.py): image -> video, MoCoGAN-style: content code + GRU motion codes through a
  StyleGAN2 image generator per frame; image D (stylegan2's, on a random frame, lazy R1) and a 3-D conv video D
  (bias_act); non-saturating loss; synthetic moving-shapes clips of --frames frames (video_data.py).
- vid2vid (models/gan/vid2vid.py): semantic-map clip -> clip: SPADE ResBlk generator per frame on the map and the
  two previous generated frames, flow + mask heads, warping with grid_sample; per-frame PatchGAN and temporal D,
  hinge + --l1-weight * L1 + --flow-weight * warp loss; synthetic drifting rectangles.
- text2image / text2video (models/gan/textgan.py): a GRU (--text-encoder gru) or bag-of-embeddings caption encoder
  drives the conditional batch norm (upsample_norm_act) of BigGAN blocks; text2video adds mocogan's motion GRU to
  the condition. Projection discriminators with their own caption encoder, hinge loss with a mismatched-caption
  term; captions "a <colour> <shape> moving <direction>" of the moving-shapes clips.
- hologan (models/gan/hologan.py): HoloGAN-style generator (learned 3-D feature volume, AdaIN fused with x2 trilinear
  upsampling on 5-D input, rigid 3-D transform, projection to 2-D, 2-D AdaIN upsampling blocks) on synthetic views
  of random 3-D shapes at random poses; D with HoloGAN's style discriminators (on each layer's feature mean / std)
  and z head; non-saturating logistic loss + --style-weight * style + --latent-weight * z reconstruction error.
  Metrics at step 0 and at the end: z_mse (z reconstruction error on G's images) and rot_agree (a pose probe trained
  on the real views reads G's images of a z at 8 azimuths: the share of view pairs turned as asked, chance 0.125).
  --data is not used.
Writes <out>/samples_<step>.png every --sample-every steps, <out>/checkpoint.pt (atomic) every --ckpt-every steps,
and reports s/iter and peak memory at the end. Gradients are averaged over ranks by hand (not DDP: R1's and the
path-length penalty's double backward are outside DDP's support), so every arch runs under torchrun.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

import vkernels
from models import _common as C
from models.gan.biggan import BigGANGenerator, ProjectionDiscriminator, hinge_d_loss, hinge_g_loss
from models.gan.hologan import hologan_trainer
from models.gan.spade import PatchDiscriminator, SPADEGenerator, synthetic_batch
from models.gan.stylegan2 import (Discriminator, Generator, make_ema, path_length_penalty, r1_penalty,
                                  update_ema)

ARCHS = ("stylegan2", "biggan", "spade", "hologan")
DEFAULT_DATA = {"stylegan2": "faces", "biggan": "digits", "spade": "seg", "hologan": "views"}
DEFAULT_LR = {"stylegan2": 2e-3, "biggan": 2e-4, "spade": 2e-4, "hologan": 2e-4}
# Video and text-conditioned archs: trainers in models/gan/video_train.py, data made in code (--data not used).
VIDEO_ARCHS = ("mocogan", "vid2vid", "text2image", "text2video")
ARCHS += VIDEO_ARCHS
DEFAULT_DATA.update(mocogan="shapes", vid2vid="segvideo", text2image="shapes", text2video="shapes")
DEFAULT_LR.update(mocogan=2e-3, vid2vid=1e-3, text2image=1e-3, text2video=1e-3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.gan.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, steps=400, batch_size=16, lr=None, data=None, log_every=10, sample_every=200,
                      ckpt_every=100)
    p.add_argument("--arch", default="stylegan2", choices=ARCHS)
    p.add_argument("--res", type=int, default=16, help="image resolution (power of 2, >= 8)")
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--channels", type=int, default=64,
                   help="stylegan2: max feature channels (G and D); biggan/spade: base width")
    p.add_argument("--channel-base", type=int, default=None,
                   help="stylegan2: channels at resolution r = min(channel_base / r, --channels); default "
                        "16 * --channels (StyleGAN2's 256^2 config: --channel-base 16384 --channels 512)")
    p.add_argument("--r1-gamma", type=float, default=1.0)
    p.add_argument("--r1-every", type=int, default=4, help="lazy R1 interval")
    p.add_argument("--pl-weight", type=float, default=0.0, help="stylegan2 path-length penalty weight (0: off; "
                   "StyleGAN2 uses 2)")
    p.add_argument("--pl-every", type=int, default=4, help="lazy path-length penalty interval")
    p.add_argument("--ema-beta", type=float, default=0.99)
    p.add_argument("--label-nc", type=int, default=4, help="spade: segmentation classes")
    p.add_argument("--l1-weight", type=float, default=10.0, help="spade: weight of the L1 term in G's loss")
    v = p.add_argument_group("video and text archs (mocogan, vid2vid, text2image, text2video)")
    v.add_argument("--frames", type=int, default=4, help="frames per clip (>= 2)")
    v.add_argument("--motion-dim", type=int, default=8, help="mocogan / text2video: motion code size")
    v.add_argument("--text-encoder", default="gru", choices=("gru", "bag"),
                   help="text2image / text2video: the generator's caption encoder")
    v.add_argument("--flow-weight", type=float, default=2.0, help="vid2vid: weight of the warp loss in G's loss")
    h = p.add_argument_group("hologan")
    h.add_argument("--style-weight", type=float, default=1.0,
                   help="weight of the style discriminators' loss in G's and D's loss (0: off)")
    h.add_argument("--latent-weight", type=float, default=1.0,
                   help="weight of the z reconstruction error in G's and D's loss (0: off)")
    h.add_argument("--probe-steps", type=int, default=600,
                   help="training steps of the pose probe that the pose-consistency metric uses")
    h.add_argument("--eval-objects", type=int, default=64,
                   help="z's (and real shapes) the pose-consistency metric renders at 8 azimuths each; the z "
                        "reconstruction error uses 4x as many")
    p.add_argument("--bench", action="store_true",
                   help="time G+D steps with --impl auto and reference (same weights, interleaved); no training")
    p.add_argument("--bench-steps", type=int, default=6, help="--bench: timed steps per impl (first is warm-up)")
    args = p.parse_args(argv)
    if args.data is None:
        args.data = DEFAULT_DATA[args.arch]
    if args.lr is None:
        args.lr = DEFAULT_LR[args.arch]
    if args.channel_base is None:
        args.channel_base = args.channels * 16
    return args


class Trainer:
    """What every arch shares: modules/optimizers in dicts (checkpointed by name), per-rank batches drawn from the
    global RNG (saved in checkpoints, so a resumed run draws the same batches), gradient averaging over ranks."""

    desc = "gan"

    def __init__(self, args, run):
        self.args, self.run = args, run
        self.step = 0
        self.modules: dict[str, torch.nn.Module] = {}
        self.opts: dict[str, torch.optim.Optimizer] = {}
        # evaluate()'s values before the first step (archs that have evaluate()); checkpoints keep them.
        self.metrics_init: dict[str, float] = {}

    def state(self):
        st = {k: m.state_dict() for k, m in self.modules.items()}
        st.update({"opt_" + k: o.state_dict() for k, o in self.opts.items()})
        st.update(step=self.step, rng=C.rng_state(), args=vars(self.args), metrics_init=self.metrics_init)
        return st

    def load(self, st):
        for k, m in self.modules.items():
            m.load_state_dict(st[k])
        for k, o in self.opts.items():
            o.load_state_dict(st["opt_" + k])
        self.step = st["step"]
        self.metrics_init = st.get("metrics_init", {})
        C.set_rng_state(st["rng"])

    def _rank_slice(self, t):
        b = self.args.batch_size
        return t[self.run.rank * b:(self.run.rank + 1) * b]

    def _indices(self, n):
        # Draw the whole global batch on every rank (same RNG stream), keep this rank's part.
        return self._rank_slice(torch.randint(0, n, (self.args.batch_size * self.run.world,)))

    def _sync_grads(self, module):
        if self.run.world > 1:
            for p in module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.run.world

    def _opt_step(self, name, module, loss):
        self.opts[name].zero_grad(set_to_none=True)
        loss.backward()
        self._sync_grads(module)
        self.opts[name].step()


class StyleGAN2Trainer(Trainer):
    desc = "stylegan2"

    def __init__(self, args, run):
        super().__init__(args, run)
        self.img_channels = 3 if args.data.startswith("synthetic") else 1
        kw = dict(resolution=args.res, img_channels=self.img_channels, channel_max=args.channels,
                  channel_base=args.channel_base)
        self.G = Generator(z_dim=args.z_dim, w_dim=args.z_dim, **kw).to(run.device)
        self.D = Discriminator(**kw).to(run.device)
        self.G_ema = make_ema(self.G)
        # Lazy regularization: Adam's betas and lr rescaled for the steps that carry the penalty (StyleGAN2 app. B).
        cg = args.pl_every / (args.pl_every + 1) if args.pl_weight > 0 else 1.0
        cd = args.r1_every / (args.r1_every + 1)
        self.opts["G"] = torch.optim.Adam(self.G.parameters(), lr=args.lr * cg, betas=(0.0, 0.99 ** cg), eps=1e-8)
        self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=args.lr * cd, betas=(0.0, 0.99 ** cd), eps=1e-8)
        self.modules.update(G=self.G, D=self.D, G_ema=self.G_ema)
        self.data, _ = C.load_images(args.data, size=args.res, channels=self.img_channels)
        self.data = self.data.to(run.device)
        self.fixed_z = torch.randn(32, args.z_dim, generator=torch.Generator().manual_seed(123)).to(run.device)
        self.last = {"r1": float("nan"), "pl": float("nan")}  # lazy terms as of the last step that ran them (logs)

    # kept for callers of the stylegan2-only trainer
    @property
    def opt_G(self):
        return self.opts["G"]

    @property
    def opt_D(self):
        return self.opts["D"]

    def batch(self):
        return self.data[self._indices(self.data.shape[0]).to(self.data.device)]

    def train_step(self):
        a, G, D = self.args, self.G, self.D
        real = self.batch()
        z = torch.randn(a.batch_size, a.z_dim, device=self.run.device)
        # G: non-saturating loss softplus(-D(G(z))) (+ lazy path-length penalty every pl_every steps).
        G.requires_grad_(True)
        D.requires_grad_(False)
        loss_G = F.softplus(-D(G(z))).mean()
        pl = torch.zeros((), device=real.device)
        if a.pl_weight > 0 and self.step % a.pl_every == 0:
            zp = torch.randn(max(1, a.batch_size // 2), a.z_dim, device=self.run.device)
            pl = path_length_penalty(G, zp).mean() * a.pl_weight * a.pl_every
        self._opt_step("G", G, loss_G + pl)
        # D: softplus(D(fake)) + softplus(-D(real)) (+ lazy R1 on reals every r1_every steps).
        G.requires_grad_(False)
        D.requires_grad_(True)
        z = torch.randn(a.batch_size, a.z_dim, device=self.run.device)
        with torch.no_grad():
            fake = G(z)
        do_r1 = a.r1_gamma > 0 and self.step % a.r1_every == 0
        if do_r1:
            pen, real_logits = r1_penalty(D, real)
            r1 = pen.mean() * (a.r1_gamma / 2) * a.r1_every
        else:
            real_logits, r1 = D(real), torch.zeros((), device=real.device)
        loss_D = F.softplus(D(fake)).mean() + F.softplus(-real_logits).mean()
        self._opt_step("D", D, loss_D + r1)
        update_ema(self.G_ema, G, a.ema_beta)
        if do_r1:
            self.last["r1"] = r1.item()
        if a.pl_weight > 0 and self.step % a.pl_every == 0:
            self.last["pl"] = pl.item()
        self.step += 1
        out = {"loss_G": loss_G.item(), "loss_D": loss_D.item(), "r1": self.last["r1"]}
        if a.pl_weight > 0:
            out["pl"] = self.last["pl"]
        return out

    def sample_grid(self, path):
        with torch.no_grad():
            img = self.G_ema(self.fixed_z, noise_mode="const")
        C.save_image_grid(img, path, nrow=8)


class BigGANTrainer(Trainer):
    desc = "biggan"

    def __init__(self, args, run):
        super().__init__(args, run)
        self.data, labels = C.load_images(args.data, size=args.res)
        if labels is None:
            raise SystemExit(f"--arch biggan needs a labelled dataset (digits or synthetic:<seed>), got {args.data}")
        self.img_channels = self.data.shape[1]
        self.num_classes = int(labels.max()) + 1
        self.data, self.labels = self.data.to(run.device), labels.to(run.device)
        kw = dict(num_classes=self.num_classes, resolution=args.res, ch=args.channels, img_channels=self.img_channels)
        self.G = BigGANGenerator(z_dim=args.z_dim, **kw).to(run.device)
        self.D = ProjectionDiscriminator(**kw).to(run.device)
        self.opts["G"] = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.0, 0.999), eps=1e-8)
        self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(0.0, 0.999), eps=1e-8)
        self.modules.update(G=self.G, D=self.D)
        g = torch.Generator().manual_seed(123)
        self.fixed_z = torch.randn(40, args.z_dim, generator=g).to(run.device)
        self.fixed_y = (torch.arange(40) % self.num_classes).to(run.device)

    def _fake_inputs(self):
        a = self.args
        z = self._rank_slice(torch.randn(a.batch_size * self.run.world, a.z_dim)).to(self.run.device)
        y = self._rank_slice(torch.randint(0, self.num_classes, (a.batch_size * self.run.world,)))
        return z, y.to(self.run.device)

    def train_step(self):
        G, D = self.G, self.D
        idx = self._indices(self.data.shape[0]).to(self.data.device)
        real, y_real = self.data[idx], self.labels[idx]
        # D: hinge loss on reals and (detached) fakes of random classes.
        G.requires_grad_(False)
        D.requires_grad_(True)
        z, y = self._fake_inputs()
        with torch.no_grad():
            fake = G(z, y)
        loss_D = hinge_d_loss(D(real, y_real), D(fake, y))
        self._opt_step("D", D, loss_D)
        # G: -D(G(z, y), y).
        G.requires_grad_(True)
        D.requires_grad_(False)
        z, y = self._fake_inputs()
        loss_G = hinge_g_loss(D(G(z, y), y))
        self._opt_step("G", G, loss_G)
        self.step += 1
        return {"loss_G": loss_G.item(), "loss_D": loss_D.item()}

    def sample_grid(self, path):
        # Eval mode: batch norm uses its running statistics, so sampling leaves the training state alone.
        self.G.eval()
        try:
            with torch.no_grad():
                img = self.G(self.fixed_z, self.fixed_y)
        finally:
            self.G.train()
        C.save_image_grid(img, path, nrow=self.num_classes)


class SPADETrainer(Trainer):
    desc = "spade"

    def __init__(self, args, run):
        super().__init__(args, run)
        n_up = max(1, int(math.log2(args.res)) - 3)  # base map of 8x8 (4x4 at res 8)
        self.G = SPADEGenerator(args.label_nc, size=args.res, ch=max(1, args.channels // 2), n_up=n_up,
                                hidden=max(1, args.channels // 2)).to(run.device)
        self.D = PatchDiscriminator(args.label_nc, 3, ch=max(1, args.channels // 2)).to(run.device)
        self.opts["G"] = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.0, 0.999))
        self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(0.0, 0.999))
        self.modules.update(G=self.G, D=self.D)
        seg, img = synthetic_batch(16, args.label_nc, args.res, torch.Generator().manual_seed(123))
        self.fixed = (seg.to(run.device), img.to(run.device))

    def batch(self):
        # The global RNG draws the whole global batch (same on every rank); each rank keeps its part.
        seg, img = synthetic_batch(self.args.batch_size * self.run.world, self.args.label_nc, self.args.res, None)
        return self._rank_slice(seg).to(self.run.device), self._rank_slice(img).to(self.run.device)

    def train_step(self):
        G, D, a = self.G, self.D, self.args
        seg, img = self.batch()
        G.requires_grad_(False)
        D.requires_grad_(True)
        with torch.no_grad():
            fake = G(seg)
        loss_D = hinge_d_loss(D(seg, img), D(seg, fake))
        self._opt_step("D", D, loss_D)
        G.requires_grad_(True)
        D.requires_grad_(False)
        fake = G(seg)
        adv = hinge_g_loss(D(seg, fake))
        l1 = F.l1_loss(fake, img)
        self._opt_step("G", G, adv + a.l1_weight * l1)
        self.step += 1
        return {"loss_G": adv.item(), "loss_D": loss_D.item(), "l1": l1.item()}

    def sample_grid(self, path):
        seg, img = self.fixed
        self.G.eval()
        try:
            with torch.no_grad():
                fake = self.G(seg)
        finally:
            self.G.train()
        # Rows of 8: targets, then the generator's images for the same maps.
        C.save_image_grid(torch.cat([img[:8], fake[:8], img[8:], fake[8:]]), path, nrow=8)


TRAINERS = {"stylegan2": StyleGAN2Trainer, "biggan": BigGANTrainer, "spade": SPADETrainer, "hologan": hologan_trainer}


def make_trainer(args, run) -> Trainer:
    if args.arch in VIDEO_ARCHS:
        # Imported here: video_train's trainers subclass Trainer, so it imports this module.
        from models.gan.video_train import TRAINERS as VIDEO_TRAINERS

        return VIDEO_TRAINERS[args.arch](args, run)
    return TRAINERS[args.arch](args, run)


def train(args, run):
    t = make_trainer(args, run)
    ckpt = run.out / "checkpoint.pt" if run.out is not None else None
    if args.resume and ckpt is not None:
        st = C.load_checkpoint(ckpt, run.device)
        if st is not None:
            t.load(st)
            if run.is_main:
                print(f"resumed from {ckpt} at step {t.step} of {args.steps}", file=sys.stderr)
        elif run.is_main:
            print(f"--resume: no {ckpt} yet, starting at step 0", file=sys.stderr)
    # Archs with evaluate() (hologan) are measured before the first step and after the last; evaluate() leaves the
    # global RNG stream alone, so a resumed run draws the same batches.
    evaluate = getattr(t, "evaluate", None) if run.is_main else None
    if evaluate is not None and t.step == 0:
        t.metrics_init = {f"{k}_init": v for k, v in evaluate().items()}
        print(f"{t.desc} untrained: " + " ".join(f"{k}={v:.4g}" for k, v in t.metrics_init.items()), file=sys.stderr,
              flush=True)
    stats = C.StepStats()
    bar = C.Progress(args.steps, start=t.step, desc=t.desc, enabled=run.is_main, every=args.log_every)
    logs = {}
    while t.step < args.steps:
        stats.start(run.device)
        logs = t.train_step()
        stats.stop()
        bar.update(t.step, **logs)
        if run.out is not None and run.is_main and (t.step % args.sample_every == 0 or t.step == args.steps):
            t.sample_grid(run.out / f"samples_{t.step:06d}.png")
        if ckpt is not None and (t.step % args.ckpt_every == 0 or t.step == args.steps):
            C.save_checkpoint(ckpt, t.state(), run)
    bar.close()
    if stats.times:
        # One extra step under the profiler for peak memory; the trainer is put back to its state after it, so
        # the returned models are those of the last checkpoint.
        saved = copy.deepcopy(t.state())
        stats.peak_bytes = C.measure_peak(lambda: t.train_step(), run.device)
        t.load(saved)
    metrics = {**t.metrics_init, **evaluate()} if evaluate is not None else {}
    C.report(run, f"gan/{args.arch}", stats, {k: round(v, 4) for k, v in {**logs, **metrics}.items()})
    return t


def bench(args, run, steps=None):
    """Same weights, same inputs: s/iter and peak memory of a whole G+D step for auto vs reference.

    stylegan2 runs R1 on every step (--r1-every 1: the double-backward step, StyleGAN2's most expensive one) and
    the path-length penalty on every step when --pl-weight > 0. The two impls' steps are interleaved (auto,
    reference, auto, ...) so that load changes on a shared machine hit both alike; the first step of each is
    warm-up; s/iter is the median of the rest. Peak memory: one further step of each (models/_common.measure_peak).
    """
    steps = steps or args.bench_steps
    a = argparse.Namespace(**{**vars(args), "r1_every": 1, "pl_every": 1})
    impls = ("auto", "reference")
    trainers, stats = {}, {}
    for impl in impls:
        vkernels.set_impl(impl)
        C.seed_everything(args.seed)
        trainers[impl] = make_trainer(a, run)
        stats[impl] = C.StepStats(warmup=1)
    rng = {}
    for impl in impls:
        rng[impl] = C.rng_state()
    for _ in range(steps):
        for impl in impls:
            vkernels.set_impl(impl)
            C.set_rng_state(rng[impl])  # each impl sees its own continuing stream: identical inputs for both
            stats[impl].start(run.device)
            trainers[impl].train_step()
            stats[impl].stop()
            rng[impl] = C.rng_state()
    out = {}
    for impl in impls:
        vkernels.set_impl(impl)
        C.set_rng_state(rng[impl])
        peak = C.measure_peak(lambda: trainers[impl].train_step(), run.device)
        out[impl] = {"s_per_iter": stats[impl].s_per_iter, "peak_bytes": peak, "times": stats[impl].times}
        print(f"[gan-step bench] arch={args.arch} impl={impl} res={args.res} batch={args.batch_size} "
              f"device={run.device}: {out[impl]['s_per_iter']:.4f} s/iter (median of {steps - 1}), "
              f"peak {peak / 2**20:.1f} MiB", flush=True)
    vkernels.set_impl(args.impl)
    ta, pa = out["auto"]["s_per_iter"], out["auto"]["peak_bytes"]
    tr, pr = out["reference"]["s_per_iter"], out["reference"]["peak_bytes"]
    print(f"[gan-step bench] arch={args.arch} auto/reference: time {ta / tr:.3f}x, peak memory {pa / pr:.3f}x "
          f"({100 * (1 - pa / pr):.1f}% less)", flush=True)
    if run.out is not None and run.is_main:
        rec = {"arch": args.arch, "res": args.res, "batch": args.batch_size, "channels": args.channels,
               "channel_base": args.channel_base, "device": str(run.device), "threads": torch.get_num_threads(),
               "results": out}
        (run.out / f"bench_{args.arch}.json").write_text(json.dumps(rec, indent=2) + "\n")
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.res < 8 or args.res & (args.res - 1):
        raise SystemExit(f"--res must be a power of 2 >= 8, got {args.res}")
    if args.arch == "spade" and args.res < 16:
        raise SystemExit(f"--arch spade needs --res >= 16 (the synthetic segmentation maps), got {args.res}")
    if args.arch in VIDEO_ARCHS and args.frames < 2:
        raise SystemExit(f"--arch {args.arch} needs --frames >= 2, got {args.frames}")
    run = C.setup(args)
    try:
        if args.bench:
            bench(args, run)
        else:
            train(args, run)
    finally:
        run.close()


if __name__ == "__main__":
    sys.exit(main())
