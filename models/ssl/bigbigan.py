"""BigBiGAN (Donahue & Simonyan 2019): representation learning through a GAN with an encoder and a joint discriminator.

G: models/gan/biggan.py's BigGANGenerator, unconditional: its conditional batch norms are driven by z itself (the
   (N, z_dim) float "soft label" form of vkernels.nn.ConditionalBatchNorm2d, BigGAN's skip-z), so every G block's
   BN + ReLU + x2 upsample is one fused vkernels.upsample_norm_act call.
E: images -> z, a ResNetSmall backbone (models/ssl/encoders.py) and a linear map; deterministic (BigBiGAN's E is
   Gaussian with a learned variance; a point estimate keeps the model small).
D: scores a pair (x, z) with three heads, as BigBiGAN: s_x from the x branch (models/gan/biggan.py's residual
   down-sampling blocks with spectral norm, taken from ProjectionDiscriminator), s_z from the z branch (an MLP),
   s_xz from a joint MLP on both branches' features. The MLP layers are spectrally normalised linear maps followed
   by vkernels.nn.BiasAct (bias + leaky ReLU in one op).
Losses (hinge, per head k in {x, z, xz}; real pairs (x, E(x)), fake pairs (G(z), z)):
   L_D  = sum_k  mean relu(1 - s_k(x, E(x))) + mean relu(1 + s_k(G(z), z))
   L_EG = mean s(x, E(x)) - mean s(G(z), z),  s = s_x + s_z + s_xz.
One training step = one D update then one E+G update (Adam, BigBiGAN's betas (0.5, 0.999)), both from the same
E(x) and G(z) forward. The representation evaluated is E's pooled backbone features (kNN and linear probe).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import vkernels
from models.gan.biggan import BigGANGenerator, ProjectionDiscriminator, hinge_d_loss
from models.ssl.data import step_generator
from models.ssl.encoders import ResNetSmall
from models.ssl.knn import linear_probe, weighted_knn
from models.ssl.moco import _embed


def _sn_linear(cin, cout):
    return nn.utils.parametrizations.spectral_norm(nn.Linear(cin, cout, bias=False))


def _mlp(cin: int, hidden: int, layers: int) -> nn.Sequential:
    """[spectral-norm linear -> vkernels BiasAct(lrelu 0.2)] x layers."""
    mods = []
    for i in range(layers):
        mods += [_sn_linear(cin if i == 0 else hidden, hidden), vkernels.nn.BiasAct(hidden, act="lrelu", alpha=0.2)]
    return nn.Sequential(*mods)


class JointDiscriminator(nn.Module):
    """(x (N, C, R, R), z (N, z_dim)) -> scores (s_x, s_z, s_xz), each (N,)."""

    def __init__(self, img_channels: int, resolution: int, z_dim: int, ch: int = 16, hidden: int = 128):
        super().__init__()
        # Only the residual down-sampling trunk of BigGAN's discriminator: the projection head is class-conditional.
        self.x_blocks = ProjectionDiscriminator(1, resolution, ch, img_channels).blocks
        x_dim = self.x_blocks[-1].conv2.out_channels
        self.z_mlp = _mlp(z_dim, hidden, 2)
        self.joint = _mlp(x_dim + hidden, hidden, 2)
        self.head_x, self.head_z, self.head_xz = _sn_linear(x_dim, 1), _sn_linear(hidden, 1), _sn_linear(hidden, 1)

    def forward(self, x, z):
        h = x
        for blk in self.x_blocks:
            h = blk(h)
        fx = F.relu(h).sum((2, 3))  # BigGAN's global sum pooling
        fz = self.z_mlp(z)
        fxz = self.joint(torch.cat([fx, fz], 1))
        return self.head_x(fx).squeeze(1), self.head_z(fz).squeeze(1), self.head_xz(fxz).squeeze(1)


class BigBiGAN(nn.Module):
    def __init__(self, img_channels: int, resolution: int = 16, z_dim: int = 64, width: int = 16,
                 hidden: int = 128):
        super().__init__()
        self.z_dim = z_dim
        # num_classes=z_dim: the conditional BNs take z as (N, z_dim) soft labels (gain = 1 + z @ W_gain).
        self.G = BigGANGenerator(z_dim, num_classes=z_dim, resolution=resolution, ch=width,
                                 img_channels=img_channels)
        self.E = nn.Module()
        self.E.backbone = ResNetSmall(img_channels, width)
        self.E.to_z = nn.Linear(4 * width, z_dim)
        self.D = JointDiscriminator(img_channels, resolution, z_dim, width, hidden)

    def trainable(self) -> nn.Module:
        return self

    def encode(self, x):
        return self.E.to_z(self.E.backbone(x))

    def generate(self, z):
        return self.G(z, z)

    def make_optimizer(self, args) -> torch.optim.Optimizer:
        """One Adam over E+G and D; the loop must not apply its cosine schedule (`cosine`: False)."""
        ge = list(self.E.parameters()) + list(self.G.parameters())
        return torch.optim.Adam([{"params": ge, "cosine": False}, {"params": list(self.D.parameters()),
                                                                   "cosine": False}],
                                lr=args.lr, betas=(0.5, 0.999))

    def train_step(self, net, opt, x, idx, seed, step, rank):
        """One D update, then one E+G update. Returns (D loss, metrics, None): the D loss is the one logged."""
        g = step_generator(seed, step, rank)
        z = torch.randn(x.shape[0], self.z_dim, generator=g).to(device=x.device, dtype=x.dtype)
        zx, xg = self.encode(x), self.generate(z)
        n = x.shape[0]

        # D step: E(x) and G(z) detached, so only D's parameters get gradients.
        scores = self.D(torch.cat([x, xg.detach()]), torch.cat([zx.detach(), z]))
        loss_d = sum(hinge_d_loss(s[:n], s[n:]) for s in scores)
        opt.zero_grad(set_to_none=True)
        loss_d.backward()
        opt.step()

        # E+G step against the updated D; D's gradients from this backward are dropped before the step.
        s = sum(self.D(torch.cat([x, xg]), torch.cat([zx, z])))
        loss_eg = s[:n].mean() - s[n:].mean()
        opt.zero_grad(set_to_none=True)
        loss_eg.backward()
        for p in self.D.parameters():
            p.grad = None
        opt.step()
        with torch.no_grad():
            d_acc = 0.5 * ((s[:n] > 0).float().mean() + (s[n:] < 0).float().mean())
        return loss_d.detach(), {"loss_eg": loss_eg.detach(), "d_acc": d_acc}, None

    def after_step(self, cache, idx):
        pass

    @torch.no_grad()
    def knn(self, data, k, t, chunk=256) -> dict:
        """kNN and linear probe on E's pooled backbone features (eval mode), training split -> held-out split; also
        the reconstruction error mean |G(E(x)) - x| on the held-out images (eval mode: BN running statistics)."""
        train = F.normalize(_embed(self.E.backbone, data.x, chunk), dim=1)
        test = F.normalize(_embed(self.E.backbone, data.x_test, chunk), dim=1)
        dev = train.device
        y, yt, c = data.y.to(dev), data.y_test.to(dev), data.num_classes
        was = self.training
        self.eval()
        xt = data.x_test[:chunk].to(dev)
        recon = float((self.generate(self.encode(xt)) - xt).abs().mean())
        self.train(was)
        return {"knn": weighted_knn(train, y, test, yt, c, k, t), "probe": linear_probe(train, y, test, yt, c),
                "recon_l1": recon}

    @torch.no_grad()
    def samples(self, data, seed):
        """Rows: held-out images, their reconstructions G(E(x)), samples G(z) for a fixed z (eval mode)."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        x = data.x_test[:16].to(dev)
        z = torch.randn(16, self.z_dim, generator=torch.Generator().manual_seed(seed + 1)).to(dev)
        out = torch.cat([x, self.generate(self.encode(x)), self.generate(z)])
        self.train(was)
        return out, 16
