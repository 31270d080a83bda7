"""Video instance discrimination with a playback-speed pretext head, on vkernels' InfoNCE loss and memory bank.

Per step and video i of the batch, two clips of T frames are cut at random start frames and random speeds (frame
stride 1 or 2), each with its own colour jitter and horizontal flip. A small (2+1)-D CNN embeds both clips
(z1, z2, L2-normalised) and the loss is
    L = 1/2 [InfoNCE(z1; pos m_i, bank, excl. i) + InfoNCE(z2; pos m_i, bank, excl. i)] + w * CE(speed head, stride),
both InfoNCE terms vkernels.infonce_bank_loss calls through vkernels.nn.InfoNCEWithBank. The bank
(vkernels.nn.MemoryBank, mode="momentum") has a row m_j per video: primed with the untrained encoder's embedding of
its centre clip, then after each step m_i <- normalize(mu m_i + (1 - mu) normalize(z1 + z2)). So each clip's positive
is the memory of clips of its own video from earlier steps, and its negatives are the other videos' clips (their
rows; the own row is excluded from the negatives). Taking the concurrent clip z2 as z1's positive instead (both with
gradients) did not train on this set: the loss rose above log M within 100 steps. The speed head (Benaim et al. 2020,
SpeedNet; Wang et al. 2020, pace prediction) classifies each clip's stride from the backbone features. Speed, not
temporal order: in the moving-shapes set a reversed clip is a valid clip of the same motion type.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vkernels.nn import InfoNCEWithBank, MemoryBank

from models.ssl import augment
from models.ssl.data import step_generator
from models.ssl.knn import linear_probe, weighted_knn

SPEEDS = (1, 2)  # frame strides the speed head classifies


class _R2Plus1D(nn.Module):
    """(2+1)-D conv (Tran et al. 2018): a spatial k x k conv then a temporal 3-tap conv, each with BN + ReLU."""

    def __init__(self, cin, cout, stride_s=1, stride_t=1):
        super().__init__()
        self.spatial = nn.Sequential(nn.Conv3d(cin, cout, (1, 3, 3), (1, stride_s, stride_s), (0, 1, 1), bias=False),
                                     nn.BatchNorm3d(cout), nn.ReLU(inplace=True))
        self.temporal = nn.Sequential(nn.Conv3d(cout, cout, (3, 1, 1), (stride_t, 1, 1), (1, 0, 0), bias=False),
                                      nn.BatchNorm3d(cout), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.temporal(self.spatial(x))


class ClipEncoder(nn.Module):
    """Clips (N, C, T, H, W) -> pooled features (N, 4w) -> embedding (N, d) and speed logits (N, len(SPEEDS)).

    Three (2+1)-D stages of width w, 2w, 4w; the last two halve H, W and T. forward returns (embedding, logits);
    features(x) the L2-normalised pooled features (kNN / linear probe)."""

    def __init__(self, in_ch: int, width: int = 16, dim: int = 128):
        super().__init__()
        self.backbone = nn.Sequential(_R2Plus1D(in_ch, width), _R2Plus1D(width, 2 * width, 2, 2),
                                      _R2Plus1D(2 * width, 4 * width, 2, 2))
        # BN before the L2 norm centres the batch's embeddings: without it every clip drifts away from the (stale)
        # bank's mean, the bank follows, and instance discrimination stalls (as in xmodal.py).
        self.head = nn.Sequential(nn.Linear(4 * width, dim), nn.BatchNorm1d(dim))
        self.speed = nn.Linear(4 * width, len(SPEEDS))

    def pooled(self, x):
        return self.backbone(x).flatten(2).mean(2)

    def forward(self, x):
        h = self.pooled(x)
        return F.normalize(self.head(h), dim=1), self.speed(h)

    def features(self, x):
        return F.normalize(self.pooled(x), dim=1)


def sample_clips(videos: torch.Tensor, g: torch.Generator, frames: int):
    """One clip per video: a random stride from SPEEDS and a random start. Returns (clips (N, C, frames, H, W),
    stride class (N,) int64 indices into SPEEDS)."""
    n, length = videos.shape[0], videos.shape[2]
    cls = torch.randint(0, len(SPEEDS), (n,), generator=g)
    stride = torch.tensor(SPEEDS)[cls]
    span = stride * (frames - 1) + 1
    if int(span.max()) > length:
        raise ValueError(f"sample_clips: {frames} frames at stride {max(SPEEDS)} need {int(span.max())} frames, the "
                         f"videos have {length}")
    start = (torch.rand(n, generator=g) * (length - span + 1)).long()
    t = (start[:, None] + stride[:, None] * torch.arange(frames)).to(videos.device)   # (N, frames)
    idx = t[:, None, :, None, None].expand(-1, videos.shape[1], -1, *videos.shape[3:])
    return videos.gather(2, idx), cls.to(videos.device)


def augment_clips(clips: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Colour jitter (augment.color_jitter, one draw per clip: frames stacked as one tall image) and a horizontal
    flip per clip (a flip keeps the motion type)."""
    n, c, t, h, w = clips.shape
    y = augment.color_jitter(clips.reshape(n, c, t * h, w), g).reshape(clips.shape)
    flip = (torch.rand(n, generator=g) < 0.5).to(clips.device).view(n, 1, 1, 1, 1)
    return torch.where(flip, y.flip(-1), y)


