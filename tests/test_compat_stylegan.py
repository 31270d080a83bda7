"""vkernels.compat.stylegan: our functions take StyleGAN's arguments and return its results, and install() swaps
them into an already-imported StyleGAN-like package (a fake torch_utils tree written here from the definitions of
NVlabs' pure-PyTorch reference paths, with their module layout and signatures), then uninstall() restores it.

The pattern tests re-state, in our own minimal code written from NVlabs' documented behaviour, the network
blocks whose calls matter: the resnet discriminator block and the resnet / skip synthesis blocks with their in-place
adds on op outputs (`y.add_(x)`, `img.add_(y)`, `x.add_(noise)`), a StyleGAN3 synthesis layer, and the loss phases
(G main, path-length regularisation, D main, R1: double backward through every op).

With VKERNELS_STYLEGAN3=/path/to/a/stylegan3/checkout, test_real_* build NVlabs' own networks and loss and compare
their code with and without install() (never in CI; run by hand).
"""

import copy
import importlib
import inspect
import math
import os
import sys
import textwrap
import types

import pytest
import torch

import vkernels
import vkernels.compat.stylegan as sc

# A stand-in for NVlabs' torch_utils/ops: same module names, function names, signatures and defaults; bodies are
# plain PyTorch written from the documented semantics (what their impl='ref' computes). Their impl='cuda' needs a
# CUDA build, which is the reason people swap in vkernels; here it runs the same plain code.
FAKE = {
    "torch_utils/__init__.py": "",
    "torch_utils/ops/__init__.py": "",
    "torch_utils/ops/bias_act.py": '''
        import numpy as np
        import torch
        import torch.nn.functional as F
        _ACTS = {"linear": (lambda x, a: x, 1.0, 0.0), "relu": (lambda x, a: F.relu(x), np.sqrt(2), 0.0),
                 "lrelu": (lambda x, a: F.leaky_relu(x, a), np.sqrt(2), 0.2),
                 "tanh": (lambda x, a: torch.tanh(x), 1.0, 0.0)}
        def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='cuda'):
            assert impl in ['ref', 'cuda']
            fn, def_gain, def_alpha = _ACTS[act]
            alpha = float(alpha if alpha is not None else def_alpha)
            gain = float(gain if gain is not None else def_gain)
            if b is not None:
                x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
            x = fn(x, alpha)
            if gain != 1:
                x = x * gain
            if clamp is not None and clamp >= 0:
                x = x.clamp(-clamp, clamp)
            return x
    ''',
    "torch_utils/ops/upfirdn2d.py": '''
        import numpy as np
        import torch
        import torch.nn.functional as F
        def _size(f):
            return (1, 1) if f is None else (f.shape[-1], f.shape[0])
        def _pad(p):
            if isinstance(p, int):
                p = [p, p]
            if len(p) == 2:
                p = [p[0], p[0], p[1], p[1]]
            return [int(v) for v in p]
        def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
            f = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
            if f.ndim == 0:
                f = f[None]
            if separable is None:
                separable = f.ndim == 1 and f.numel() >= 8
            if f.ndim == 1 and not separable:
                f = f.ger(f)
            if normalize:
                f /= f.sum()
            if flip_filter:
                f = f.flip(list(range(f.ndim)))
            f = f * (gain ** (f.ndim / 2))
            return f.to(device=device)
        def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='cuda'):
            assert impl in ['ref', 'cuda']
            if f is None:
                f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
            n, c, h, w = x.shape
            u = [up, up] if isinstance(up, int) else list(up)
            d = [down, down] if isinstance(down, int) else list(down)
            p = _pad(padding)
            # zero insertion: value at (i*u_y, j*u_x)
            z = x.new_zeros([n, c, h * u[1], w * u[0]])
            z[:, :, ::u[1], ::u[0]] = x
            z = F.pad(z, [max(p[0], 0), max(p[1], 0), max(p[2], 0), max(p[3], 0)])
            z = z[:, :, max(-p[2], 0): z.shape[2] - max(-p[3], 0), max(-p[0], 0): z.shape[3] - max(-p[1], 0)]
            f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
            if not flip_filter:
                f = f.flip(list(range(f.ndim)))
            if f.ndim == 1:
                z = F.conv2d(z, f.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
                z = F.conv2d(z, f.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
            else:
                z = F.conv2d(z, f[None, None].repeat(c, 1, 1, 1), groups=c)
            return z[:, :, ::d[1], ::d[0]]
        def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='cuda'):
            fw, fh = _size(f)
            p = _pad(padding)
            p = [p[0] + fw // 2, p[1] + (fw - 1) // 2, p[2] + fh // 2, p[3] + (fh - 1) // 2]
            return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
        def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
            fw, fh = _size(f)
            p = _pad(padding)
            p = [p[0] + (fw + up - 1) // 2, p[1] + (fw - up) // 2, p[2] + (fh + up - 1) // 2, p[3] + (fh - up) // 2]
            return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * up * up, impl=impl)
        def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
            fw, fh = _size(f)
            p = _pad(padding)
            p = [p[0] + (fw - down + 1) // 2, p[1] + (fw - down) // 2, p[2] + (fh - down + 1) // 2,
                 p[3] + (fh - down) // 2]
            return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
    ''',
    "torch_utils/ops/filtered_lrelu.py": '''
        import numpy as np
        import torch
        from . import upfirdn2d
        from . import bias_act
        def filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=np.sqrt(2), slope=0.2,
                           clamp=None, flip_filter=False, impl='cuda'):
            assert impl in ['ref', 'cuda']
            return _filtered_lrelu_ref(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)
        def _filtered_lrelu_ref(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=np.sqrt(2), slope=0.2,
                                clamp=None, flip_filter=False):
            x = bias_act.bias_act(x=x, b=b)
            x = upfirdn2d.upfirdn2d(x=x, f=fu, up=up, padding=padding, gain=up ** 2, flip_filter=flip_filter)
            x = bias_act.bias_act(x=x, act='lrelu', alpha=slope, gain=gain, clamp=clamp)
            return upfirdn2d.upfirdn2d(x=x, f=fd, down=down, flip_filter=flip_filter)
    ''',
    # A network module in StyleGAN3's style, plus one that binds a function by name (the case rebinding covers).
    "training/__init__.py": "",
    "training/networks.py": '''
        import numpy as np
        from torch_utils.ops import bias_act, upfirdn2d, filtered_lrelu
        from torch_utils.ops.filtered_lrelu import filtered_lrelu as flrelu_bound
        def synthesis_layer(x, fu, fd, b):
            return filtered_lrelu.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=[7, 6, 7, 6], clamp=256,
                                                 gain=np.sqrt(2), slope=0.2)
        def synthesis_layer_bound(x, fu, fd, b):
            return flrelu_bound(x=x, fu=fu, fd=fd, b=b, up=2, down=2, padding=5)
        def skip(x, f):
            return upfirdn2d.upsample2d(x, f, up=2) + upfirdn2d.filter2d(x.repeat_interleave(2, 2)
                                                                           .repeat_interleave(2, 3), f)
        def epilogue(x, b):
            return bias_act.bias_act(x, b, act='lrelu', clamp=64)
    ''',
    # Our own minimal re-statement of NVlabs' network blocks (training/networks_stylegan2.py, networks_stylegan3.py),
    # written from their documented structure: which op runs where, with which gain / clamp, and the in-place adds
    # on op outputs. Resampling is upsample-then-conv / conv-then-downsample instead of conv2d_resample's fused
    # transposed conv; the calls into torch_utils.ops are theirs.
    "training/blocks.py": '''
        import numpy as np
        import torch
        import torch.nn.functional as F
        from torch_utils.ops import bias_act, upfirdn2d, filtered_lrelu
        SQRT_HALF = np.sqrt(0.5)
        def _gain(act):
            return np.sqrt(2) if act == 'lrelu' else 1.0
        class FC(torch.nn.Module):
            def __init__(self, cin, cout, act='linear', bias_init=0.0):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.randn(cout, cin))
                self.bias = torch.nn.Parameter(torch.full([cout], float(bias_init)))
                self.act, self.wg = act, 1 / np.sqrt(cin)
            def forward(self, x):
                w = self.weight * self.wg
                if self.act == 'linear':
                    return torch.addmm(self.bias.unsqueeze(0), x, w.t())
                return bias_act.bias_act(x.matmul(w.t()), self.bias, act=self.act)
        class Conv2dLayer(torch.nn.Module):
            # conv (with resampling) -> bias_act(act, gain=act_gain*gain, clamp=conv_clamp*gain)
            def __init__(self, cin, cout, k, bias=True, act='linear', up=1, down=1, f=None, conv_clamp=None):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.randn(cout, cin, k, k))
                self.bias = torch.nn.Parameter(torch.randn(cout) * 0.1) if bias else None
                self.wg, self.act, self.clamp = 1 / np.sqrt(cin * k * k), act, conv_clamp
                self.up, self.down, self.f = up, down, f
            def forward(self, x, gain=1):
                w = self.weight * self.wg
                if self.up > 1:
                    x = upfirdn2d.upsample2d(x, self.f, up=self.up)
                x = F.conv2d(x, w, padding=w.shape[-1] // 2)
                if self.down > 1:
                    x = upfirdn2d.downsample2d(x, self.f, down=self.down)
                clamp = self.clamp * gain if self.clamp is not None else None
                return bias_act.bias_act(x, self.bias, act=self.act, gain=_gain(self.act) * gain, clamp=clamp)
        class DiscriminatorBlock(torch.nn.Module):
            def __init__(self, cin, tmp, cout, architecture, f, conv_clamp=None):
                super().__init__()
                self.cin, self.architecture, self.f = cin, architecture, f
                if cin == 0 or architecture == 'skip':
                    self.fromrgb = Conv2dLayer(3, tmp, 1, act='lrelu', conv_clamp=conv_clamp)
                self.conv0 = Conv2dLayer(tmp, tmp, 3, act='lrelu', conv_clamp=conv_clamp)
                self.conv1 = Conv2dLayer(tmp, cout, 3, act='lrelu', down=2, f=f, conv_clamp=conv_clamp)
                if architecture == 'resnet':
                    self.skip = Conv2dLayer(tmp, cout, 1, bias=False, down=2, f=f)
            def forward(self, x, img):
                if self.cin == 0 or self.architecture == 'skip':
                    y = self.fromrgb(img)
                    x = x + y if x is not None else y
                    img = upfirdn2d.downsample2d(img, self.f) if self.architecture == 'skip' else None
                if self.architecture == 'resnet':
                    y = self.skip(x, gain=SQRT_HALF)
                    x = self.conv0(x)
                    x = self.conv1(x, gain=SQRT_HALF)
                    x = y.add_(x)
                else:
                    x = self.conv1(self.conv0(x))
                return x, img
        class Discriminator(torch.nn.Module):
            def __init__(self, architecture='resnet', ch=4, res=8, conv_clamp=256):
                super().__init__()
                f = upfirdn2d.setup_filter([1, 3, 3, 1])  # float32 (a plain attribute: .double() keeps it)
                self.architecture = architecture
                self.b0 = DiscriminatorBlock(0, ch, ch, architecture, f, conv_clamp)
                self.b1 = DiscriminatorBlock(ch, ch, ch, architecture, f, conv_clamp)
                if architecture == 'skip':
                    self.fromrgb = Conv2dLayer(3, ch, 1, act='lrelu', conv_clamp=conv_clamp)
                self.conv = Conv2dLayer(ch, ch, 3, act='lrelu', conv_clamp=conv_clamp)
                self.fc = FC(ch * (res // 4) ** 2, ch, act='lrelu')
                self.out = FC(ch, 1)
            def forward(self, img):
                x, im = self.b0(None, img)
                x, im = self.b1(x, im)
                if self.architecture == 'skip':
                    x = x + self.fromrgb(im)
                x = self.conv(x)
                return self.out(self.fc(x.flatten(1)))
        def modulated_conv(x, weight, styles, demodulate=True, noise=None, up=1, f=None):
            # NVlabs' non-fused path: scale activations, convolve, demodulate, then x.add_(noise) on the result.
            x = x * styles.reshape(x.shape[0], -1, 1, 1)
            if up > 1:
                x = upfirdn2d.upsample2d(x, f, up=up)
            x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
            if demodulate:
                w = weight.unsqueeze(0) * styles.reshape(x.shape[0], 1, -1, 1, 1)
                x = x * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(x.shape[0], -1, 1, 1)
            if noise is not None:
                x = x.add_(noise)
            return x
        class SynthesisLayer(torch.nn.Module):
            def __init__(self, cin, cout, w_dim, res, up=1, f=None, conv_clamp=256):
                super().__init__()
                self.affine = FC(w_dim, cin, bias_init=1)
                self.weight = torch.nn.Parameter(torch.randn(cout, cin, 3, 3))
                self.bias = torch.nn.Parameter(torch.randn(cout) * 0.1)
                self.noise_strength = torch.nn.Parameter(torch.tensor(0.1))
                self.res, self.up, self.f, self.clamp = res, up, f, conv_clamp
            def forward(self, x, w, gain=1):
                styles = self.affine(w)
                noise = torch.randn([x.shape[0], 1, self.res, self.res], dtype=x.dtype) * self.noise_strength
                x = modulated_conv(x, self.weight, styles, noise=noise, up=self.up, f=self.f)
                return bias_act.bias_act(x, self.bias, act='lrelu', gain=np.sqrt(2) * gain, clamp=self.clamp * gain)
        class ToRGB(torch.nn.Module):
            def __init__(self, cin, w_dim, conv_clamp=256):
                super().__init__()
                self.affine = FC(w_dim, cin, bias_init=1)
                self.weight = torch.nn.Parameter(torch.randn(3, cin, 1, 1))
                self.bias = torch.nn.Parameter(torch.randn(3) * 0.1)
                self.wg, self.clamp = 1 / np.sqrt(cin), conv_clamp
            def forward(self, x, w):
                x = modulated_conv(x, self.weight, self.affine(w) * self.wg, demodulate=False)
                return bias_act.bias_act(x, self.bias, clamp=self.clamp)
        class SynthesisBlock(torch.nn.Module):
            def __init__(self, cin, cout, w_dim, res, architecture, f, is_last):
                super().__init__()
                self.cin, self.architecture, self.f, self.is_last = cin, architecture, f, is_last
                if cin == 0:
                    self.const = torch.nn.Parameter(torch.randn(cout, res, res))
                else:
                    self.conv0 = SynthesisLayer(cin, cout, w_dim, res, up=2, f=f)
                self.conv1 = SynthesisLayer(cout, cout, w_dim, res)
                if is_last or architecture == 'skip':
                    self.torgb = ToRGB(cout, w_dim)
                if cin != 0 and architecture == 'resnet':
                    self.skip = Conv2dLayer(cin, cout, 1, bias=False, up=2, f=f)
            def forward(self, x, img, ws):
                w_iter = iter(ws.unbind(dim=1))
                if self.cin == 0:
                    x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
                    x = self.conv1(x, next(w_iter))
                elif self.architecture == 'resnet':
                    y = self.skip(x, gain=SQRT_HALF)
                    x = self.conv0(x, next(w_iter))
                    x = self.conv1(x, next(w_iter), gain=SQRT_HALF)
                    x = y.add_(x)
                else:
                    x = self.conv1(self.conv0(x, next(w_iter)), next(w_iter))
                if img is not None:
                    img = upfirdn2d.upsample2d(img, self.f)
                if self.is_last or self.architecture == 'skip':
                    y = self.torgb(x, next(w_iter))
                    img = img.add_(y) if img is not None else y
                return x, img
        class Mapping(torch.nn.Module):
            def __init__(self, z_dim, w_dim, num_ws):
                super().__init__()
                self.fc0, self.fc1, self.num_ws = FC(z_dim, w_dim, act='lrelu'), FC(w_dim, w_dim, act='lrelu'), num_ws
            def forward(self, z):
                x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
                return self.fc1(self.fc0(x)).unsqueeze(1).repeat([1, self.num_ws, 1])
        class Synthesis(torch.nn.Module):
            def __init__(self, w_dim, architecture, ch=4):
                super().__init__()
                f = upfirdn2d.setup_filter([1, 3, 3, 1])  # float32 (a plain attribute: .double() keeps it)
                self.b0 = SynthesisBlock(0, ch, w_dim, 4, architecture, f, False)
                self.b1 = SynthesisBlock(ch, ch, w_dim, 8, architecture, f, True)
                self.n0 = 2 if architecture == 'skip' else 1
            def forward(self, ws):
                x, img = self.b0(None, None, ws[:, :self.n0])
                x, img = self.b1(x, img, ws[:, self.n0 - 1:])
                return img
        class Generator(torch.nn.Module):
            def __init__(self, architecture, z_dim=6, w_dim=6):
                super().__init__()
                self.synthesis = Synthesis(w_dim, architecture)
                self.mapping = Mapping(z_dim, w_dim, 5 if architecture == 'skip' else 4)
            def forward(self, z):
                return self.synthesis(self.mapping(z))
        class SG3Layer(torch.nn.Module):
            # StyleGAN3's SynthesisLayer: modulated conv, then filtered_lrelu (bias, 2x up, lrelu, clamp, 2x down).
            def __init__(self, cin, cout, w_dim, taps=6, is_torgb=False):
                super().__init__()
                self.affine = FC(w_dim, cin, bias_init=1)
                k = 1 if is_torgb else 3
                self.weight = torch.nn.Parameter(torch.randn(cout, cin, k, k))
                self.bias = torch.nn.Parameter(torch.randn(cout) * 0.1)
                t = torch.hann_window(taps + 2, periodic=False, dtype=torch.float64)[1:-1].float()
                self.register_buffer('fu', upfirdn2d.setup_filter(t, separable=True))
                self.register_buffer('fd', upfirdn2d.setup_filter(t, separable=True))
                self.is_torgb, self.taps = is_torgb, taps
            def forward(self, x, w):
                styles = self.affine(w)
                if self.is_torgb:
                    styles = styles / np.sqrt(self.weight.shape[1])
                x = modulated_conv(x, self.weight.to(x.dtype), styles, demodulate=not self.is_torgb)
                if self.is_torgb:
                    return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=256)
                return filtered_lrelu.filtered_lrelu(x=x, fu=self.fu.float(), fd=self.fd.float(),
                                                     b=self.bias.to(x.dtype), up=2, down=2, padding=self.taps - 1,
                                                     gain=np.sqrt(2), slope=0.2, clamp=256)
        class SG3Synthesis(torch.nn.Module):
            def __init__(self, w_dim=6, ch=4, res=8):
                super().__init__()
                self.input = torch.nn.Parameter(torch.randn(ch, res, res))
                self.l0, self.l1 = SG3Layer(ch, ch, w_dim), SG3Layer(ch, ch, w_dim)
                self.torgb = SG3Layer(ch, 3, w_dim, is_torgb=True)
            def forward(self, ws):
                x = self.input.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
                for layer, w in zip((self.l0, self.l1, self.torgb), ws.unbind(dim=1)):
                    x = layer(x, w)
                return x
        class SG3Generator(torch.nn.Module):
            def __init__(self, z_dim=6, w_dim=6):
                super().__init__()
                self.synthesis, self.mapping = SG3Synthesis(w_dim), Mapping(z_dim, w_dim, 3)
            def forward(self, z):
                return self.synthesis(self.mapping(z))
        def loss_phases(G, D, z, real, r1_gamma=2.0, pl_weight=2.0, pl_mean=0.5):
            """StyleGAN2Loss's phases (training/loss.py): Gmain, Greg (path length), Dmain, Dreg (R1).
            Returns {name: value or gradient}."""
            out = {}
            gp, dp = list(G.parameters()), list(D.parameters())
            loss = F.softplus(-D(G(z))).mean()
            out['Gmain'] = loss
            out.update({f'Gmain.{i}': g for i, g in enumerate(torch.autograd.grad(loss, gp, allow_unused=True))})
            ws = G.mapping(z[:z.shape[0] // 2])
            img = G.synthesis(ws)
            pl_noise = torch.randn_like(img) / np.sqrt(img.shape[2] * img.shape[3])
            pl_grads = torch.autograd.grad([(img * pl_noise).sum()], [ws], create_graph=True)[0]
            pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
            loss = (pl_lengths - pl_mean).square().mean() * pl_weight
            out['Greg'] = loss
            out.update({f'Greg.{i}': g for i, g in enumerate(torch.autograd.grad(loss, gp, allow_unused=True))})
            loss = F.softplus(D(G(z).detach())).mean() + F.softplus(-D(real)).mean()
            out['Dmain'] = loss
            out.update({f'Dmain.{i}': g for i, g in enumerate(torch.autograd.grad(loss, dp, allow_unused=True))})
            real_tmp = real.detach().requires_grad_(True)
            r1_grads = torch.autograd.grad([D(real_tmp).sum()], [real_tmp], create_graph=True)[0]
            loss = r1_grads.square().sum([1, 2, 3]).mean() * (r1_gamma / 2)
            out['Dreg'] = loss
            out.update({f'Dreg.{i}': g for i, g in enumerate(torch.autograd.grad(loss, dp, allow_unused=True))})
            return out
    ''',
}


