"""pixel_norm in plain PyTorch: the test oracle and the explicit fallback (impl="reference")."""
import torch


def pixel_norm(x, dim=1, eps=1e-8):
    """y = x * rsqrt(mean(x^2 over dim) + eps): StyleGAN's normalize_2nd_moment (ProGAN's pixelwise feature norm)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
