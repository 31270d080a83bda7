"""Text -> image and text -> video GANs: conditional batch norm driven by a small text encoder (GAN-INT-CLS, Reed et
al. 2016, and TGAN/T2V-style video), on vkernels' public API.

The caption (token ids over video_data.VOCAB) is encoded by a GRU (or a bag of embeddings) into e (n, text_dim).
- text -> image: models/gan/biggan.py's BigGANGenerator with e as its condition: each BigGANBlock's
  vkernels.nn.ConditionalBatchNorm2d takes the float vector e, so gain = 1 + e W_g and bias = e W_b (the shared-
  embedding form of BigGAN's ccbn) are fused with the x2 upsampling in vkernels.upsample_norm_act.
- text -> video: the same generator per frame, conditioned on [e, z_M(t)] with z_M(t) from mocogan.py's MotionRNN,
  and the content noise z fixed for the clip; batch norm statistics are taken over all n * T frames.
Discriminators project their own encoding of the caption onto the image features (Miyato & Koyama 2018): images
through biggan.py's residual D blocks, clips through mocogan.py's 3-D VideoDiscriminator. The D loss is hinge with
GAN-INT-CLS's matching-aware term: a real image with a mismatched caption counts as fake.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.gan.biggan import BigGANGenerator, d_blocks, d_features
from models.gan.mocogan import MotionRNN, VideoDiscriminator
from models.gan.video_data import VOCAB

__all__ = ["TextEncoder", "TextImageGenerator", "TextVideoGenerator", "TextImageDiscriminator",
           "TextVideoDiscriminator", "matching_hinge_d_loss"]


class TextEncoder(torch.nn.Module):
    """tokens (n, L) int64 (0 = padding) -> (n, dim). kind "gru": the GRU's last hidden state over the embeddings;
    "bag": the mean of the non-padding tokens' embeddings, then tanh(linear)."""

    def __init__(self, dim: int = 32, vocab: int = len(VOCAB), kind: str = "gru"):
        super().__init__()
        if kind not in ("gru", "bag"):
            raise ValueError(f"TextEncoder: kind must be 'gru' or 'bag', got {kind!r}")
        self.kind, self.dim = kind, dim
        self.embed = torch.nn.Embedding(vocab, dim, padding_idx=0)
        if kind == "gru":
            self.rnn = torch.nn.GRU(dim, dim, batch_first=True)
        else:
            self.proj = torch.nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens)
        if self.kind == "gru":
            return self.rnn(e)[1][0]
        keep = (tokens != 0).unsqueeze(-1).to(e.dtype)
        return torch.tanh(self.proj((e * keep).sum(1) / keep.sum(1).clamp(min=1)))


class TextImageGenerator(torch.nn.Module):
    """(z (n, z_dim), tokens (n, L)) -> images (n, img_channels, resolution, resolution)."""

    def __init__(self, z_dim: int = 32, text_dim: int = 32, resolution: int = 16, ch: int = 16, img_channels: int = 3,
                 encoder: str = "gru"):
        super().__init__()
        self.text = TextEncoder(text_dim, kind=encoder)
        self.image = BigGANGenerator(z_dim=z_dim, num_classes=text_dim, resolution=resolution, ch=ch,
                                     img_channels=img_channels)

    def forward(self, z, tokens):
        return self.image(z, self.text(tokens))


class TextVideoGenerator(torch.nn.Module):
    """(z (n, z_dim), tokens (n, L), frames) -> clips (n, frames, img_channels, resolution, resolution)."""

    def __init__(self, z_dim: int = 32, text_dim: int = 32, motion_dim: int = 8, resolution: int = 16, ch: int = 16,
                 img_channels: int = 3, encoder: str = "gru"):
        super().__init__()
        self.text = TextEncoder(text_dim, kind=encoder)
        self.motion = MotionRNN(motion_dim, motion_dim)
        self.image = BigGANGenerator(z_dim=z_dim, num_classes=text_dim + motion_dim, resolution=resolution, ch=ch,
                                     img_channels=img_channels)

    def forward(self, z, tokens, frames: int):
        n = z.shape[0]
        e = self.text(tokens)
        cond = torch.cat([e[:, None].expand(-1, frames, -1), self.motion(n, frames, z.device)], 2)
        img = self.image(z[:, None].expand(-1, frames, -1).flatten(0, 1), cond.flatten(0, 1))
        return img.unflatten(0, (n, frames))


class TextImageDiscriminator(torch.nn.Module):
    """(images, tokens) -> logits (n,): biggan.py's residual D blocks, ReLU, sum pooling, linear + <P e, h> with e
    from the discriminator's own bag-of-embeddings caption encoder. Spectral norm as in biggan.py."""

    def __init__(self, resolution: int = 16, ch: int = 16, img_channels: int = 3, text_dim: int = 32):
        super().__init__()
        sn = torch.nn.utils.parametrizations.spectral_norm
        self.blocks, c = d_blocks(resolution, ch, img_channels)
        self.text = TextEncoder(text_dim, kind="bag")
        self.linear = sn(torch.nn.Linear(c, 1))
        self.proj = sn(torch.nn.Linear(text_dim, c, bias=False))

    def forward(self, img, tokens):
        h = d_features(self.blocks, img)
        return self.linear(h).squeeze(1) + (self.proj(self.text(tokens)) * h).sum(1)


class TextVideoDiscriminator(torch.nn.Module):
    """(clips, tokens) -> logits (n,): mocogan.py's VideoDiscriminator (3-D convs + bias_act) with a projection of
    the discriminator's own bag-of-embeddings caption encoding."""

    def __init__(self, resolution: int = 16, ch: int = 16, img_channels: int = 3, text_dim: int = 32):
        super().__init__()
        self.text = TextEncoder(text_dim, kind="bag")
        self.video = VideoDiscriminator(img_channels, resolution, ch, cond_dim=text_dim)

    def forward(self, video, tokens):
        return self.video(video, self.text(tokens)).squeeze(1)


def matching_hinge_d_loss(D, real, fake, tokens):
    """Hinge D loss with GAN-INT-CLS's matching-aware term: relu(1 - D(real, t)) + (relu(1 + D(fake, t)) +
    relu(1 + D(real, t'))) / 2, t' the batch's captions rolled by one (mostly another clip's caption)."""
    mismatched = tokens.roll(1, 0)
    return (F.relu(1 - D(real, tokens)).mean()
            + 0.5 * (F.relu(1 + D(fake, tokens)).mean() + F.relu(1 + D(real, mismatched)).mean()))
