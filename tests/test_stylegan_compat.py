"""vkernels.stylegan_compat: our functions take StyleGAN's arguments and return its results, and install() swaps
them into an already-imported StyleGAN-like package (a fake torch_utils tree written here from the definitions of
NVlabs' pure-PyTorch reference paths, with their module layout and signatures), then uninstall() restores it."""

import importlib
import inspect
import math
import sys
import textwrap

import pytest
import torch

import vkernels
import vkernels.stylegan_compat as sc

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
    mods = types = {n: importlib.import_module(n) for n in ("torch_utils.ops.bias_act", "torch_utils.ops.upfirdn2d",
                                                            "torch_utils.ops.filtered_lrelu", "training.networks")}
    yield types
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
