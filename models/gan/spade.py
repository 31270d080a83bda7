"""A SPADE ResBlk generator (Park et al. 2019, NVlabs/SPADE models/networks/architecture.py SPADEResnetBlock) on
vkernels' public API, and a tiny segmentation -> image example that trains for a few steps.

Each SPADE + leaky ReLU pair is one `vkernels.nn.SPADE(act="lrelu")` call (norm, modulation and activation fused).
    python -m models.gan.spade --steps 20        # synthetic blobs -> colour image, prints the L1 loss
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import vkernels

__all__ = ["SPADEResBlock", "SPADEGenerator", "build_spade_generator", "train_example", "PatchDiscriminator"]


class SPADEResBlock(torch.nn.Module):
    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128, impl: str = "auto"):
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.norm_0 = vkernels.nn.SPADE(fin, label_nc, hidden, act="lrelu", alpha=0.2, impl=impl)
        self.conv_0 = torch.nn.Conv2d(fin, fmid, 3, padding=1)
        self.norm_1 = vkernels.nn.SPADE(fmid, label_nc, hidden, act="lrelu", alpha=0.2, impl=impl)
        self.conv_1 = torch.nn.Conv2d(fmid, fout, 3, padding=1)
        if self.learned_shortcut:
            self.norm_s = vkernels.nn.SPADE(fin, label_nc, hidden, act="linear", impl=impl)
            self.conv_s = torch.nn.Conv2d(fin, fout, 1, bias=False)

    def forward(self, x, seg):
        xs = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(self.norm_0(x, seg))
        dx = self.conv_1(self.norm_1(dx, seg))
        return xs + dx


class SPADEGenerator(torch.nn.Module):
    """seg (N, label_nc, S, S) -> image (N, 3, S, S): the downsampled map -> conv -> [ResBlk, up x2] * n -> RGB."""

    def __init__(self, label_nc: int, size: int = 32, ch: int = 32, n_up: int = 2, hidden: int = 32,
                 impl: str = "auto"):
        super().__init__()
        self.n_up = n_up
        self.base = size // 2 ** n_up
        self.fc = torch.nn.Conv2d(label_nc, ch * 2 ** n_up, 3, padding=1)
        self.blocks = torch.nn.ModuleList(
            [SPADEResBlock(ch * 2 ** (n_up - i), ch * 2 ** (n_up - i - 1), label_nc, hidden, impl)
             for i in range(n_up)])
        self.to_rgb = torch.nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, seg):
        x = self.fc(F.interpolate(seg, size=(self.base, self.base), mode="nearest"))
        for blk in self.blocks:
            x = F.interpolate(blk(x, seg), scale_factor=2, mode="nearest")
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))


class PatchDiscriminator(torch.nn.Module):
    """PatchGAN-style conditional D (pix2pix / SPADE's NLayerDiscriminator, one scale): concat(seg, img) ->
    conv4x4 s2 -> lrelu -> [conv4x4 s2 -> instance norm -> lrelu] * (n_layers - 1) -> conv4x4 -> a logit map.
    Plain torch ops, spectral norm as in SPADE."""

    def __init__(self, label_nc: int, img_channels: int = 3, ch: int = 32, n_layers: int = 2):
        super().__init__()
        sn = torch.nn.utils.parametrizations.spectral_norm
        layers = [torch.nn.Conv2d(label_nc + img_channels, ch, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
        c = ch
        for _ in range(n_layers - 1):
            layers += [sn(torch.nn.Conv2d(c, c * 2, 4, 2, 1)), torch.nn.InstanceNorm2d(c * 2),
                       torch.nn.LeakyReLU(0.2)]
            c *= 2
        layers += [torch.nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = torch.nn.Sequential(*layers)

    def forward(self, seg, img):
        return self.net(torch.cat([seg, img], 1))


def build_spade_generator(label_nc: int, size: int = 32, ch: int = 32, n_up: int = 2, hidden: int = 32,
                          impl: str = "auto") -> SPADEGenerator:
    return SPADEGenerator(label_nc, size, ch, n_up, hidden, impl)


def synthetic_batch(n: int, label_nc: int, size: int, gen: torch.Generator):
    """Random rectangles as a one-hot segmentation map; the target image paints each class a fixed colour."""
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for c in range(1, label_nc):
            y0, x0 = torch.randint(0, size - 4, (2,), generator=gen).tolist()
            h, w = torch.randint(4, size // 2, (2,), generator=gen).tolist()
            labels[i, y0:y0 + h, x0:x0 + w] = c
    seg = F.one_hot(labels, label_nc).permute(0, 3, 1, 2).float()
    palette = torch.linspace(-0.9, 0.9, label_nc * 3).reshape(label_nc, 3)
    img = palette[labels].permute(0, 3, 1, 2)
    return seg, img


def train_example(steps: int = 20, batch: int = 4, label_nc: int = 4, size: int = 32, impl: str = "auto",
                  seed: int = 0) -> list[float]:
    """Trains the generator with an L1 reconstruction loss on synthetic data; returns the loss per step."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    g = build_spade_generator(label_nc, size, impl=impl)
    opt = torch.optim.Adam(g.parameters(), lr=2e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(steps):
        seg, img = synthetic_batch(batch, label_nc, size, gen)
        loss = F.l1_loss(g(seg), img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--impl", default="auto")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    losses = train_example(args.steps, impl=args.impl)
    for i, l in enumerate(losses):
        print(f"step {i:4d}  L1 {l:.4f}")
    print(f"{(time.perf_counter() - t0) / len(losses):.3f} s/iter")


if __name__ == "__main__":
    main()
