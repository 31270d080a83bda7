"""What the second-order pooling benchmarks share (bench_bilinear_pooling.py, bench_isqrt_cov.py,
bench_compact_bilinear_pooling.py, bench_random_maclaurin_pooling.py): post-ReLU CNN feature maps and the +-1 signs
of the sketches.
"""
import torch


def feature_maps(sizes, device: str):
    """(x, dtype, "BxCxHxW") per (B, C, H, W) of `sizes` and dtype (bf16 and fp32 on CUDA, fp32 on CPU): x post-ReLU
    features from the global RNG."""
    dtypes = [torch.bfloat16, torch.float32] if device == "cuda" else [torch.float32]
    for B, C, H, W in sizes:
        for dtype in dtypes:
            yield torch.relu(torch.randn(B, C, H, W, device=device)).to(dtype), dtype, f"{B}x{C}x{H}x{W}"


def seeded_feature_maps(sizes, device: str, dtype):
    """(size, g, x) per size (B, C, H, W, D) of `sizes`: a CPU generator seeded 0 and x post-ReLU features drawn from
    it first, so that the sketch's draws that follow from g are the same numbers on every device."""
    for B, C, H, W, D in sizes:
        g = torch.Generator().manual_seed(0)
        yield (B, C, H, W, D), g, torch.randn(B, C, H, W, generator=g).relu().to(device=device, dtype=dtype)


def random_signs(shape, g, device: str) -> torch.Tensor:
    """+-1 in fp32, each with probability 1/2 (drawn from g on the CPU)."""
    return (2 * torch.randint(0, 2, shape, generator=g) - 1).float().to(device)