def center_clips(videos: torch.Tensor, frames: int) -> torch.Tensor:
    """The deterministic evaluation clip: stride 1, centred in time."""
    s = (videos.shape[2] - frames) // 2
    return videos[:, :, s:s + frames]


class VideoInstance(nn.Module):
    def __init__(self, in_ch: int, num_videos: int, width: int = 16, dim: int = 128, frames: int = 8,
                 temperature: float = 0.1, bank_momentum: float = 0.5, speed_weight: float = 1.0,
                 sync: str = "local", seed: int = 0):
        super().__init__()
        self.encoder = ClipEncoder(in_ch, width, dim)
        self.frames, self.speed_weight = frames, speed_weight
        self.criterion = InfoNCEWithBank(temperature, bank=MemoryBank(
            num_videos, dim, mode="momentum", momentum=bank_momentum, sync=sync, seed=seed))

    def trainable(self) -> nn.Module:
        return self.encoder

    def step(self, net, x, idx, seed, step, rank):
        """x: (B, C, L, H, W) the batch's videos; idx: their rows in the bank."""
        g = step_generator(seed, step, rank)
        (c1, s1), (c2, s2) = sample_clips(x, g, self.frames), sample_clips(x, g, self.frames)
        clips = torch.cat([augment_clips(c1, g), augment_clips(c2, g)])
        z, logits = net(clips)          # one forward for both views: one BN batch, one DDP reduction
        z1, z2 = z.chunk(2)
        idx = idx.to(z.device)
        # index=idx: the video's own (older) bank row is not a negative; the positive is its other clip.
        # Positive: the video's memory row, the momentum average of its clips from earlier steps; the negatives are
        # the other videos' rows (index=idx excludes the own row from them).
        pos = self.criterion.bank.negatives()[idx].clone()  # a copy: the bank is written in place
        l12, r12 = self.criterion(z1, pos, index=idx, return_rank=True)
        l21, r21 = self.criterion(z2, pos, index=idx, return_rank=True)
        speed = F.cross_entropy(logits, torch.cat([s1, s2]))
        loss = 0.5 * (l12 + l21) + self.speed_weight * speed
        metrics = {"nce": 0.5 * (l12 + l21).detach(), "acc1": 0.5 * ((r12 == 0).float().mean()
                                                                     + (r21 == 0).float().mean()),
                   "speed_acc": (logits.argmax(1) == torch.cat([s1, s2])).float().mean()}
        return loss, metrics, F.normalize(z1 + z2, dim=1).detach()

    @torch.no_grad()
    def prime(self, videos: torch.Tensor, chunk: int = 128) -> None:
        """Fill the bank with the untrained encoder's embeddings of every video's centre clip (the same on every
        rank). With NPID's random initial rows the loss starts artificially low and rises while the bank fills with
        real embeddings; primed, its fall measures learning. Training-mode BN (batch statistics, as the embeddings
        the bank later receives; eval mode's initial running statistics give vectors unlike them), with the running
        statistics restored afterwards."""
        enc = self.encoder
        saved = {k: v.clone() for k, v in enc.state_dict().items()}
        dev = next(enc.parameters()).device
        clips = center_clips(videos, self.frames)
        z = torch.cat([enc(clips[i:i + chunk].to(dev))[0] for i in range(0, clips.shape[0], chunk)])
        enc.load_state_dict(saved)
        bank = self.criterion.bank
        bank.flush()
        bank.memory.copy_(z.to(bank.memory.dtype))

    @torch.no_grad()
    def after_step(self, z, idx):
        self.criterion.update_bank(z, idx.to(z.device))

    @torch.no_grad()
    def knn(self, data, k, t, chunk=128) -> dict:
        """Weighted kNN and a linear probe on the backbone's pooled features of each video's centre clip (encoder in
        eval mode), training split -> held-out split."""
        train = _features(self.encoder, center_clips(data.x, self.frames), chunk)
        test = _features(self.encoder, center_clips(data.x_test, self.frames), chunk)
        dev = train.device
        y, yt, c = data.y.to(dev), data.y_test.to(dev), data.num_classes
        return {"knn": weighted_knn(train, y, test, yt, c, k, t), "probe": linear_probe(train, y, test, yt, c)}

    def views(self, data, seed):
        """Frames of 8 training videos' two augmented clips (rows), for views.png."""
        g = step_generator(seed, 0, 0, stream=2)
        x = data.x[:8]
        c1, _ = sample_clips(x, g, self.frames)
        c2, _ = sample_clips(x, g, self.frames)
        rows = torch.stack([augment_clips(c1, g), augment_clips(c2, g)], 1).flatten(0, 1)   # (16, C, T, H, W)
        return rows.transpose(1, 2).flatten(0, 1), self.frames


@torch.no_grad()
def _features(enc: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    dev = next(enc.parameters()).device
    was = enc.training
    enc.eval()
    out = torch.cat([enc.features(x[i:i + chunk].to(dev)) for i in range(0, x.shape[0], chunk)])
    enc.train(was)
    return out
