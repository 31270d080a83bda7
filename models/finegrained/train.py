"""Train and evaluate fine-grained classifiers, one run per (arch, head).

    python -m models.finegrained.train --head gap,bilinear,isqrt --data covtex:0 --steps 300
    python -m models.finegrained.train --arch hbp,dbt,cin,apinet,racnn --head bilinear --steps 200
    python -m models.finegrained.train --arch racnn --head bilinear,cbp --data covpatch:0
    python -m models.finegrained.train --head bilinear --data digits --out runs/fg --resume
    torchrun --nproc_per_node 2 -m models.finegrained.train --head isqrt --data covtex:0
    python -m models.finegrained.train --head bilinear --impl reference     # the unfused pure-PyTorch ops
    python -m models.finegrained.train --bench --arch hbp,dbt --head bilinear   # fwd+bwd: auto vs reference

--arch (models/finegrained/archs.py): single (backbone + head + linear, the default), hbp (cross-layer bilinear),
dbt (grouped bilinear), cin (channel interaction), apinet (pairwise interaction), racnn (attention crop + zoom).
single, cin, apinet and racnn run once per --head; hbp and dbt are their own pooling and run once.
Each run starts from the same seed on the same data split (80/20 train/test); the run prints test accuracy,
s/iter and peak memory per run and a final table. With --out, each run checkpoints atomically to
<out>/<name>/checkpoint.pt (name: the head for single, else arch or arch/head; model, optimizer, step, RNG states)
and --resume continues bit-exactly.
Batches are drawn from a generator seeded by (seed, rank, step), so a resumed run sees the same batches.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

import vkernels

from models import _common as C
from models.finegrained.archs import ARCHS, TAKES_HEAD, build
from models.finegrained.data import load, part_cover, parts
from models.finegrained.model import HEADS


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.finegrained.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="single", help=f"comma-separated, from {', '.join(ARCHS)}")
    p.add_argument("--head", default="gap,bilinear,isqrt",
                   help=f"comma-separated, from {', '.join(HEADS)} (for the archs {', '.join(TAKES_HEAD)})")
    p.add_argument("--backbone", default="resnet", choices=("resnet", "linear"),
                   help="resnet: SmallResNet; linear: two convs without nonlinearity (see model.LinearBackbone)")
    p.add_argument("--width", type=int, default=8, help="backbone width (features: 4 x width channels)")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--dim", type=int, default=1024, help="output size of the cbp / rm heads")
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop (after checkpointing) once this step is reached: a time-limited job; --resume goes on")
    p.add_argument("--bench", action="store_true",
                   help="no training: time forward+backward of each model for auto vs reference (interleaved)")
    p.add_argument("--bench-steps", type=int, default=12, help="--bench: timed steps per impl (the first: warm-up)")
    p.add_argument("--eval-every", type=int, default=0, help="test accuracy every N steps (0: only at the end)")
    C.add_common_args(p, steps=300, batch_size=64, lr=0.05, data="covtex:0", log_every=20, ckpt_every=100)
    args = p.parse_args(argv)
    args.heads = [h.strip() for h in args.head.split(",") if h.strip()]
    for h in args.heads:
        if h not in HEADS:
            p.error(f"--head: {h!r} is not one of {', '.join(HEADS)}")
    args.archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    for a in args.archs:
        if a not in ARCHS:
            p.error(f"--arch: {a!r} is not one of {', '.join(ARCHS)}")
    if args.backbone != "resnet" and "hbp" in args.archs:
        p.error("--arch hbp pools the SmallResNet's stages: it needs --backbone resnet")
    return args


def runs(args):
    """(name, arch, head) for every run: single, cin, apinet and racnn once per head; hbp and dbt once."""
    out = []
    for a in args.archs:
        if a not in TAKES_HEAD:
            out.append((a, a, None))
        else:
            out += [(h if a == "single" else f"{a}/{h}", a, h) for h in args.heads]
    return out


@torch.no_grad()
def accuracy(model, x, y, device, batch=256):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i:i + batch].to(device)).argmax(1).cpu() == y[i:i + batch]).sum().item()
    model.train()
    return correct / max(1, len(x))


def train_head(args, run, name, data, arch="single", head=None):
    """Train one model; `name` labels its bar, checkpoint folder and table row. Every model's forward(x, target)
    returns its training loss (models/finegrained/archs.py)."""
    xtr, ytr, xte, yte, classes = data[:5]
    head = name if head is None and arch == "single" else head
    torch.manual_seed(args.seed)  # every run starts from the same backbone initialisation
    model = build(arch, classes, head, width=args.width, dim=args.dim, seed=args.seed,
                  backbone_kind=args.backbone).to(run.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / max(1, args.steps))))
    step = 0
    ckpt = run.out / name / "checkpoint.pt" if run.out is not None else None
    if args.resume and ckpt is not None:
        state = C.load_checkpoint(ckpt, run.device)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            step = state["step"]
            C.set_rng_state(state["rng"])
            if run.is_main:
                print(f"[{name}] resumed from {ckpt} at step {step} of {args.steps}", file=sys.stderr)
        elif run.is_main:
            print(f"[{name}] --resume: no {ckpt} yet, starting at step 0", file=sys.stderr)
    net = run.ddp(model)
    stats = C.StepStats()
    bar = C.Progress(args.steps, start=step, desc=f"finegrained/{name}", enabled=run.is_main, every=args.log_every)
    loss = torch.zeros(())
    losses = []  # this process's losses: loss_start / loss_end in the report
    stop = min(args.steps, args.stop_at) if args.stop_at else args.steps
    while step < stop:
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + run.rank * 10_007 + step)
        idx = torch.randint(0, len(xtr), (args.batch_size,), generator=g)
        xb, yb = xtr[idx].to(run.device), ytr[idx].to(run.device)
        stats.start(run.device)
        loss = net(xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        stats.stop()
        step += 1
        losses.append(loss.item())
        extra = {}
        if args.eval_every and step % args.eval_every == 0:
            extra["test_acc"] = accuracy(model, xte, yte, run.device)
        bar.update(step, loss=run.all_mean(loss.item()), **extra)
        if ckpt is not None and (step % args.ckpt_every == 0 or step == stop):
            C.save_checkpoint(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(),
                                     "sched": sched.state_dict(), "step": step, "rng": C.rng_state()}, run)
    bar.close()
    acc = accuracy(model, xte, yte, run.device)
    located = {}
    if data[5] is not None and hasattr(model, "crop_boxes"):  # covpatch: does the crop find the part?
        model.eval()
        boxes = torch.cat([model.crop_boxes(xte[i:i + 256].to(run.device)).cpu() for i in range(0, len(xte), 256)])
        model.train()
        located = part_cover(boxes, data[5], xte.shape[-1])

    def one_step():  # peak memory of a forward + backward at the training batch size (no optimizer step)
        xb = xtr[:args.batch_size].to(run.device)
        model(xb, ytr[:args.batch_size].to(run.device)).backward()

    if run.is_main:
        training = model.training
        model.eval()  # no BatchNorm running-stat update in the measuring pass
        stats.peak_bytes = C.measure_peak(one_step, run.device)
        model.train(training)
        model.zero_grad(set_to_none=True)
    k = min(10, len(losses))
    ends = {"loss_start": sum(losses[:k]) / k, "loss_end": sum(losses[-k:]) / k} if k else {}
    rec = C.report(run, f"finegrained/{name}", stats, {"test_acc": acc, "final_loss": float(loss.detach()), **ends,
                                                       **located, "steps": args.steps, "data": args.data})
    return model, rec


def bench(args, run, name, arch, head, data):
    """Same weights, same batch: s/iter and peak memory of forward + backward (no optimizer step, so the weights
    stay equal) for auto vs reference. Steps are interleaved (auto, reference, auto, ...) so that load changes on
    a shared machine hit both alike; the first of each is warm-up, s/iter is the median of the rest. Before timing,
    the two impls' losses on the batch must agree."""
    xtr, ytr, _, _, classes = data[:5]
    torch.manual_seed(args.seed)
    model = build(arch, classes, head, width=args.width, dim=args.dim, seed=args.seed,
                  backbone_kind=args.backbone).to(run.device)
    xb, yb = xtr[:args.batch_size].to(run.device), ytr[:args.batch_size].to(run.device)
    impls = ("auto", "reference")

    def step():
        torch.manual_seed(args.seed)  # apinet's dropout: the same mask for both impls
        model.zero_grad(set_to_none=True)
        loss = model(xb, yb)
        loss.backward()
        return loss.detach()

    first = {}
    for impl in impls:  # the warm-up step of each impl, and the check
        vkernels.set_impl(impl)
        first[impl] = step()
    if not torch.allclose(first["auto"], first["reference"], rtol=1e-4, atol=1e-5):
        vkernels.set_impl(args.impl)
        raise SystemExit(f"--bench {name}: auto and reference disagree on the loss ({first['auto'].item()} vs "
                         f"{first['reference'].item()}): not timing different computations")
    stats = {i: C.StepStats(warmup=0) for i in impls}
    for _ in range(max(1, args.bench_steps - 1)):
        for impl in impls:
            vkernels.set_impl(impl)
            stats[impl].start(run.device)
            step()
            stats[impl].stop()
    out = {}
    for impl in impls:
        vkernels.set_impl(impl)
        model.zero_grad(set_to_none=True)  # the measured step allocates its gradients and frees none from before
        out[impl] = {"s_per_iter": stats[impl].s_per_iter, "peak_bytes": C.measure_peak(step, run.device)}
    vkernels.set_impl(args.impl)
    return out


