"""python -m models.ssl.train --arch moco|npid|xmodal|bigbigan|video [--steps N --batch-size B --impl reference ...]

One loop for the five methods (--arch and --method are the same flag): deterministic batches and augmentations (a
pure function of seed, step and rank, see models/ssl/data.py), a cosine learning rate (SGD; bigbigan: constant-rate
Adam), a progress bar, weighted-kNN accuracy on a held-out split (bigbigan and video also a linear probe, at step 0
too), atomic checkpoints (--ckpt-every) with --resume that continues bit-exactly, torchrun/DDP (gloo on CPU; not
bigbigan), and a final report of s/iter and peak memory. `--impl reference` runs the same model on vkernels' unfused
pure-PyTorch ops.

Methods: moco (MoCo v2), npid (NPID), xmodal (cross-modal, --data synthetic:<seed>), bigbigan (BigBiGAN: BigGAN-block
generator, encoder, joint (x, z) discriminator, hinge losses; models/ssl/bigbigan.py), video (clip instance
discrimination against a memory bank + a playback-speed head on moving-shapes videos, --data shapes:<seed>;
models/ssl/video.py).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from models import _common as C
from models.ssl import data as D
from models.ssl.bigbigan import BigBiGAN
from models.ssl.moco import MoCo
from models.ssl.npid import NPID
from models.ssl.video import VideoInstance
from models.ssl.xmodal import CrossModal

METHODS = ("moco", "npid", "xmodal", "bigbigan", "video")
DEFAULT_LR = {"bigbigan": 2e-4, "video": 0.03}  # others: 0.06 (SGD)
DEFAULT_DATA = {"video": "shapes:0", "bigbigan": "digits"}  # others: synthetic:0


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.ssl.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", "--arch", dest="method", choices=METHODS, default="moco")
    C.add_common_args(p, steps=200, batch_size=64, lr=None, data=None, log_every=10, sample_every=0,
                      ckpt_every=100)
    g = p.add_argument_group("ssl")
    g.add_argument("--image-size", type=int, default=16, help="images are resized to this (digits are 8x8)")
    g.add_argument("--width", type=int, default=16, help="backbone width w (features 4w)")
    g.add_argument("--dim", type=int, default=128, help="embedding dimension d (bigbigan: z dimension)")
    g.add_argument("--hidden", type=int, default=256, help="MoCo's MLP head hidden width; bigbigan: D's MLP width")
    g.add_argument("--temperature", type=float, default=None,
                   help="T (default: 0.2 MoCo v2, 0.07 NPID / xmodal, 0.1 video)")
    g.add_argument("--queue-size", type=int, default=1024, help="MoCo: negatives in the queue (K)")
    g.add_argument("--moco-m", type=float, default=0.99, help="MoCo: key encoder momentum")
    g.add_argument("--bn-splits", type=int, default=0,
                   help="MoCo: BN groups per rank (shuffled BN); 0 = 4 in one process, 1 under torchrun")
    g.add_argument("--crop-min", type=float, default=0.5,
                   help="smallest crop area fraction of RandomResizedCrop (MoCo v2 uses 0.2 at 224 px; at 8-16 px "
                        "0.2 often crops the object away)")
    g.add_argument("--bank-momentum", type=float, default=0.5, help="NPID / xmodal: memory update momentum")
    g.add_argument("--bank-sync", default=None, choices=("local", "gather", "sharded"),
                   help="MemoryBank sync (default: local in one process, gather under torchrun)")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--knn-every", type=int, default=100, help="kNN evaluation every N steps (0: only at the end)")
    g.add_argument("--knn-k", type=int, default=200)
    g.add_argument("--knn-t", type=float, default=0.07)
    g.add_argument("--heldout", type=float, default=0.2, help="fraction of the data held out for kNN")
    g.add_argument("--no-peak", action="store_true", help="skip the one profiled step that measures peak memory")
    g.add_argument("--frames", type=int, default=8, help="video: frames per clip")
    g.add_argument("--speed-weight", type=float, default=1.0,
                   help="video: weight of the speed-prediction loss (0: off)")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a crash
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LR.get(args.method, 0.06)
    if args.data is None:
        args.data = DEFAULT_DATA.get(args.method, "synthetic:0")
    return args


def build(args, data: D.SSLData, run: C.Run):
    sync = args.bank_sync or ("gather" if run.world > 1 else "local")
    if run.world > 1 and sync == "local":
        raise SystemExit("--bank-sync local under torchrun would give each rank its own bank, which a rank-0 "
                         "checkpoint cannot hold; use gather or sharded")
    if args.method != "moco" and sync == "sharded":
        raise SystemExit(f"--method {args.method}: a sharded momentum bank is not supported here (the positive is the "
                         f"instance's own row, which may live on another rank); use --bank-sync gather")
    m = data.x.shape[0]
    if args.method == "bigbigan" and run.world > 1:
        raise SystemExit("--arch bigbigan runs in one process (its two updates per step are not wrapped for DDP)")
    if args.method == "moco":
        splits = args.bn_splits or (1 if run.world > 1 else 4)
        if args.batch_size % splits:
            raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the BN groups ({splits})")
        model = MoCo(data.x.shape[1], args.width, args.hidden, args.dim, args.queue_size, args.moco_m,
                     args.temperature or 0.2, splits, sync, args.seed)
    elif args.method == "npid":
        model = NPID(data.x.shape[1], m, args.width, args.dim, args.temperature or 0.07, args.bank_momentum, sync,
                     args.seed)
    elif args.method == "bigbigan":
        if data.x.shape[-1] & (data.x.shape[-1] - 1) or data.x.shape[-1] < 8:
            raise SystemExit(f"--arch bigbigan: --image-size must be a power of 2 >= 8, got {data.x.shape[-1]}")
        model = BigBiGAN(data.x.shape[1], data.x.shape[-1], args.dim, args.width, args.hidden)
    elif args.method == "video":
        if not args.speed_weight >= 0:
            raise SystemExit(f"--speed-weight must be >= 0 (0: no speed pretext), got {args.speed_weight}")
        model = VideoInstance(data.x.shape[1], m, args.width, args.dim, args.frames, args.temperature or 0.1,
                              args.bank_momentum, args.speed_weight, sync, args.seed)
    else:
        model = CrossModal(data.x.shape[1], data.s.shape[1], m, args.width, args.dim, args.temperature or 0.07,
                           args.bank_momentum, sync, args.seed)
        model.signals = data.s
    if not 0 < args.crop_min <= 1:
        raise SystemExit(f"--crop-min must be in (0, 1], got {args.crop_min}")
    if hasattr(model, "crop_scale"):  # the image-augmenting methods (moco, npid, xmodal)
        model.crop_scale = (args.crop_min, 1.0)
    if args.method not in ("moco", "bigbigan") and args.batch_size * run.world > m:
        raise SystemExit(f"batch {args.batch_size} x {run.world} ranks exceeds the {m} training instances: one step "
                         f"would update a memory row twice")
    return model.to(run.device)


def lr_at(args, step: int) -> float:
    return args.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, args.steps)))


@dataclass
class Training:
    """One process's run, as every phase after set-up reads it."""
    args: argparse.Namespace
    run: C.Run
    data: D.SSLData
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    net: torch.nn.Module  # the model's trainable part, DDP-wrapped under torchrun
    x_all: torch.Tensor  # the training images, on the run's device
    ckpt_path: Path | None  # rank 0's checkpoint; None without --out
    shard_path: Path | None  # this rank's bank shard when the bank is sharded over ranks, else None