@pytest.fixture
def stylegan(tmp_path, monkeypatch):
    for rel, src in FAKE.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "training")]:
        monkeypatch.delitem(sys.modules, name)
    mods = {n: importlib.import_module(n) for n in ("torch_utils.ops.bias_act", "torch_utils.ops.upfirdn2d",
                                                            "torch_utils.ops.filtered_lrelu", "training.networks",
                                                            "training.blocks")}
    yield mods
    sc.uninstall()
    for name in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "training")]:
        sys.modules.pop(name, None)
    del mods


def test_signatures_match_stylegans(stylegan):
    """Every replacement has the original's parameter names, order and defaults."""
    for mod_name, names in sc._PUBLIC.items():
        mod = stylegan[f"torch_utils.ops.{mod_name}"]
        for name in names:
            theirs, ours = inspect.signature(getattr(mod, name)), inspect.signature(getattr(sc, name))
            assert list(theirs.parameters) == list(ours.parameters), name
            for p in theirs.parameters.values():
                q = ours.parameters[p.name]
                if isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
                    assert math.isclose(float(p.default), float(q.default)), (name, p.name)
                else:
                    assert str(p.default) == str(q.default), (name, p.name, p.default, q.default)


def _inputs():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    f = torch.rand(6) + 0.5
    return x, b, f / f.sum()


