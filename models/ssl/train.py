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


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = C.setup(args)
    data = D.load(args.method, args.data, args.image_size, args.seed, args.heldout)
    model = build(args, data, run)
    if hasattr(model, "make_optimizer"):
        opt = model.make_optimizer(args)
    else:
        opt = torch.optim.SGD(model.trainable().parameters(), lr=args.lr, momentum=0.9,
                              weight_decay=args.weight_decay)
    start = 0
    ckpt_path = run.out / "checkpoint.pt" if run.out is not None else None
    # A sharded bank differs per rank: each rank writes its own shard next to rank 0's checkpoint.
    sharded = run.world > 1 and (args.bank_sync == "sharded")
    shard_path = run.out / f"bank-rank{run.rank}.pt" if run.out is not None else None
    if args.resume:
        if ckpt_path is None:
            raise SystemExit("--resume needs --out (the run directory holding checkpoint.pt)")
        state = C.load_checkpoint(ckpt_path, run.device)
        if state is not None:
            if sharded:  # this rank's queue shard replaces rank 0's, which the main checkpoint holds
                shard = C.load_checkpoint(shard_path, run.device)
                if shard is None or shard["step"] != state["step"]:
                    raise SystemExit(f"--resume: {shard_path} is missing or from another step than {ckpt_path}")
                state["model"].update(shard["bank"])
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            C.set_rng_state(state["rng"])
            start = state["step"]
            if run.is_main:
                print(f"resumed from {ckpt_path} at step {start}", file=sys.stderr)
    net = run.ddp(model.trainable())
    x_all = data.x.to(run.device)
    if start == 0 and hasattr(model, "prime"):  # video: the bank starts from the untrained encoder's embeddings
        model.prime(x_all)

    def train_step(step: int):
        for grp in opt.param_groups:
            if grp.get("cosine", True):
                grp["lr"] = lr_at(args, step)
        idx = D.batch_indices(step, run.rank, run.world, args.batch_size, data.x.shape[0], args.seed)
        x = x_all[idx.to(run.device)]
        if hasattr(model, "train_step"):  # models with more than one update per step (bigbigan) do their own
            loss, metrics, cache = model.train_step(net, opt, x, idx, args.seed, step, run.rank)
        else:
            loss, metrics, cache = model.step(net, x, idx, args.seed, step, run.rank)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.after_step(cache, idx)
        return loss.detach(), metrics

    def evaluate() -> dict:
        return model.knn(data, args.knn_k, args.knn_t) if run.is_main else {}

    def save_samples(step: int):  # bigbigan: held-out images, reconstructions, samples
        if run.is_main and run.out is not None and hasattr(model, "samples"):
            images, nrow = model.samples(data, args.seed)
            C.save_image_grid(images, run.out / f"samples_{step:06d}.png", nrow=nrow)

    if run.is_main and run.out is not None and start == 0:  # the augmentations, to eyeball
        if hasattr(model, "views"):
            images, nrow = model.views(data, args.seed)
            C.save_image_grid(images, run.out / "views.png", nrow=nrow)
        elif hasattr(model, "crop_scale"):
            from models.ssl import augment
            x = data.x[:16]
            g = D.step_generator(args.seed, 0, 0, stream=2)
            C.save_image_grid(torch.cat([x, augment.augment_images(x, g, model.crop_scale),
                                         augment.augment_images(x, g, model.crop_scale)]),
                              run.out / "views.png", nrow=16)

    stats = C.StepStats()
    bar = C.Progress(args.steps, start=start, desc=args.method, enabled=run.is_main, every=args.log_every)
    peak_step = None if args.no_peak else min(start + 2, args.steps - 1)
    history, last = [], {}
    knn = {}
    # The untrained encoder's probes: the baseline the trained ones are compared with (bigbigan, video; the other
    # methods' kNN at step 0 reads a bank of random rows).
    init = {}
    if start == 0 and args.method in ("bigbigan", "video"):
        init = {f"{k}_init": v for k, v in evaluate().items()}
    end = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    for step in range(start, end):
        if step == peak_step:
            # One real training step under the profiler (it is slow there, so it is left out of the timing).
            out = {}
            stats.peak_bytes = C.measure_peak(lambda: out.setdefault("r", train_step(step))[0], run.device)
            loss, metrics = out["r"]
        else:
            stats.start(run.device)
            loss, metrics = train_step(step)
            stats.stop()
        done = step + 1
        last = {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}}
        history.append((step, last["loss"]))
        if args.knn_every and done % args.knn_every == 0 and done != args.steps:
            knn = evaluate()
        bar.update(done, **last, **knn)
        if args.sample_every and done % args.sample_every == 0:
            save_samples(done)
        if ckpt_path is not None and args.ckpt_every and (done % args.ckpt_every == 0 or done == args.steps):
            if sharded:
                sd = model.state_dict()
                C.save_checkpoint(shard_path, {"step": done, "bank": {k: v for k, v in sd.items()
                                                                       if k.startswith("criterion.bank.")}})
            C.save_checkpoint(ckpt_path, {"step": done, "model": model.state_dict(), "opt": opt.state_dict(),
                                          "rng": C.rng_state(), "args": vars(args)}, run)
            run.barrier()
    bar.close()
    knn = evaluate()
    if not (args.sample_every and end % args.sample_every == 0):
        save_samples(end)
    rec = C.report(run, f"ssl-{args.method}", stats, {"method": args.method, "steps": args.steps,
                                                       "start": start, **last, **init, **knn})
    rec["history"] = history
    rec["model"] = model.state_dict()
    run.barrier()  # rank 0 ran the kNN evaluation alone
    run.close()
    return rec


if __name__ == "__main__":
    main()
