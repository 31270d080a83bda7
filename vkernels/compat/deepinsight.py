"""DeepInsight-PCALab/CompactBilinearPooling-Pytorch's `CompactBilinearPooling`, on vkernels.compact_bilinear_pooling.

    # from CompactBilinearPooling import CompactBilinearPooling        (theirs)
    from vkernels.compat.deepinsight import CompactBilinearPooling     # (ours: same calls, same numbers)

Same as theirs: the constructor's names, positional order and defaults; the default sketches (their global numpy
seeds 1, 3, 5, 7, drawn the way they draw them, so every construction gives the same hashes and signs bit for bit
and leaves numpy's global RNG in the same state); an empty state_dict (their sketch matrices are plain attributes,
not buffers: checkpoints load with strict=True both ways); `sparse_sketch_matrix1/2` (built on demand here); the
output (B, D) with sum_pool, else (B, H, W, D), contiguous. The assert on the channel counts.

Different, only where theirs fails: any float dtype (theirs takes fp32 only), inputs on any device (the hashes follow
the module's `.to()` / `.cuda()` and, failing that, the input), and `cuda=True` without CUDA keeps the hashes on the
CPU (theirs raises there). Never computed: the dense (C, D) sketch matrices and the per-location FFTs; the
sum-pooled output is one Gram matrix per image scattered into D bins (or the frequency route for wide inputs).
"""
from __future__ import annotations

import numpy as np
import torch

from vkernels.ops.compact_bilinear_pooling import compact_bilinear_pooling

__all__ = ["CompactBilinearPooling"]


class CompactBilinearPooling(torch.nn.Module):
    """Compact bilinear pooling (Gao et al., CVPR 2016) of two feature maps, DeepInsight's interface.

    Args:
        input_dim1, input_dim2: channels C1, C2 of bottom1, bottom2.
        output_dim: D.
        sum_pool: True -> (B, D) summed over locations; False -> (B, H, W, D).
        cuda: theirs puts the sketch on the GPU at construction; here the hashes go to CUDA when it is available
            and otherwise stay on the CPU.
        rand_h_1, rand_h_2: optional 1D arrays (numpy or torch) of hashes in [0, output_dim), lengths C1, C2.
        rand_s_1, rand_s_2: optional 1D arrays of +1/-1, same lengths. Each one left None is drawn as theirs:
            np.random.seed(1); randint(output_dim, size=C1) for h1, seed 3: 2 randint(2) - 1 for s1, seeds 5 and 7
            for h2 and s2.
    """

    def __init__(self, input_dim1, input_dim2, output_dim, sum_pool=True, cuda=True,
                 rand_h_1=None, rand_s_1=None, rand_h_2=None, rand_s_2=None):
        super().__init__()
        self.input_dim1 = input_dim1
        self.input_dim2 = input_dim2
        self.output_dim = output_dim
        self.sum_pool = sum_pool

        # Draw order and seeds as theirs (h1, s1, h2, s2): same values and the same global numpy state afterwards.
        h1, s1 = _sketch("1", rand_h_1, rand_s_1, input_dim1, output_dim, seeds=(1, 3))
        h2, s2 = _sketch("2", rand_h_2, rand_s_2, input_dim2, output_dim, seeds=(5, 7))

        device = "cuda" if cuda and torch.cuda.is_available() else "cpu"
        # Non-persistent: they move with .to() / .cuda() but stay out of the state_dict, which is empty in theirs.
        for name, t in (("rand_h_1", h1), ("rand_s_1", s1), ("rand_h_2", h2), ("rand_s_2", s2)):
            self.register_buffer(name, t.to(device), persistent=False)

    @property
    def sparse_sketch_matrix1(self) -> torch.Tensor:
        """Their dense (input_dim1, output_dim) fp32 count-sketch matrix, built on demand (never used here)."""
        return _sketch_matrix(self.rand_h_1, self.rand_s_1, self.output_dim)

    @property
    def sparse_sketch_matrix2(self) -> torch.Tensor:
        """Their dense (input_dim2, output_dim) fp32 count-sketch matrix, built on demand (never used here)."""
        return _sketch_matrix(self.rand_h_2, self.rand_s_2, self.output_dim)

    @staticmethod
    def generate_sketch_matrix(rand_h, rand_s, output_dim):
        """Their helper: the dense (len(rand_h), output_dim) fp32 matrix with rand_s[i] at (i, rand_h[i])."""
        h, s = _hashes_signs("", rand_h, rand_s, output_dim)
        return _sketch_matrix(h, s, output_dim)

    def forward(self, bottom1, bottom2):
        """bottom1: (B, input_dim1, H, W), bottom2: (B, input_dim2, H, W) -> (B, D) or (B, H, W, D)."""
        assert bottom1.size(1) == self.input_dim1 and bottom2.size(1) == self.input_dim2
        h1, s1, h2, s2 = (t if t.device == bottom1.device else t.to(bottom1.device)
                          for t in (self.rand_h_1, self.rand_s_1, self.rand_h_2, self.rand_s_2))
        out = compact_bilinear_pooling(bottom1, bottom2, h1, s1, h2, s2, int(self.output_dim), self.sum_pool)
        if not self.sum_pool:
            out = out.permute(0, 2, 3, 1).contiguous()  # ours is (B, D, H, W); theirs (B, H, W, D)
        return out

    def extra_repr(self) -> str:
        return (f"input_dim1={self.input_dim1}, input_dim2={self.input_dim2}, output_dim={self.output_dim}, "
                f"sum_pool={self.sum_pool}")


def _sketch(which, rand_h, rand_s, channels, output_dim, seeds):
    """One input's hashes and signs: rand_h / rand_s when given, else drawn as theirs draws them (numpy's global RNG
    seeded seeds[0] for the hashes, seeds[1] for the signs, in that order), as _hashes_signs returns them."""
    if rand_h is None:
        np.random.seed(seeds[0])
        rand_h = np.random.randint(output_dim, size=channels)
    if rand_s is None:
        np.random.seed(seeds[1])
        rand_s = 2 * np.random.randint(2, size=channels) - 1
    return _hashes_signs(which, rand_h, rand_s, output_dim)


def _hashes_signs(which, rand_h, rand_s, output_dim):
    """int64 hashes and fp32 signs (theirs casts to these) as tensors, checked as theirs asserts."""
    h = torch.as_tensor(np.asarray(rand_h).astype(np.int64) if not isinstance(rand_h, torch.Tensor) else rand_h)
    s = torch.as_tensor(np.asarray(rand_s).astype(np.float32) if not isinstance(rand_s, torch.Tensor) else rand_s)
    h, s = h.to(torch.int64).cpu(), s.to(torch.float32).cpu()
    if h.ndim != 1 or s.ndim != 1 or len(h) != len(s):
        raise ValueError(f"CompactBilinearPooling: rand_h_{which} and rand_s_{which} must be 1D of one length, got "
                         f"shapes {tuple(h.shape)} and {tuple(s.shape)}")
    if len(h) and (int(h.min()) < 0 or int(h.max()) >= output_dim):
        raise ValueError(f"CompactBilinearPooling: rand_h_{which} must hold values in [0, output_dim = "
                         f"{output_dim}), got [{int(h.min())}, {int(h.max())}]")
    return h, s


def _sketch_matrix(h, s, output_dim):
    m = torch.zeros(len(h), output_dim, dtype=torch.float32, device=h.device)
    m[torch.arange(len(h), device=h.device), h] = s.to(torch.float32)
    return m