def _run_all(nets, fl, ud, ba):
    x, b, f = _inputs()
    blur = ud.setup_filter([1, 3, 3, 1])
    return [
        nets.synthesis_layer(x, f, f, b),
        nets.synthesis_layer_bound(x, f, f, b),
        nets.skip(x, blur),
        nets.epilogue(x, b),
        fl.filtered_lrelu(x, f, f.outer(f), b, 2, 1, (3, 2, 1, 0), 1.3, 0.1, 0.5, True, 'ref'),
        ud.upfirdn2d(x, blur, 2, 1, [2, 1, 2, 1], False, 4, 'cuda'),
        ud.downsample2d(x, blur, 2, 1, True, 1.0, 'ref'),
        ba.bias_act(x, b, 1, 'tanh', None, 2.0, 0.7, 'cuda'),
        ud.setup_filter([1, 2, 3], normalize=False, flip_filter=True, gain=4, separable=True),
    ]


def test_install_swaps_results_are_unchanged_and_uninstall_restores(stylegan):
    ba, ud, fl, nets = (stylegan[n] for n in ("torch_utils.ops.bias_act", "torch_utils.ops.upfirdn2d",
                                              "torch_utils.ops.filtered_lrelu", "training.networks"))
    originals = {n: getattr(m, n) for m, ns in ((ba, ["bias_act"]), (fl, ["filtered_lrelu"]),
                                                (ud, list(sc._PUBLIC["upfirdn2d"]))) for n in ns}
    bound = nets.flrelu_bound
    torch.manual_seed(1)
    theirs = _run_all(nets, fl, ud, ba)

    handle = sc.install()
    assert fl.filtered_lrelu is sc.filtered_lrelu and ud.upsample2d is sc.upsample2d and ba.bias_act is sc.bias_act
    assert nets.flrelu_bound is sc.filtered_lrelu, "module-level names bound to an original are rebound"
    assert "training.networks.flrelu_bound" in handle.patched
    assert "torch_utils.ops.filtered_lrelu.filtered_lrelu" in handle.patched
    torch.manual_seed(1)
    ours = _run_all(nets, fl, ud, ba)
    for i, (a, b) in enumerate(zip(theirs, ours)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9, msg=f"call {i}")
    # The swapped functions really are vkernels' (not StyleGAN's code running on): a CPU tensor runs our C++ kernel.
    assert vkernels.resolve_impl("filtered_lrelu", _inputs()[0]) == "cpu"

    sc.uninstall()
    assert not handle.active
    for n, orig in originals.items():
        mod = ba if n == "bias_act" else fl if n == "filtered_lrelu" else ud
        assert getattr(mod, n) is orig, n
    assert nets.flrelu_bound is bound
    sc.uninstall()  # no-op when nothing is installed


