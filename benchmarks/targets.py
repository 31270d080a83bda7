"""The project's performance goals and headline cases, as data: the one place the harness, the verdict
(benchmarks/summary.py) and docs/performance.md read them from. Goals are reported MET / MISSED, never asserted.

TARGETS rows: op, device ("cpu" | "cuda"), dtypes (names; () = any), case (a regular expression searched in the size
label; "" = every case of the op), provider ("vkernels" = every "vkernels-<impl>" provider without a suffix such as -gram / -twoop,
or one provider name), metric, comparison, threshold, and where the goal comes from.
Metrics (row fields, see benchmarks/_harness.py): speedup_vs_eager, speedup_vs_compile (the baseline's median over
ours), ratio_vs_floor (ours over the case's floor: x.clone() of the output, or the op's GEMMs alone),
frac_copy_bw (achieved bytes/s over the measured copy rate), peak_vs_eager (our peak bytes over eager's), and
speedup_vs:<provider> (that provider's median over ours).

HEADLINE: op -> {device: regular expression searched in the size label} picking the one case per op that `python -m benchmarks` runs
by default (the size a goal names; the first case of the op when absent). `--full` runs every case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    op: str
    device: str
    dtypes: tuple
    case: str
    provider: str
    metric: str
    cmp: str
    value: float
    source: str = ""

    def describe(self) -> str:
        return f"{self.metric} {self.cmp} {self.value:g}"


_FAST_MEMORY_BOUND = ("forward of a memory-bound op: within 15% of allocating and writing the output, and no "
                      "slower than torch.compile of the reference")
_GPU_MEMORY_BOUND = "GPU, fp16/bf16: 80% of the copy rate, 1.3x torch.compile"
_LOW = ("float16", "bfloat16")


def _memory_bound(op: str, case: str = "", gpu: bool = True) -> list[Target]:
    rows = [Target(op, "cpu", ("float32",), case, "vkernels-cpu", "speedup_vs_compile", ">=", 1.0, _FAST_MEMORY_BOUND),
            Target(op, "cpu", ("float32",), case, "vkernels-cpu", "ratio_vs_floor", "<=", 1.15, _FAST_MEMORY_BOUND)]
    if gpu:
        rows += [Target(op, "cuda", _LOW, case, "vkernels", "frac_copy_bw", ">=", 0.8, _GPU_MEMORY_BOUND),
                 Target(op, "cuda", _LOW, case, "vkernels", "speedup_vs_compile", ">=", 1.3, _GPU_MEMORY_BOUND)]
    return rows


_SECOND_ORDER = "fine-grained pooling: 1.2x torch.compile of the best plain-PyTorch formulation"

TARGETS: list[Target] = [
    *_memory_bound("bias_act"),
    *_memory_bound("spade_norm_act", r"^\d"),  # the forward cases ("fwdbwd-..." are training steps)
    *_memory_bound("upsample_norm_act", r"^(?!.*fwdbwd)"),
    *_memory_bound("pixel_norm", r"^\d+x\d+x\d+x\d+", gpu=False),  # 4-D inputs, not the (N, 512) latents
    *_memory_bound("modulated_conv2d", "^epilogue", gpu=False),
    Target("upfirdn2d", "cuda", (), "", "vkernels", "speedup_vs_compile", ">=", 1.0, "beat torch.compile"),
    Target("upfirdn2d", "cpu", ("float32",), "", "vkernels-cpu", "speedup_vs_compile", ">=", 1.0, "beat torch.compile"),
    Target("upfirdn2d", "cpu", ("float32",), "", "vkernels-cpu", "ratio_vs_floor", "<=", 1.5,
           "polyphase: within 1.5x of writing the output"),
    Target("filtered_lrelu", "cuda", (), "", "vkernels", "speedup_vs_compile", ">=", 1.3, "1.3x torch.compile"),
    Target("filtered_lrelu", "cpu", ("float32",), "", "vkernels-cpu", "speedup_vs_compile", ">=", 1.0,
           "beat torch.compile"),
    Target("modulated_conv2d", "cpu", (), "layer", "vkernels", "speedup_vs_eager", ">=", 1.0,
           "the whole layer no slower than the eager reference"),
    Target("modulated_conv2d", "cuda", (), "layer", "vkernels", "speedup_vs_eager", ">=", 1.0,
           "the whole layer no slower than the eager reference"),
    Target("compact_bilinear_pooling", "cpu", (), "", "vkernels", "speedup_vs_compile", ">=", 1.2, _SECOND_ORDER),
    Target("compact_bilinear_pooling", "cuda", (), "", "vkernels", "speedup_vs_compile", ">=", 1.2, _SECOND_ORDER),
    Target("compact_bilinear_pooling", "cpu", (), "x2048x", "vkernels", "speedup_vs:port-fft", ">=", 20,
           "20x the popular per-location FFT ports"),
    Target("random_maclaurin_pooling", "cpu", (), "", "vkernels", "speedup_vs_compile", ">=", 1.2, _SECOND_ORDER),
    Target("random_maclaurin_pooling", "cuda", (), "", "vkernels", "speedup_vs_compile", ">=", 1.2, _SECOND_ORDER),
    Target("isqrt_cov", "cpu", (), "", "vkernels", "speedup_vs_compile", ">=", 1.2, _SECOND_ORDER),
    Target("bilinear_pooling", "cpu", (), "", "vkernels", "speedup_vs_compile", ">=", 1.2, _SECOND_ORDER),
    Target("bilinear_pooling", "cpu", (), "", "vkernels", "ratio_vs_floor", "<=", 1.3,
           "within 1.3x of the Gram GEMM(s) alone"),
    Target("infonce_bank_loss", "cpu", ("float32",), r"^1024x65536x128-fwd\+bwd", "vkernels-cpu", "speedup_vs_eager",
           ">=", 1.0, "MoCo v2 loss, N=1024 K=65536 d=128: no slower than eager"),
    Target("infonce_bank_loss", "cpu", ("float32",), r"^1024x65536x128-fwd\+bwd", "vkernels-cpu", "peak_vs_eager",
           "<=", 1 / 20, "MoCo v2 loss: 20x less peak memory than eager"),
]

HEADLINE: dict[str, dict[str, str]] = {
    "bias_act": {"cpu": "^32x512x64x64$", "cuda": "^32x512x64x64$"},
    "upfirdn2d": {"cpu": "up-8x512x32x32", "cuda": "up-32x512x32x32"},
    "filtered_lrelu": {"cpu": "8x256x74x74", "cuda": "32x512x74x74"},
    "modulated_conv2d": {"cpu": "epilogue-8x256x64x64", "cuda": "epilogue-32x256x64x64"},
    "pixel_norm": {"cpu": "8x512x32x32", "cuda": "32x512x32x32"},
    "upsample_norm_act": {"cpu": "sg2-32to64-nearest-32x256", "cuda": "sg2-32to64-nearest-32x256"},
    "spade_norm_act": {"cpu": "^8x256x64x64$", "cuda": "^8x256x64x64$"},
    "compact_bilinear_pooling": {"cpu": "8x2048x14x14-D8192-fwd", "cuda": "32x2048x14x14-D8192-fwd"},
    "random_maclaurin_pooling": {"cpu": "8x512x28x28-D8192", "cuda": "32x512x28x28-D8192"},
    "bilinear_pooling": {"cpu": "32x512x28x28-full-fwd", "cuda": "32x2048x14x14-full-fwd"},
    "isqrt_cov": {"cpu": "32x256x28x28-fwd", "cuda": "32x256x28x28-fwd"},
    "infonce_bank_loss": {"cpu": r"1024x65536x128-fwd\+bwd", "cuda": r"4096x65536x128-fwd\+bwd"},
    "infonce_bank_partial": {"cpu": "1024x32768x128-fwd", "cuda": "4096x65536x128-fwd"},
}


def is_ours(provider: str, impls: list[str] | None = None) -> bool:
    """A plain "vkernels-<impl>" provider (what `auto` runs), not a forced route or an older path."""
    if not provider.startswith("vkernels-"):
        return False
    impl = provider[len("vkernels-"):]
    return impl in (impls or ("cpu", "cuda", "triton"))


def targets_for(op: str, size: str, dtype: str, device: str) -> list[Target]:
    return [t for t in TARGETS if t.op == op and t.device == device and (not t.dtypes or dtype in t.dtypes)
            and re.search(t.case, size)]


def headline(op: str, device: str) -> str | None:
    return HEADLINE.get(op, {}).get(device)
