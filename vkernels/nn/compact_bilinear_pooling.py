"""CompactBilinearPooling: Tensor Sketch pooling with its random hashes and signs held as buffers."""
from __future__ import annotations

import torch

from vkernels.ops.compact_bilinear_pooling import compact_bilinear_pooling

__all__ = ["CompactBilinearPooling"]


class CompactBilinearPooling(torch.nn.Module):
    """out = vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, output_dim, sum_pool).

    Args:
        input_dim1, input_dim2: C1, C2 (channels of x and y).
        output_dim: D >= 1.
        sum_pool: sum over locations -> (B, D); else (B, D, H, W) (MCB).
        seed: seeds the hashes and signs (a private generator; None draws from torch's global RNG).
        input_layout: "NCHW" (default; x: (B, C, H, W)) or "NHWC" (the TensorFlow port's (B, H, W, C)); 2-D inputs
            (B, C) are taken as one location (gdlg's vector form) and give (B, D).
        impl: default implementation, see `vkernels.resolve_impl`.
        route: "auto" | "gram" | "freq": the sum-pooled route (see `vkernels.compact_bilinear_pooling`).

    The popular ports' argument names are accepted too: input1_size / input2_size / output_size and h1, s1, h2, s2
    (gdlg/pytorch_compact_bilinear_pooling), rand_h_1, rand_s_1, rand_h_2, rand_s_2 (DeepInsight-PCALab's and the
    TensorFlow port's), and `cuda` (ignored: use .to()). Given hashes/signs are used as is (int64 hashes, float
    signs). Output scale: the plain sum over locations of the Tensor Sketch, the same as those ports (none of them
    divides by H W or normalises; apply signed sqrt / L2 afterwards as the CBP paper does).

    Buffers h1, s1, h2, s2 are saved in the state_dict and follow .to(device).
    """

    def __init__(self, input_dim1: int | None = None, input_dim2: int | None = None, output_dim: int | None = None,
                 sum_pool: bool = True, seed: int | None = None, *, input_layout: str = "NCHW", impl: str = "auto",
                 route: str = "auto",
                 input1_size=None, input2_size=None, output_size=None, h1=None, s1=None, h2=None, s2=None,
                 rand_h_1=None, rand_s_1=None, rand_h_2=None, rand_s_2=None, cuda=None):
        super().__init__()
        input_dim1 = _one("input_dim1", input_dim1, "input1_size", input1_size)
        input_dim2 = _one("input_dim2", input_dim2, "input2_size", input2_size)
        output_dim = _one("output_dim", output_dim, "output_size", output_size)
        for name, v in (("input_dim1", input_dim1), ("input_dim2", input_dim2), ("output_dim", output_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"CompactBilinearPooling: {name} must be an int >= 1, got {v!r}")
        if input_layout not in ("NCHW", "NHWC"):
            raise ValueError(f"CompactBilinearPooling: input_layout must be 'NCHW' or 'NHWC', got {input_layout!r}")
        self.input_dim1, self.input_dim2, self.output_dim = input_dim1, input_dim2, output_dim
        if route not in ("auto", "gram", "freq"):
            raise ValueError(f"CompactBilinearPooling: route must be 'auto', 'gram' or 'freq', got {route!r}")
        self.sum_pool, self.input_layout, self.impl, self.route = sum_pool, input_layout, impl, route
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        for k, c, hv, sv in ((1, input_dim1, _one("h1", h1, "rand_h_1", rand_h_1), _one("s1", s1, "rand_s_1", rand_s_1)),
                             (2, input_dim2, _one("h2", h2, "rand_h_2", rand_h_2), _one("s2", s2, "rand_s_2", rand_s_2))):
            h = torch.randint(0, output_dim, (c,), generator=gen) if hv is None else torch.as_tensor(hv).long()
            s = (2 * torch.randint(0, 2, (c,), generator=gen) - 1).float() if sv is None else \
                torch.as_tensor(sv).float()
            if h.shape != (c,) or s.shape != (c,):
                raise ValueError(f"CompactBilinearPooling: h{k} and s{k} must have shape ({c},), got "
                                 f"{tuple(h.shape)} and {tuple(s.shape)}")
            self.register_buffer(f"h{k}", h.clone())
            self.register_buffer(f"s{k}", s.clone())

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = x if y is None else y
        vector = x.ndim == 2
        if vector:  # (B, C): one location
            x, y = x[:, :, None, None], y[:, :, None, None]
        elif self.input_layout == "NHWC":
            x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
        for name, t, want, dim in (("x", x, self.input_dim1, "input_dim1"), ("y", y, self.input_dim2, "input_dim2")):
            if t.ndim == 4 and t.shape[1] != want:  # other ranks: the op's own shape check names the problem
                layout = "(B, C)" if vector else ("(B, H, W, C)" if self.input_layout == "NHWC" else "(B, C, H, W)")
                raise ValueError(f"CompactBilinearPooling: {name} has {t.shape[1]} channels ({layout} layout), but "
                                 f"this module was built for {dim}={want}")
        out = compact_bilinear_pooling(x, y, self.h1, self.s1, self.h2, self.s2, self.output_dim,
                                       sum_pool=self.sum_pool or vector, impl=self.impl, route=self.route)
        if not self.sum_pool and not vector and self.input_layout == "NHWC":
            out = out.permute(0, 2, 3, 1)
        return out

    def extra_repr(self) -> str:
        return (f"input_dim1={self.input_dim1}, input_dim2={self.input_dim2}, output_dim={self.output_dim}, "
                f"sum_pool={self.sum_pool}, input_layout={self.input_layout!r}, impl={self.impl!r}, "
                f"route={self.route!r}")


def _one(name, value, alias, alias_value):
    if value is not None and alias_value is not None:
        raise ValueError(f"CompactBilinearPooling: give {name} or {alias}, not both")
    return value if alias_value is None else alias_value
