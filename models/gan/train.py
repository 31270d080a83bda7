"""Train a small StyleGAN2 on an offline dataset: `python -m models.gan.train [--impl reference] [--bench]`.

    python -m models.gan.train --data faces --res 16 --steps 400 --out runs/gan
    python -m models.gan.train --data faces --res 16 --steps 400 --out runs/gan --resume   # continue
    torchrun --nproc_per_node 2 -m models.gan.train --data digits --out runs/gan-ddp      # DDP (gloo/NCCL)
    python -m models.gan.train --bench --res 32 --batch-size 16                          # G+D step, auto vs reference

Non-saturating logistic loss, lazy R1 on reals every --r1-every steps (double backward through the discriminator's
bias_act and upfirdn2d), EMA generator for samples. Writes <out>/samples_<step>.png every --sample-every steps,
<out>/checkpoint.pt (atomic) every --ckpt-every steps, and reports s/iter and peak memory at the end.
--arch: only stylegan2 here (the BigGAN/SPADE blocks of the norm-act branch plug in as further choices).
"""
from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

import vkernels
from models import _common as C
from models.gan.stylegan2 import Discriminator, Generator, make_ema, r1_penalty, update_ema

ARCHS = ("stylegan2",)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, steps=400, batch_size=16, lr=2e-3, data="faces", log_every=10, sample_every=200,
                      ckpt_every=100)
    p.add_argument("--arch", default="stylegan2", choices=ARCHS)
    p.add_argument("--res", type=int, default=16, help="image resolution (power of 2, >= 8)")
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--channels", type=int, default=64, help="max feature channels (G and D)")
    p.add_argument("--r1-gamma", type=float, default=1.0)
    p.add_argument("--r1-every", type=int, default=4, help="lazy R1 interval")
    p.add_argument("--ema-beta", type=float, default=0.99)
    p.add_argument("--bench", action="store_true",
                   help="time a few G+D steps with --impl auto and reference (same weights); print both, no training")
    return p.parse_args(argv)


class Trainer:
    def __init__(self, args, run):
        self.args, self.run = args, run
        self.img_channels = 3 if args.data.startswith("synthetic") else 1
        kw = dict(resolution=args.res, img_channels=self.img_channels, channel_max=args.channels,
                  channel_base=args.channels * 16)
        self.G = Generator(z_dim=args.z_dim, w_dim=args.z_dim, **kw).to(run.device)
        self.D = Discriminator(**kw).to(run.device)
        self.G_ema = make_ema(self.G)
        # Lazy R1: Adam's betas and lr rescaled for the D steps that carry the penalty (StyleGAN2 appendix B).
        c = args.r1_every / (args.r1_every + 1)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=args.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
        self.data, _ = C.load_images(args.data, size=args.res, channels=self.img_channels)
        self.data = self.data.to(run.device)
        self.step = 0
        self.fixed_z = torch.randn(32, args.z_dim, generator=torch.Generator().manual_seed(123)).to(run.device)

    def state(self):
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(), "step": self.step,
                "rng": C.rng_state(), "args": vars(self.args)}

    def load(self, st):
        self.G.load_state_dict(st["G"])
        self.D.load_state_dict(st["D"])
        self.G_ema.load_state_dict(st["G_ema"])
        self.opt_G.load_state_dict(st["opt_G"])
        self.opt_D.load_state_dict(st["opt_D"])
        self.step = st["step"]
        C.set_rng_state(st["rng"])

    def batch(self):
        # Global torch RNG (saved in checkpoints, so a resumed run draws the same batches); one stream per rank.
        idx = torch.randint(0, self.data.shape[0], (self.args.batch_size * self.run.world,))
        idx = idx[self.run.rank * self.args.batch_size:(self.run.rank + 1) * self.args.batch_size]
        return self.data[idx.to(self.data.device)]

    def _sync_grads(self, module):
        # Gradients averaged by hand rather than through DDP: R1's double backward is outside DDP's support.
        if self.run.world > 1:
            for p in module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.run.world

    def train_step(self):
        a, G, D = self.args, self.G, self.D
        real = self.batch()
        z = torch.randn(a.batch_size, a.z_dim, device=self.run.device)
        # G: non-saturating loss softplus(-D(G(z))).
        G.requires_grad_(True)
        D.requires_grad_(False)
        loss_G = F.softplus(-D(G(z))).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self._sync_grads(G)
        self.opt_G.step()
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
        self.opt_D.zero_grad(set_to_none=True)
        (loss_D + r1).backward()
        self._sync_grads(D)
        self.opt_D.step()
        update_ema(self.G_ema, G, a.ema_beta)
        self.step += 1
        return {"loss_G": loss_G.item(), "loss_D": loss_D.item(), "r1": r1.item()}

    def sample_grid(self, path):
        with torch.no_grad():
            img = self.G_ema(self.fixed_z, noise_mode="const")
        C.save_image_grid(img, path, nrow=8)


def train(args, run):
    t = Trainer(args, run)
    ckpt = run.out / "checkpoint.pt" if run.out is not None else None
    if args.resume and ckpt is not None:
        st = C.load_checkpoint(ckpt, run.device)
        if st is not None:
            t.load(st)
    stats = C.StepStats()
    bar = C.Progress(args.steps, start=t.step, desc="stylegan2", enabled=run.is_main, every=args.log_every)
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
    C.report(run, "gan/stylegan2", stats, {k: round(v, 4) for k, v in logs.items()})
    return t


def bench(args, run, steps=6):
    """Same weights, same inputs: s/iter and peak memory of a whole G+D step (with R1) for auto vs reference."""
    out = {}
    for impl in ("auto", "reference"):
        vkernels.set_impl(impl)
        C.seed_everything(args.seed)
        a = argparse.Namespace(**{**vars(args), "r1_every": 1})
        t = Trainer(a, run)
        stats = C.StepStats(warmup=1)
        for _ in range(steps):
            stats.start(run.device)
            t.train_step()
            stats.stop()
        stats.peak_bytes = C.measure_peak(lambda: t.train_step(), run.device)
        out[impl] = (stats.s_per_iter, stats.peak_bytes)
        print(f"[gan-step bench] impl={impl} res={args.res} batch={args.batch_size} device={run.device}: "
              f"{stats.s_per_iter:.4f} s/iter, peak {stats.peak_bytes / 2**20:.1f} MiB", flush=True)
    (ta, pa), (tr, pr) = out["auto"], out["reference"]
    print(f"[gan-step bench] auto/reference: time {ta / tr:.3f}x, peak memory {pa / pr:.3f}x "
          f"({100 * (1 - pa / pr):.1f}% less)", flush=True)
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.res < 8 or args.res & (args.res - 1):
        raise SystemExit(f"--res must be a power of 2 >= 8, got {args.res}")
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