def main(argv=None):
    args = parse(argv)
    run = C.setup(args)
    x, y, classes = load(args.data, args.image_size)
    g = torch.Generator().manual_seed(12345)  # the same split for every head and every rank
    perm = torch.randperm(len(x), generator=g)
    ntr = int(0.8 * len(x))
    part = parts(args.data, args.image_size)
    data = (x[perm[:ntr]], y[perm[:ntr]], x[perm[ntr:]], y[perm[ntr:]], classes,
            None if part is None else part[perm[ntr:]])  # the test images' parts (covpatch), else None
    if args.bench:
        results = {name: bench(args, run, name, arch, head, data) for name, arch, head in runs(args)}
        if run.is_main:
            print(f"\n{'model':16s} {'auto s/iter':>11s} {'ref s/iter':>10s} {'auto MiB':>9s} {'ref MiB':>8s}   "
                  f"fwd+bwd, batch={args.batch_size} image={args.image_size} width={args.width} "
                  f"threads={torch.get_num_threads()} steps={args.bench_steps} data={args.data}")
            for name, r in results.items():
                a, ref = r["auto"], r["reference"]
                print(f"{name:16s} {a['s_per_iter']:11.4f} {ref['s_per_iter']:10.4f} {a['peak_bytes'] / 2**20:9.1f} "
                      f"{ref['peak_bytes'] / 2**20:8.1f}")
        run.close()
        return results
    results = {}
    for name, arch, head in runs(args):
        _, rec = train_head(args, run, name, data, arch, head)
        results[name] = rec
    if run.is_main:
        print(f"\n{'model':16s} {'test acc':>9s} {'s/iter':>8s} {'peak MiB':>9s}   data={args.data} "
              f"backbone={args.backbone} impl={args.impl} steps={args.steps} chance={1 / classes:.3f}")
        for name, r in results.items():
            peak = "n/a" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:.1f}"
            print(f"{name:16s} {r['test_acc']:9.3f} {r['s_per_iter']:8.4f} {peak:>9s}")
    run.close()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
