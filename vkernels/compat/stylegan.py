"""Drop-in replacement of NVlabs StyleGAN2-ADA / StyleGAN3 `torch_utils.ops` functions by vkernels'.

    import torch_utils.ops.bias_act, torch_utils.ops.upfirdn2d, torch_utils.ops.filtered_lrelu  # (or the networks)
    import vkernels.compat.stylegan as sc
    handle = sc.install()        # every call below now runs vkernels (CPU kernels included)
    ...
    sc.uninstall()               # or handle.uninstall(), or `with sc.install(): ...`

The functions below have StyleGAN's exact signatures (argument names, order, defaults, impl='cuda') and results;
impl='ref' runs vkernels' pure-PyTorch reference, impl='cuda' runs `impl="auto"` (the compiled kernel for the
tensor's device: CPU C++ on CPU tensors, Triton/CUDA on GPU tensors), so StyleGAN's silent fallback to its slow
reference on CPU becomes a fast kernel.

What install() patches: the public functions (bias_act.bias_act; upfirdn2d.setup_filter, upfirdn2d, filter2d,
upsample2d, downsample2d; filtered_lrelu.filtered_lrelu) as attributes of the modules `<prefix>.ops.bias_act`,
`<prefix>.ops.upfirdn2d` and `<prefix>.ops.filtered_lrelu` found in sys.modules, so every `module.function(...)` call
(StyleGAN's own style: `from torch_utils.ops import upfirdn2d; upfirdn2d.upsample2d(...)`) runs vkernels, including
the calls their `_filtered_lrelu_ref` makes. It also rebinds module-level globals of any other imported module that
hold one of the original functions (`from torch_utils.ops.bias_act import bias_act`). Not covered: references held
elsewhere (closures, default arguments, class attributes, lists/dicts, functools.partial objects), functions bound
after install() by a module imported later from a copy made before (import after install() to be safe), graphs that
torch.compile/TorchScript already traced, and StyleGAN's private helpers (`_filtered_lrelu_ref`, `_upfirdn2d_cuda`, ...)
which stay theirs.
"""
from __future__ import annotations

import math
import sys
import types

import torch

import vkernels

__all__ = ["install", "uninstall", "bias_act", "setup_filter", "upfirdn2d", "filter2d", "upsample2d", "downsample2d",
           "filtered_lrelu"]


def _impl(impl):
    if impl == "ref":
        return "reference"
    if impl == "cuda":
        return "auto"
    raise ValueError(f"vkernels.compat.stylegan: impl must be 'ref' or 'cuda' (StyleGAN's names), got {impl!r}")


# StyleGAN's signatures, verbatim; each forwards to vkernels with the impl name mapped.
def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="cuda"):
    return vkernels.bias_act(x, b, dim, act, alpha, gain, clamp, impl=_impl(impl))


def setup_filter(f, device=torch.device("cpu"), normalize=True, flip_filter=False, gain=1, separable=None):
    return vkernels.setup_filter(f, device, normalize, flip_filter, gain, separable)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="cuda"):
    return vkernels.upfirdn2d(x, f, up, down, padding, flip_filter, gain, impl=_impl(impl))


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl="cuda"):
    return vkernels.filter2d(x, f, padding, flip_filter, gain, impl=_impl(impl))


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    return vkernels.upsample2d(x, f, up, padding, flip_filter, gain, impl=_impl(impl))


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    return vkernels.downsample2d(x, f, down, padding, flip_filter, gain, impl=_impl(impl))


def filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=math.sqrt(2), slope=0.2, clamp=None,
                   flip_filter=False, impl="cuda"):
    # StyleGAN passes np.int64 / np.float64 values around; make them plain Python numbers.
    up, down = int(up), int(down)
    if not isinstance(padding, int):
        padding = [int(p) for p in padding]
    return vkernels.filtered_lrelu(x, fu, fd, b, up, down, padding, float(gain), float(slope),
                                   None if clamp is None else float(clamp), flip_filter, impl=_impl(impl))


_PUBLIC = {
    "bias_act": ("bias_act",),
    "upfirdn2d": ("setup_filter", "upfirdn2d", "filter2d", "upsample2d", "downsample2d"),
    "filtered_lrelu": ("filtered_lrelu",),
}


class Installation:
    """What install() changed; uninstall() puts every original back. Also a context manager."""

    def __init__(self):
        self.changes: list[tuple[object, str, object]] = []  # (module, attribute, original value)
        self.active = True

    @property
    def patched(self) -> list[str]:
        """'module.attribute' for every binding replaced."""
        return [f"{m.__name__}.{name}" for m, name, _ in self.changes]

    def uninstall(self) -> None:
        if not self.active:
            return
        for mod, name, orig in reversed(self.changes):
            setattr(mod, name, orig)
        self.active = False
        if _STATE.get("current") is self:
            _STATE.pop("current")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.uninstall()


_STATE: dict = {}


def install(torch_utils: types.ModuleType | str | None = None, rebind_imported: bool = True) -> Installation:
    """Replace StyleGAN's torch_utils.ops functions with vkernels' in an already-imported codebase.

    Args:
        torch_utils: the StyleGAN `torch_utils` package (module or dotted name, e.g. "stylegan3.torch_utils");
            None means "torch_utils".
        rebind_imported: also replace module-level globals of other imported modules that are bound to one of the
            original functions (`from torch_utils.ops.upfirdn2d import upsample2d`).

    Returns:
        An Installation (`.patched` lists what changed, `.uninstall()` undoes it; usable as a context manager).
        Installing again while installed first undoes the previous installation.

    Raises:
        ImportError when none of `<prefix>.ops.bias_act`, `.upfirdn2d`, `.filtered_lrelu` has been imported.
    """
    prefix = torch_utils.__name__ if isinstance(torch_utils, types.ModuleType) else (torch_utils or "torch_utils")
    if not isinstance(prefix, str):
        raise TypeError(f"vkernels.compat.stylegan.install: torch_utils must be a module, a name or None, got "
                        f"{torch_utils!r}")
    if "current" in _STATE:
        _STATE["current"].uninstall()
    ours = sys.modules[__name__]
    inst = Installation()
    originals: dict[int, object] = {}  # id(original function) -> our replacement
    for sub, names in _PUBLIC.items():
        mod = sys.modules.get(f"{prefix}.ops.{sub}")
        if mod is None:
            continue
        for name in names:
            if not hasattr(mod, name):
                continue
            orig = getattr(mod, name)
            new = getattr(ours, name)
            if orig is new:
                continue
            inst.changes.append((mod, name, orig))
            setattr(mod, name, new)
            originals[id(orig)] = (orig, new)
    if not inst.changes:
        raise ImportError(f"vkernels.compat.stylegan.install: none of {prefix}.ops.bias_act, {prefix}.ops.upfirdn2d, "
                          f"{prefix}.ops.filtered_lrelu is imported; import StyleGAN's code first (or pass "
                          f"torch_utils=<its package>)")
    if rebind_imported:
        for mod in list(sys.modules.values()):
            d = getattr(mod, "__dict__", None)
            if not isinstance(d, dict) or mod is ours:
                continue
            for name, val in list(d.items()):
                hit = originals.get(id(val))
                if hit is not None and hit[0] is val:
                    inst.changes.append((mod, name, val))
                    setattr(mod, name, hit[1])
    _STATE["current"] = inst
    return inst


def uninstall() -> None:
    """Undo the current install() (no-op when nothing is installed)."""
    if "current" in _STATE:
        _STATE["current"].uninstall()
