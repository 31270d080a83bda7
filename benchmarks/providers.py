"""What each provider name in the results means: the one list the table legends, the plots and docs/performance.md use.
Plain data (no torch import), so plots can be redrawn anywhere. A bench file that adds a provider adds its line here.
"""
from __future__ import annotations

PROVIDERS = {
    "eager": "the plain-PyTorch reference (vkernels.reference or the paper's code), run eagerly",
    "compile": "torch.compile of that same reference",
    "vkernels-cpu": "vkernels' C++ CPU kernel (what impl='auto' runs on CPU)",
    "vkernels-cuda": "vkernels' CUDA C++ kernel",
    "vkernels-triton": "vkernels' Triton kernel",
    "floor-clone": "floor: x.clone() of an output-sized tensor (allocate, read, write: a memory-bound op's floor)",
    "floor-gemm": "floor: the op's GEMM(s) alone, torch.bmm / mm (a compute-bound op's floor)",
    # compact_bilinear_pooling
    "eager-freq": "plain PyTorch, frequency-pooled route (chunked count sketches, rfft, spectra summed, one irfft)",
    "port-fft": "the popular CBP ports' algorithm: count sketch, rfft, product and irfft per location, then the sum",
    "vkernels-cpu-gram": "vkernels CPU kernel with the Gram route forced (auto picks by a FLOP model)",
    "vkernels-cpu-freq": "vkernels CPU kernel with the frequency route forced",
    "vkernels-triton-gram": "vkernels Triton with the Gram route forced",
    "vkernels-triton-freq": "vkernels Triton with the frequency route forced",
    # random_maclaurin_pooling
    "vkernels-cpu-tiled": "vkernels CPU, project route with the recomputing (tiled) backward, no saved projections",
    "vkernels-triton-tiled": "vkernels Triton, project route with the recomputing (tiled) backward",
    # spade_norm_act
    "vkernels-cpu-twoop": "vkernels CPU, the two-op path (statistics pass, then apply pass: x read twice)",
}


def describe(provider: str) -> str:
    return PROVIDERS.get(provider, "(not described: add it to benchmarks/providers.py)")