def test_install_is_a_context_manager_and_reinstall_is_clean(stylegan):
    fl = stylegan["torch_utils.ops.filtered_lrelu"]
    orig = fl.filtered_lrelu
    sc.install()
    with sc.install("torch_utils") as h:  # re-installing undoes the first install, then installs again
        assert fl.filtered_lrelu is sc.filtered_lrelu
        assert len([p for p in h.patched if p.endswith(".filtered_lrelu.filtered_lrelu")]) == 1
    assert fl.filtered_lrelu is orig
    with sc.install(importlib.import_module("torch_utils")):
        assert fl.filtered_lrelu is sc.filtered_lrelu
    assert fl.filtered_lrelu is orig


def test_gradients_through_the_installed_functions(stylegan):
    nets = stylegan["training.networks"]
    x, b, f = _inputs()
    grads = []
    for use_ours in (False, True):
        if use_ours:
            sc.install()
        xs, bs = x.clone().requires_grad_(), b.clone().requires_grad_()
        (nets.synthesis_layer(xs, f, f, bs).square().sum() + nets.epilogue(xs, bs).sum()).backward()
        grads.append((xs.grad, bs.grad))
    torch.testing.assert_close(grads[1], grads[0])


def test_install_errors():
    for name in [m for m in sys.modules if m.split(".")[0] == "no_such_pkg"]:
        sys.modules.pop(name)
    with pytest.raises(ImportError, match="none of no_such_pkg.ops.bias_act"):
        sc.install("no_such_pkg")
    with pytest.raises(TypeError, match="torch_utils must be a module"):
        sc.install(42)
    with pytest.raises(ValueError, match="impl must be 'ref' or 'cuda'"):
        sc.filtered_lrelu(torch.randn(1, 1, 4, 4), impl="auto")


