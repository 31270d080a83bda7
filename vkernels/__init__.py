"""vkernels: fused CUDA / Triton / C++ kernels for GANs, fine-grained recognition and self-supervised learning.

Every op is a function here (vkernels.<op>) and a module in vkernels.nn; vkernels.reference.<op> is its plain-PyTorch
twin. `python -m vkernels info` prints what was built and which implementation each op runs per device.
"""
from vkernels._backend import available_impls, resolve_impl, set_impl
from vkernels import reference
from vkernels import ops
from vkernels.ops import *  # noqa: F401,F403
from vkernels import nn

__version__ = "0.1.0"
__all__ = ["available_impls", "resolve_impl", "set_impl", "nn", "reference", "ops", *ops.__all__]
