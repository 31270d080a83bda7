"""compact_bilinear_pooling in plain PyTorch: the test oracle and the explicit fallback (impl="reference").

Two formulations of the same Tensor Sketch (Gao et al., CVPR 2016):
- `tensor_sketch_per_location`: the definition, as the popular ports compute it: count sketches of every location,
  rfft, product, irfft (n = output_dim), then (optionally) the sum over locations. O(B HW D) memory.
- `compact_bilinear_pooling`: sum_pool=True through the Gram route (G = X Y^T, then a signed index_add of G into D
  bins): no per-location tensors. sum_pool=False is the per-location definition (MCB's (B, D, H, W) output).
"""
import torch

from vkernels._dtypes import acc_dtype


def count_sketch(x, h, s, output_dim):
    """CS(x)[..., d] = sum_{i: h[i] = d} s[i] x[..., i] along the last axis (x: (..., C) -> (..., D))."""
    out = x.new_zeros(x.shape[:-1] + (output_dim,))
    return out.index_add(-1, h, x * s.to(x.dtype))


def tensor_sketch_per_location(x, y, h1, s1, h2, s2, output_dim, sum_pool=True):
    """irfft(rfft(CS1(x_l)) rfft(CS2(y_l)), n=D) at every location l of x: (B, C1, H, W), y: (B, C2, H, W).

    Returns (B, D) summed over locations when sum_pool, else (B, D, H, W). Computes in x's dtype (fp32 for fp16 /
    bf16, which torch.fft does not take at odd sizes)."""
    dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    xl = x.to(dt).permute(0, 2, 3, 1)  # (B, H, W, C1)
    yl = y.to(dt).permute(0, 2, 3, 1)
    if xl.shape[:-1].numel() == 0:  # no locations (MKL's FFT refuses an empty batch)
        ts = xl.new_zeros(xl.shape[:-1] + (output_dim,))
        return ts.sum((1, 2)) if sum_pool else ts.permute(0, 3, 1, 2)
    fx = torch.fft.rfft(count_sketch(xl, h1, s1, output_dim), dim=-1)
    fy = torch.fft.rfft(count_sketch(yl, h2, s2, output_dim), dim=-1)
    ts = torch.fft.irfft(fx * fy, n=output_dim, dim=-1)  # (B, H, W, D)
    if sum_pool:
        return ts.sum((1, 2))
    return ts.permute(0, 3, 1, 2)


def pair_bins(h1, h2, output_dim):
    """(C1 * C2,) int64 output bin of each pair (i, j), row-major: (h1[i] + h2[j]) mod D."""
    return ((h1[:, None] + h2[None, :]) % output_dim).reshape(-1)


def compact_bilinear_pooling(x, y, h1, s1, h2, s2, output_dim, sum_pool=True):
    """Sum-pooled: out[b, (h1[i] + h2[j]) mod D] += s1[i] s2[j] G_b[i, j], G_b = X_b Y_b^T in fp32 (fp64 for fp64),
    returned in x's dtype. Not sum-pooled: the per-location definition, (B, D, H, W) in x's dtype."""
    if not sum_pool:
        return tensor_sketch_per_location(x, y, h1, s1, h2, s2, output_dim, sum_pool=False).to(x.dtype)
    acc = acc_dtype(x.dtype)
    X = x.to(acc).flatten(2)
    Y = y.to(acc).flatten(2)
    G = torch.bmm(X, Y.transpose(1, 2))  # (B, C1, C2)
    coef = (s1.to(acc)[:, None] * s2.to(acc)[None, :]).reshape(-1)
    out = G.new_zeros(G.shape[0], output_dim)
    out = out.index_add(1, pair_bins(h1, h2, output_dim), G.reshape(G.shape[0], G.shape[1] * G.shape[2]) * coef)
    return out.to(x.dtype)


def compact_bilinear_pooling_freq(x, y, h1, s1, h2, s2, output_dim, chunk=64):
    """Sum-pooled, through the frequency-pooled route in plain PyTorch: out_b = irfft(sum_l rfft(CS1(x_l))
    rfft(CS2(y_l)), n=D), locations `chunk` at a time (never all per-location spectra at once), accumulated in fp32
    complex (fp64 for fp64). Returns (B, D) in x's dtype."""
    acc = acc_dtype(x.dtype)
    B, D = x.shape[0], output_dim
    X = x.to(acc).flatten(2).transpose(1, 2)  # (B, HW, C1)
    Y = y.to(acc).flatten(2).transpose(1, 2)
    if B == 0 or X.shape[1] == 0:  # nothing to transform (MKL's FFT refuses an empty batch)
        return x.new_zeros(B, D)
    spec = torch.zeros(B, D // 2 + 1, dtype=torch.complex128 if acc == torch.float64 else torch.complex64,
                       device=x.device)
    for l0 in range(0, X.shape[1], chunk):
        f1 = torch.fft.rfft(count_sketch(X[:, l0:l0 + chunk], h1, s1.to(acc), D), dim=-1)
        f2 = torch.fft.rfft(count_sketch(Y[:, l0:l0 + chunk], h2, s2.to(acc), D), dim=-1)
        spec = spec + (f1 * f2).sum(1)
    return torch.fft.irfft(spec, n=D, dim=-1).to(x.dtype)