def _phases(blocks, G_arch, D_arch, sg3=False):
    torch.manual_seed(3)
    G = (blocks.SG3Generator() if sg3 else blocks.Generator(G_arch)).double()
    D = blocks.Discriminator(D_arch).double()
    z = torch.randn(4, 6, dtype=torch.float64)
    real = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    return blocks.loss_phases(G, D, z, real)


@pytest.mark.parametrize("G_arch,D_arch,sg3", [("resnet", "resnet", False), ("skip", "skip", False),
                                               (None, "resnet", True)], ids=["sg2-resnet", "sg2-skip", "sg3"])
def test_pattern_loss_phases_match_after_install(stylegan, G_arch, D_arch, sg3):
    """NVlabs' block structure (resnet D and G with `y.add_(x)` after a linear skip bias_act, skip G with
    `img.add_(y)` after upsample2d, `x.add_(noise)` after the conv, StyleGAN3 filtered_lrelu layers) through the
    four loss phases: G main, path length (create_graph through G), D main, R1 (create_graph through D). Every loss
    and every parameter gradient after install() equals the plain-PyTorch run."""
    blocks = stylegan["training.blocks"]
    theirs = _phases(blocks, G_arch, D_arch, sg3)
    sc.install()
    ours = _phases(blocks, G_arch, D_arch, sg3)
    assert theirs.keys() == ours.keys()
    nonzero = 0
    for k in theirs:
        if theirs[k] is None:
            assert ours[k] is None, k
            continue
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-9, atol=1e-10, msg=lambda m, k=k: f"{k}: {m}")
        nonzero += bool(theirs[k].abs().max() > 0)
    assert nonzero > len(theirs) // 2, "most gradients must be nonzero for the comparison to mean anything"


