"""A small StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN") on vkernels' public
API only: mapping network (vkernels.pixel_norm + bias_act FC layers), synthesis with vkernels.nn.ModulatedConv2d
(FIR up-sampling, noise, toRGB skips with vkernels.upsample2d), residual discriminator (FIR down-sampling with
vkernels.upfirdn2d / downsample2d, minibatch standard deviation, bias_act), non-saturating logistic loss with lazy R1
and an EMA generator. Layer conventions (equalized learning rate, gains, clamps) follow NVlabs stylegan2-ada-pytorch.

Which kernels run is decided by vkernels' backend choice (vkernels.set_impl("reference") runs the same model on the
unfused pure-PyTorch reference ops), so the two paths share weights and code.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

import vkernels


class FullyConnected(torch.nn.Module):
    """y = bias_act(x @ (W * gain)^T, b * lr_mul, act); equalized learning rate with a learning-rate multiplier."""

    def __init__(self, in_features, out_features, act="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.act = act
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        x = x.matmul((self.weight * self.weight_gain).t())
        return vkernels.bias_act(x, self.bias * self.bias_gain, act=self.act)


class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, w_dim, num_layers=4, lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.w_avg_beta = w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = torch.nn.ModuleList(FullyConnected(dims[i], dims[i + 1], "lrelu", lr_multiplier)
                                          for i in range(num_layers))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, truncation_psi=1.0):
        x = vkernels.pixel_norm(z, dim=1)
        for layer in self.layers:
            x = layer(x)
        if self.training:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class SynthesisBlock(torch.nn.Module):
    """One resolution: [conv0 (up 2)] -> conv1 -> toRGB, RGB skip up-sampled with the FIR filter."""

    def __init__(self, in_ch, out_ch, w_dim, resolution, img_channels, first=False, conv_clamp=256):
        super().__init__()
        self.first = first
        if first:
            self.const = torch.nn.Parameter(torch.randn(out_ch, resolution, resolution))
        else:
            self.conv0 = vkernels.nn.ModulatedConv2d(in_ch, out_ch, 3, w_dim=w_dim, up=2, clamp=conv_clamp,
                                                     resolution=resolution)
        self.conv1 = vkernels.nn.ModulatedConv2d(out_ch, out_ch, 3, w_dim=w_dim, clamp=conv_clamp,
                                                 resolution=resolution)
        self.torgb = vkernels.nn.ModulatedConv2d(out_ch, img_channels, 1, w_dim=w_dim, demodulate=False,
                                                 act="linear", clamp=conv_clamp, use_noise=False)
        self.register_buffer("resample_filter", vkernels.setup_filter([1, 3, 3, 1]))

    def forward(self, x, img, w, noise_mode="random"):
        if self.first:
            x = self.const.unsqueeze(0).expand(w.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, w, noise_mode=noise_mode)
        x = self.conv1(x, w, noise_mode=noise_mode)
        if img is not None:
            img = vkernels.upsample2d(img, self.resample_filter.float())
        y = self.torgb(x, w)
        img = y if img is None else img + y
        return x, img


class Generator(torch.nn.Module):
    def __init__(self, z_dim=64, w_dim=64, resolution=16, img_channels=1, channel_base=1024, channel_max=64,
                 mapping_layers=4):
        super().__init__()
        self.z_dim, self.resolution = z_dim, resolution
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        res = [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in res}
        self.blocks = torch.nn.ModuleList(
            SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels, first=r == 4) for r in res)
        self.register_buffer("pl_mean", torch.zeros([]))  # running mean of path lengths (path-length penalty)

    def synthesis(self, w, noise_mode="random"):
        x = img = None
        for block in self.blocks:
            x, img = block(x, img, w, noise_mode)
        return img

    def forward(self, z, truncation_psi=1.0, noise_mode="random"):
        return self.synthesis(self.mapping(z, truncation_psi), noise_mode)


class Conv2dLayer(torch.nn.Module):
    """StyleGAN's Conv2dLayer: equalized-lr conv, optional FIR down-sampling (filter, then strided conv), bias_act."""

    def __init__(self, in_ch, out_ch, kernel_size, act="lrelu", down=1, bias=True, conv_clamp=None):
        super().__init__()
        self.act, self.down, self.conv_clamp = act, down, conv_clamp
        self.weight = torch.nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = torch.nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", vkernels.setup_filter([1, 3, 3, 1]))

    def forward(self, x, gain=1.0):
        w = self.weight * self.weight_gain
        if self.down > 1:
            fw, k = 4, w.shape[-1]
            p0 = self.padding + (fw - self.down + 1) // 2
            p1 = self.padding + (fw - self.down) // 2
            if k == 1:
                x = vkernels.upfirdn2d(x, self.resample_filter.float(), down=self.down, padding=[p0, p1, p0, p1])
                x = F.conv2d(x, w)
            else:
                x = vkernels.upfirdn2d(x, self.resample_filter.float(), padding=[p0, p1, p0, p1])
                x = F.conv2d(x, w, stride=self.down)
        else:
            x = F.conv2d(x, w, padding=self.padding)
        act_gain = (math.sqrt(2) if self.act == "lrelu" else 1.0) * gain
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return vkernels.bias_act(x, self.bias, act=self.act, gain=act_gain, clamp=clamp)