def make_optimizer(args, model):
    """The model's own optimizer (bigbigan: Adam at a constant rate) or SGD with momentum on its trainable part."""
    if hasattr(model, "make_optimizer"):
        return model.make_optimizer(args)
    return torch.optim.SGD(model.trainable().parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)


def checkpoint_paths(args, run: C.Run) -> tuple[Path | None, Path | None]:
    """(rank 0's checkpoint, this rank's bank shard or None); both None without --out."""
    if run.out is None:
        return None, None
    # A sharded bank differs per rank: each rank writes its own shard next to rank 0's checkpoint.
    sharded = run.world > 1 and args.bank_sync == "sharded"
    return run.out / "checkpoint.pt", (run.out / f"bank-rank{run.rank}.pt" if sharded else None)


def resume(run: C.Run, model, opt, ckpt_path: Path | None, shard_path: Path | None) -> int:
    """Load model, optimizer and RNG state from the checkpoint and return its step (0 when there is none yet)."""
    if ckpt_path is None:
        raise SystemExit("--resume needs --out (the run directory holding checkpoint.pt)")
    state = C.load_checkpoint(ckpt_path, run.device)
    if state is None:
        return 0
    if shard_path is not None:  # this rank's queue shard replaces rank 0's, which the main checkpoint holds
        shard = C.load_checkpoint(shard_path, run.device)
        if shard is None or shard["step"] != state["step"]:
            raise SystemExit(f"--resume: {shard_path} is missing or from another step than {ckpt_path}")
        state["model"].update(shard["bank"])
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    C.set_rng_state(state["rng"])
    if run.is_main:
        print(f"resumed from {ckpt_path} at step {state['step']}", file=sys.stderr)
    return state["step"]