def test_pattern_resnet_add_on_a_saved_output_raises_like_nvlabs(stylegan):
    """The other side of NVlabs' rule: an activation that keeps its output (lrelu) refuses an in-place change of it
    before backward, after install() as with NVlabs' CUDA op; the linear skip (keeps nothing) accepts it."""
    if vkernels.resolve_impl("bias_act", torch.zeros(1)) == "reference":
        pytest.skip("no compiled bias_act: install() runs the reference, PyTorch's composite")
    sc.install()
    ba = stylegan["torch_utils.ops.bias_act"]
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    y = ba.bias_act(x * 1, None, act="linear", gain=math.sqrt(0.5))
    h = ba.bias_act(x * 1, torch.zeros(3, dtype=torch.float64), act="lrelu")
    y.add_(h).sum().backward()  # fine: linear saved nothing
    h = ba.bias_act(x * 1, torch.zeros(3, dtype=torch.float64), act="lrelu")
    h.add_(y.detach())
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


def test_old_module_name_is_an_alias():
    import vkernels.stylegan_compat as old

    assert old is sc and old.install is sc.install


# ---- NVlabs' real code (opt-in: VKERNELS_STYLEGAN3=/path/to/stylegan3; never in CI) -------------------------------
# Their custom ops take their pure-PyTorch reference path on CPU tensors (no plugin is built), so "theirs" below is
# NVlabs' own reference code and "ours" the same code after install().
SG3_PATH = os.environ.get("VKERNELS_STYLEGAN3")
real_checkout = pytest.mark.skipif(not SG3_PATH, reason="set VKERNELS_STYLEGAN3=/path/to/a stylegan3 checkout")
_THEIR_PACKAGES = ("dnnlib", "torch_utils", "training", "legacy", "metrics")


