"""What every training entry point in models/ shares: arguments, torchrun/DDP setup, atomic checkpoints with bit-exact
resume, a progress bar, step timing and peak memory, offline image data and PNG sample grids.

The entry points (models/gan/train.py, models/finegrained/train.py, models/ssl/train.py) are thin: a model, a loss and
a loop. Everything here is plain PyTorch + the standard library so that `--impl reference` runs the same loop on the
unfused reference ops and the two reports compare like with like.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import vkernels
from vkernels._backend import IMPLS
from vkernels.utils.quiet import quiet_torch_logs


# ------------------------------------------------------------------------------------------------------ arguments
def add_common_args(parser: argparse.ArgumentParser, *, steps=200, batch_size=32, lr=2e-3, data="synthetic:0",
                    log_every=10, sample_every=200, ckpt_every=100) -> argparse.ArgumentParser:
    g = parser.add_argument_group("common")
    g.add_argument("--steps", type=int, default=steps, help="optimizer steps in total (a resumed run continues to it)")
    g.add_argument("--batch-size", type=int, default=batch_size, help="per-rank batch size")
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--out", type=Path, default=None, help="run directory: checkpoint.pt, samples, report.json")
    g.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt if it exists")
    g.add_argument("--impl", default="auto", choices=("auto",) + IMPLS,
                   help="vkernels implementation for every op; 'reference' runs the unfused pure-PyTorch ops")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--data", default=data, help="digits | faces | synthetic:<seed> (all offline)")
    g.add_argument("--log-every", type=int, default=log_every)
    g.add_argument("--sample-every", type=int, default=sample_every)
    g.add_argument("--ckpt-every", type=int, default=ckpt_every)
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser


# ---------------------------------------------------------------------------------------------------- processes
@dataclass
class Run:
    """One process of a (possibly distributed) training run."""
    rank: int
    world: int
    local_rank: int
    device: torch.device
    out: Path | None
    seed: int
    impl: str = "auto"
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def ddp(self, module: torch.nn.Module, **kw) -> torch.nn.Module:
        """Wrap in DistributedDataParallel when there is more than one rank; otherwise the module itself."""
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, **kw)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_mean(self, value: float) -> float:
        """Mean of a Python number over ranks (for logging)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def setup(args: argparse.Namespace) -> Run:
    """Process group from torchrun's environment (gloo on CPU, NCCL on GPU), device, seeds, vkernels impl."""
    quiet_torch_logs()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world)
    # Same seed on every rank: models are built identically (DDP also broadcasts rank 0's parameters); data
    # streams differ per rank through their own generators (seed + rank).
    seed_everything(args.seed)
    vkernels.set_impl(args.impl)
    out = Path(args.out) if args.out is not None else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    return Run(rank, world, local_rank, device, out, args.seed, args.impl, distributed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -------------------------------------------------------------------------------------------------- checkpoints
def rng_state() -> dict:
    """Every RNG a training step may draw from, so a resumed run continues bit-exactly."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict, run: Run | None = None) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact (temp file + fsync + rename)."""
    if run is not None and not run.is_main:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict | None:
    """The checkpoint at `path`, or None if there is none. Our own files: full unpickling (RNG states included)."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location=device, weights_only=False)


# ------------------------------------------------------------------------------------------------------ progress
class Progress:
    """Training progress on stderr through tqdm: steps done / total, s/iter, elapsed and ETA, and the latest values
    (losses, accuracy). Redrawn in place on a terminal; one plain line every `every` steps (and at the end)
    otherwise, so logs stay readable."""

    FMT = "{desc} {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_inv_fmt}]{postfix}"
    PLAIN = "{desc} {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_inv_fmt}]"

    def __init__(self, total: int, start: int = 0, desc: str = "", enabled: bool = True, every: int = 10):
        from tqdm import tqdm

        self.tqdm, self.total, self.start, self.desc, self.every = tqdm, total, start, desc, max(1, every)
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=start, desc=desc, file=sys.stderr, bar_format=self.FMT,
                            dynamic_ncols=True, unit="step")

    def update(self, step: int, **values) -> None:
        """`step`: steps done so far; `values`: numbers shown after the bar (losses, accuracy...)."""
        if not self.enabled:
            return
        post = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        if self.bar is not None:
            self.bar.postfix = post
            self.bar.update(step - self.bar.n)
            return
        if step % self.every and step != self.total:
            return
        # tqdm's rate and ETA count only the steps of this process (a resumed run starts at `start`).
        line = self.tqdm.format_meter(step - self.start, self.total - self.start, time.perf_counter() - self.t0,
                                      prefix=self.desc, bar_format=self.PLAIN, unit="step")
        line = line.replace(f"{step - self.start}/{self.total - self.start}", f"{step}/{self.total}", 1)
        print(f"{line} {post}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(v) -> str:
    if isinstance(v, torch.Tensor):
        v = float(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------- step statistics
@dataclass
class StepStats:
    """Wall time per step (median after `warmup` steps) and peak memory of one step."""
    warmup: int = 3
    times: list = field(default_factory=list)
    peak_bytes: int | None = None
    _t: float = 0.0
    _device: torch.device | None = None

    def start(self, device: torch.device | None = None) -> None:
        self._device = device
        _sync(device)
        self._t = time.perf_counter()

    def stop(self) -> None:
        _sync(self._device)
        self.times.append(time.perf_counter() - self._t)

    @property
    def s_per_iter(self) -> float:
        t = self.times[self.warmup:] or self.times
        return float(np.median(t)) if t else float("nan")


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(fn, device: torch.device) -> int | None:
    """Peak bytes allocated by torch during one call of fn() above what was allocated before it.

    CUDA: the caching allocator's statistics. CPU: torch keeps none, so the profiler's allocation events are summed
    (vkernels/utils/profile.py explains the method; one step under the profiler is slow, so call this once)."""
    from vkernels.utils.profile import peak_bytes

    return peak_bytes({"step": fn}, torch.device(device).type)["step"]


def report(run: Run, name: str, stats: StepStats, extra: dict | None = None) -> dict:
    """Print the run's summary line and write <out>/report.json (rank 0)."""
    rec = {"name": name, "impl": run.impl, "device": str(run.device), "world": run.world,
           "s_per_iter": stats.s_per_iter, "peak_mem_bytes": stats.peak_bytes, "torch": torch.__version__}
    rec.update(extra or {})
    if run.is_main:
        peak = "n/a" if stats.peak_bytes is None else f"{stats.peak_bytes / 2**20:.1f} MiB"
        tail = " ".join(f"{k}={_fmt(v)}" for k, v in (extra or {}).items())
        print(f"[{name}] impl={rec['impl']} device={run.device} world={run.world} "
              f"{stats.s_per_iter:.4f} s/iter peak={peak} {tail}", flush=True)
        if run.out is not None:
            (run.out / "report.json").write_text(json.dumps(rec, indent=2, default=str) + "\n")
    return rec


# ----------------------------------------------------------------------------------------------------------- data
def load_images(name: str, size: int | None = None, channels: int | None = None):
    """Offline images as (x float32 (N, C, H, W) in [-1, 1], labels int64 (N,) or None).

    "digits": scikit-learn's 1797 8x8 handwritten digits (labels 0-9). "faces": scikit-image's lfw_subset, 200
    25x25 faces (no labels). "synthetic:<seed>": 512 smooth random colour fields with 4 classes, made here.
    `size` resizes (bilinear, antialiased); `channels` repeats a grey channel to 3 or averages 3 to 1.
    """
    kind, _, arg = name.partition(":")
    if kind == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise SystemExit("--data digits needs scikit-learn (pip install scikit-learn)") from e
        d = load_digits()
        x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0
        y = torch.from_numpy(d.target).long()
    elif kind == "faces":
        try:
            from skimage.data import lfw_subset
        except ImportError as e:
            raise SystemExit("--data faces needs scikit-image (pip install scikit-image)") from e
        x = torch.from_numpy(np.asarray(lfw_subset(), dtype=np.float32)).unsqueeze(1)
        x = (x - x.amin()) / (x.amax() - x.amin())
        y = None
    elif kind == "synthetic":
        g = torch.Generator().manual_seed(int(arg or 0))
        n, s = 512, size or 32
        y = torch.arange(n) % 4
        # Low-frequency colour fields: a 4x4 random grid upsampled, with a class-dependent mean colour.
        base = torch.rand(n, 3, 4, 4, generator=g)
        tint = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0], [0.8, 0.8, 0.2]])[y]
        x = torch.nn.functional.interpolate(base, size=(s, s), mode="bicubic", align_corners=False)
        x = (0.5 * x + 0.5 * tint[:, :, None, None]).clamp(0, 1)
    else:
        raise ValueError(f"unknown dataset {name!r}: expected digits, faces or synthetic:<seed>")
    if size is not None and x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=size < x.shape[-1])
    if channels is not None and channels != x.shape[1]:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    return (x.clamp(0, 1) * 2 - 1).contiguous(), y


def save_image_grid(x: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Write (N, C, H, W) images with values in [-1, 1] as one PNG grid (1 or 3 channels); no image library needed."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"save_image_grid: x must have 1 or 3 channels, got {c}")
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * (h + 2) + 2, nrow * (w + 2) + 2, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = x[i]
    _write_png(Path(path), grid.permute(1, 2, 0).contiguous().numpy())


def _write_png(path: Path, img: np.ndarray) -> None:
    h, w, c = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))  # filter type 0 per scanline

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    color = {1: 0, 3: 2}[c]
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(png)
    os.replace(tmp, path)