def set_up(argv) -> tuple[Training, int]:
    """Flags, process, data, model, optimizer and the step to start at (--resume). Keep the order: the model's
    initialisation draws from the global RNG that a resume then overwrites."""
    args = parse_args(argv)
    run = C.setup(args)
    data = D.load(args.method, args.data, args.image_size, args.seed, args.heldout)
    model = build(args, data, run)
    opt = make_optimizer(args, model)
    ckpt_path, shard_path = checkpoint_paths(args, run)
    start = resume(run, model, opt, ckpt_path, shard_path) if args.resume else 0
    net = run.ddp(model.trainable())  # after the resume: DDP broadcasts rank 0's parameters
    x_all = data.x.to(run.device)
    if start == 0 and hasattr(model, "prime"):  # video: the bank starts from the untrained encoder's embeddings
        model.prime(x_all)
    return Training(args, run, data, model, opt, net, x_all, ckpt_path, shard_path), start


def train_step(t: Training, step: int):
    """One update at the cosine learning rate of `step`; returns (loss, metrics)."""
    args, run, model, opt = t.args, t.run, t.model, t.opt
    for grp in opt.param_groups:
        if grp.get("cosine", True):
            grp["lr"] = lr_at(args, step)
    idx = D.batch_indices(step, run.rank, run.world, args.batch_size, t.data.x.shape[0], args.seed)
    x = t.x_all[idx.to(run.device)]
    if hasattr(model, "train_step"):  # models with more than one update per step (bigbigan) do their own
        loss, metrics, cache = model.train_step(t.net, opt, x, idx, args.seed, step, run.rank)
    else:
        loss, metrics, cache = model.step(t.net, x, idx, args.seed, step, run.rank)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.after_step(cache, idx)
    return loss.detach(), metrics


def timed_train_step(t: Training, step: int, stats: C.StepStats, measure_peak: bool):
    """train_step, timed into `stats`; or, once, run under the profiler for the peak memory instead."""
    if measure_peak:
        # One real training step under the profiler (it is slow there, so it is left out of the timing).
        out = {}
        stats.peak_bytes = C.measure_peak(lambda: out.setdefault("r", train_step(t, step))[0], t.run.device)
        return out["r"]
    stats.start(t.run.device)
    result = train_step(t, step)
    stats.stop()
    return result


def heldout_accuracy(t: Training) -> dict:
    """Weighted-kNN accuracy on the held-out split (bigbigan, video: also a linear probe); rank 0 only."""
    return t.model.knn(t.data, t.args.knn_k, t.args.knn_t) if t.run.is_main else {}


def save_sample_grid(t: Training, step: int):
    """bigbigan: held-out images, reconstructions, samples."""
    if t.run.is_main and t.run.out is not None and hasattr(t.model, "samples"):
        images, nrow = t.model.samples(t.data, t.args.seed)
        C.save_image_grid(images, t.run.out / f"samples_{step:06d}.png", nrow=nrow)