def _purge():
    for name in [m for m in sys.modules if m.split(".")[0] in _THEIR_PACKAGES]:
        sys.modules.pop(name, None)


@pytest.fixture
def nvlabs(monkeypatch):
    _purge()
    monkeypatch.syspath_prepend(SG3_PATH)
    ns = types.SimpleNamespace(**{n.rsplit(".", 1)[-1]: importlib.import_module(n) for n in (
        "torch_utils.ops.bias_act", "torch_utils.ops.upfirdn2d", "torch_utils.ops.filtered_lrelu",
        "training.networks_stylegan2", "training.networks_stylegan3", "training.loss")})
    assert ns.networks_stylegan2.__file__.startswith(os.path.abspath(SG3_PATH)), ns.networks_stylegan2.__file__
    yield ns
    sc.uninstall()
    _purge()


def _nets(ns, g_kind):
    """Small networks with train.py's settings: D resnet (its default), conv_clamp 256; fp32 (CPU forces it)."""
    torch.manual_seed(0)
    common = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2))
    if g_kind.startswith("sg2"):
        G = ns.networks_stylegan2.Generator(**common, channel_base=256, channel_max=16, num_fp16_res=0,
                                            conv_clamp=256, architecture=g_kind.split("-")[1])
    else:
        r = g_kind == "sg3-r"
        G = ns.networks_stylegan3.Generator(**common, channel_base=512 if r else 256, channel_max=16, num_layers=6,
                                            num_fp16_res=0, conv_clamp=256, conv_kernel=1 if r else 3,
                                            use_radial_filters=r, magnitude_ema_beta=0.5 ** (4 / 20000))
    D = ns.networks_stylegan2.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256,
                                            channel_max=16, num_fp16_res=0, conv_clamp=256,
                                            epilogue_kwargs=dict(mbstd_group_size=2))
    return G, D


def _forward_backward_r1_pl(G, D):
    """Outputs, G and D gradients of the G loss, R1 and path-length penalties and their parameter gradients."""
    torch.manual_seed(1)
    z, c = torch.randn(4, G.z_dim), torch.zeros(4, 0)
    real = torch.randn(4, 3, 16, 16)
    out = {}
    img = G(z, c)
    logits = D(img, c)
    out["img"], out["logits"] = img, logits
    gp, dp = [p for p in G.parameters()], [p for p in D.parameters()]
    out.update(_grads(torch.nn.functional.softplus(-logits).mean(), gp + dp, "Gmain"))
    real_tmp = real.detach().requires_grad_(True)
    r1_grads = torch.autograd.grad([D(real_tmp, c).sum()], [real_tmp], create_graph=True)[0]
    r1 = r1_grads.square().sum([1, 2, 3]).mean()
    out["r1"] = r1
    out.update(_grads(r1, dp, "r1"))
    ws = G.mapping(z[:2], c[:2])
    img = G.synthesis(ws)
    pl_noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    pl_grads = torch.autograd.grad([(img * pl_noise).sum()], [ws], create_graph=True)[0]
    pl = (pl_grads.square().sum(2).mean(1).sqrt() - 0.5).square().mean()
    out["pl"] = pl
    out.update(_grads(pl, gp, "pl"))
    return {k: v.detach() for k, v in out.items()}