class DiscriminatorBlock(torch.nn.Module):
    def __init__(self, in_ch, out_ch, conv_clamp=256):
        super().__init__()
        self.conv0 = Conv2dLayer(in_ch, in_ch, 3, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(in_ch, out_ch, 3, down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(in_ch, out_ch, 1, act="linear", down=2, bias=False)

    def forward(self, x):
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class Discriminator(torch.nn.Module):
    """Residual discriminator: fromRGB, FIR-down-sampling residual blocks to 4x4, minibatch std, conv, two FCs."""

    def __init__(self, resolution=16, img_channels=1, channel_base=1024, channel_max=64, mbstd_group=4):
        super().__init__()
        res = [2 ** i for i in range(int(math.log2(resolution)), 2, -1)]
        ch = {r: min(channel_base // r, channel_max) for r in res + [4]}
        self.fromrgb = Conv2dLayer(img_channels, ch[resolution], 1)
        self.blocks = torch.nn.ModuleList(DiscriminatorBlock(ch[r], ch[r // 2]) for r in res)
        self.mbstd_group = mbstd_group
        self.conv = Conv2dLayer(ch[4] + 1, ch[4], 3)
        self.fc = FullyConnected(ch[4] * 16, ch[4], "lrelu")
        self.out = FullyConnected(ch[4], 1)

    def minibatch_std(self, x):
        N, C, H, W = x.shape
        G = min(self.mbstd_group, N)
        while N % G:
            G -= 1
        y = x.reshape(G, -1, 1, C, H, W)
        y = (y - y.mean(0)).square().mean(0)
        y = (y + 1e-8).sqrt().mean([2, 3, 4]).reshape(-1, 1, 1, 1).repeat(G, 1, H, W)
        return torch.cat([x, y], 1)

    def forward(self, img):
        x = self.fromrgb(img)
        for block in self.blocks:
            x = block(x)
        x = self.conv(self.minibatch_std(x))
        return self.out(self.fc(x.flatten(1)))


def r1_penalty(D, real):
    """sum over pixels of |dD(real)/dreal|^2, per sample (double backward through D's ops)."""
    real = real.detach().requires_grad_(True)
    logits = D(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().sum([1, 2, 3]), logits


def path_length_penalty(G, z, decay=0.01):
    """StyleGAN2's path-length regularizer: (|J_w^T y| - a)^2 per sample with y ~ N(0, I) / sqrt(H W) and `a` the
    running mean of the lengths (G.pl_mean, updated in place). Needs double backward through the synthesis network
    (modulated_conv2d's weight pass and epilogue, upfirdn2d, bias_act). One w per sample (no style mixing), so the
    length is taken over w_dim directly (stylegan2-ada averages it over its num_ws copies of w)."""
    w = G.mapping(z)
    img = G.synthesis(w)
    y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * y).sum(), w, create_graph=True)
    lengths = grad.square().sum(1).sqrt()
    with torch.no_grad():
        G.pl_mean.copy_(G.pl_mean.lerp(lengths.mean(), decay))
    return (lengths - G.pl_mean).square()


@torch.no_grad()
def update_ema(ema, model, beta):
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1 - beta)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def make_ema(G):
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    return ema