def save_augmented_views(t: Training):
    """views.png: the augmentations of a few training inputs, to eyeball."""
    model, data, seed = t.model, t.data, t.args.seed
    if hasattr(model, "views"):
        images, nrow = model.views(data, seed)
        C.save_image_grid(images, t.run.out / "views.png", nrow=nrow)
    elif hasattr(model, "crop_scale"):
        from models.ssl import augment
        x = data.x[:16]
        g = D.step_generator(seed, 0, 0, stream=2)
        C.save_image_grid(torch.cat([x, augment.augment_images(x, g, model.crop_scale),
                                     augment.augment_images(x, g, model.crop_scale)]),
                          t.run.out / "views.png", nrow=16)


def write_checkpoint(t: Training, done: int):
    """Rank 0's checkpoint (model, optimizer, RNG state, flags) and, for a sharded bank, every rank's shard."""
    if t.shard_path is not None:
        sd = t.model.state_dict()
        C.save_checkpoint(t.shard_path, {"step": done, "bank": {k: v for k, v in sd.items()
                                                                if k.startswith("criterion.bank.")}})
    C.save_checkpoint(t.ckpt_path, {"step": done, "model": t.model.state_dict(), "opt": t.opt.state_dict(),
                                    "rng": C.rng_state(), "args": vars(t.args)}, t.run)
    t.run.barrier()


def train_steps(t: Training, start: int, end: int, stats: C.StepStats, bar: C.Progress) -> tuple[list, dict]:
    """Steps start..end-1 with their progress line, kNN evaluations, sample grids and checkpoints; returns the
    (step, loss) history and the last step's loss and metrics."""
    args = t.args
    peak_step = None if args.no_peak else min(start + 2, args.steps - 1)
    history, last, knn = [], {}, {}
    for step in range(start, end):
        loss, metrics = timed_train_step(t, step, stats, measure_peak=step == peak_step)
        done = step + 1
        last = {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}}
        history.append((step, last["loss"]))
        if args.knn_every and done % args.knn_every == 0 and done != args.steps:
            knn = heldout_accuracy(t)
        bar.update(done, **last, **knn)
        if args.sample_every and done % args.sample_every == 0:
            save_sample_grid(t, done)
        if t.ckpt_path is not None and args.ckpt_every and (done % args.ckpt_every == 0 or done == args.steps):
            write_checkpoint(t, done)
    return history, last


def final_report(t: Training, stats: C.StepStats, end: int, summary: dict, history: list) -> dict:
    """Evaluate the trained model, save its last sample grid, print and write the report, close the process group;
    returns the report with the loss history and the model's state."""
    args, run = t.args, t.run
    knn = heldout_accuracy(t)
    if not (args.sample_every and end % args.sample_every == 0):
        save_sample_grid(t, end)
    rec = C.report(run, f"ssl-{args.method}", stats, {"method": args.method, "steps": args.steps, **summary, **knn})
    rec["history"] = history
    rec["model"] = t.model.state_dict()
    run.barrier()  # rank 0 ran the kNN evaluation alone
    run.close()
    return rec


def main(argv=None) -> dict:
    t, start = set_up(argv)
    args, run = t.args, t.run
    if run.is_main and run.out is not None and start == 0:
        save_augmented_views(t)
    stats = C.StepStats()
    bar = C.Progress(args.steps, start=start, desc=args.method, enabled=run.is_main, every=args.log_every)
    # The untrained encoder's probes: the baseline the trained ones are compared with (bigbigan, video; the other
    # methods' kNN at step 0 reads a bank of random rows).
    init = {}
    if start == 0 and args.method in ("bigbigan", "video"):
        init = {f"{k}_init": v for k, v in heldout_accuracy(t).items()}
    end = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    history, last = train_steps(t, start, end, stats, bar)
    bar.close()
    return final_report(t, stats, end, {"start": start, **last, **init}, history)


if __name__ == "__main__":
    main()