def _grads(loss, params, name):
    """{name.i: gradient}; a parameter the loss does not reach gets zeros (autograd gives None when a graph holds
    no path to it, and a zero tensor when it does, e.g. a bias seen through a lrelu mask in double backward)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {f"{name}.{i}": torch.zeros_like(p) if g is None else g for i, (g, p) in enumerate(zip(grads, params))}


def _train(ns, G, D, steps=2):
    """A couple of iterations of training_loop.py's phase loop (Gmain, Greg, Dmain, Dreg) through their
    StyleGAN2Loss, with the optimizer settings of train.py (Adam, betas (0, 0.99), lr 0.0025)."""
    loss = ns.loss.StyleGAN2Loss(device=torch.device("cpu"), G=G, D=D, r1_gamma=1.0, style_mixing_prob=0.9,
                                 pl_weight=2.0, pl_no_weight_grad=True)
    opt = {G: torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99)),
           D: torch.optim.Adam(D.parameters(), lr=0.0025, betas=(0.0, 0.99))}
    torch.manual_seed(2)
    for _ in range(steps):
        real, z, c = torch.randn(4, 3, 16, 16), torch.randn(4, G.z_dim), torch.zeros(4, 0)
        for phase, module in (("Gmain", G), ("Greg", G), ("Dmain", D), ("Dreg", D)):
            opt[module].zero_grad(set_to_none=True)
            module.requires_grad_(True)
            loss.accumulate_gradients(phase=phase, real_img=real, real_c=c, gen_z=z, gen_c=c, gain=1, cur_nimg=0)
            module.requires_grad_(False)
            opt[module].step()
    out = {f"G.{k}": v for k, v in G.state_dict().items()}
    out.update({f"D.{k}": v for k, v in D.state_dict().items()})
    out["pl_mean"] = loss.pl_mean
    return {k: v.detach().clone() for k, v in out.items() if v.is_floating_point()}


def _diffs(theirs, ours):
    """Max abs difference and max difference relative to the tensor's own max |value|, over every entry."""
    assert theirs.keys() == ours.keys()
    abs_d = rel_d = 0.0
    worst = None
    for k in theirs:
        d = float((ours[k].double() - theirs[k].double()).abs().max()) if theirs[k].numel() else 0.0
        scale = float(theirs[k].double().abs().max()) if theirs[k].numel() else 0.0
        r = d / scale if scale > 0 else d
        abs_d = max(abs_d, d)
        if r >= rel_d:
            rel_d, worst = r, k
    return abs_d, rel_d, worst


@real_checkout
@pytest.mark.parametrize("g_kind", ["sg2-resnet", "sg2-skip", "sg3-t", "sg3-r"])
def test_real_nvlabs_networks_match_after_install(nvlabs, g_kind):
    """NVlabs' Generator and Discriminator (resnet), their code with and without install(): outputs, every
    gradient of the G loss, R1 and path length; then two training iterations through their StyleGAN2Loss."""
    G, D = _nets(nvlabs, g_kind)
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    init = {f"G.{k}": v.clone() for k, v in G.state_dict().items() if v.is_floating_point()}
    theirs = _forward_backward_r1_pl(G, D)
    theirs_train = _train(nvlabs, G, D)
    handle = sc.install()
    assert "torch_utils.ops.bias_act.bias_act" in handle.patched
    ours = _forward_backward_r1_pl(G2, D2)
    ours_train = _train(nvlabs, G2, D2)
    fb, tr = _diffs(theirs, ours), _diffs(theirs_train, ours_train)
    print(f"\n{g_kind}: forward/backward/R1/PL max abs {fb[0]:.3g}, max rel {fb[1]:.3g} ({fb[2]}); "
          f"after 2 training iterations: params max abs {tr[0]:.3g}, max rel {tr[1]:.3g} ({tr[2]})")
    assert fb[1] < 1e-3, fb  # fp32; R1 and path length are double backward
    assert max(float((ours_train[k] - v).abs().max()) for k, v in init.items()) > 1e-3, "training moved nothing"
    # Adam's first steps move each weight by ~lr * sign(grad): a gradient component within rounding of 0 may flip.
    assert tr[0] < 2 * 0.0025 * 2 + 1e-5, tr
