"""The per-location FFT algorithm of the popular compact bilinear pooling ports, re-implemented as a baseline.

What gdlg/pytorch_compact_bilinear_pooling, DeepInsight-PCALab/CompactBilinearPooling-Pytorch and the TensorFlow
port compute, step by step: move channels last, count-sketch every location by a scatter (index_add) of the signed
channels into D bins, rfft every location's sketch, multiply the two spectra, irfft (n = D), and only then sum over
locations. Memory: several (B, H, W, D) real and (B, H, W, D/2+1) complex tensors, kept for the backward too.
"""
import torch


def per_location_fft_cbp(x, y, h1, s1, h2, s2, output_dim):
    B, C1, H, W = x.shape
    xl = x.permute(0, 2, 3, 1).reshape(-1, C1)  # (B H W, C1)
    yl = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    sk1 = xl.new_zeros(xl.shape[0], output_dim).index_add_(1, h1, xl * s1.to(xl.dtype))
    sk2 = yl.new_zeros(yl.shape[0], output_dim).index_add_(1, h2, yl * s2.to(yl.dtype))
    f1 = torch.fft.rfft(sk1, dim=1)
    f2 = torch.fft.rfft(sk2, dim=1)
    ts = torch.fft.irfft(f1 * f2, n=output_dim, dim=1)
    return ts.view(B, H, W, output_dim).sum((1, 2))
