"""Build vkernels._C: C++ CPU kernels always, CUDA kernels when this torch and machine can build them.

VKERNELS_CUDA=auto (default) builds CUDA sources when torch is a CUDA build and nvcc + CUDA_HOME are found;
VKERNELS_CUDA=1 requires them and fails with the reason; VKERNELS_CUDA=0 never builds them.
TORCH_CUDA_ARCH_LIST overrides the default architectures (8.0;9.0).
VKERNELS_CPU_ISA=avx2 (default on x86-64 machines that have it) | default picks the at::vec instruction set.
"""
import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home():
    """CUDA_HOME, or the toolkit folder behind nvcc. The nvcc on PATH may be a shell shim, so resolve the
    real compiler rather than taking the shim's parent folder (which links against the wrong root)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    with open(nvcc, "rb") as f:
        head = f.read(256)
    if head.startswith(b"#!"):  # a shim: take the path it execs
        for tok in head.decode(errors="ignore").split():
            if tok.endswith("/bin/nvcc") and os.path.exists(tok):
                return os.path.dirname(os.path.dirname(tok))
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _want_cuda():
    mode = os.environ.get("VKERNELS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"VKERNELS_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, "VKERNELS_CUDA=0"
    import torch

    reasons = []
    if not torch.version.cuda:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    home = _cuda_home()
    if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        reasons.append("no CUDA toolkit found (set CUDA_HOME to the folder that holds bin/nvcc)")
    if reasons:
        if mode == "1":
            sys.exit("VKERNELS_CUDA=1 but CUDA sources cannot be built: " + "; ".join(reasons))
        return False, "; ".join(reasons)
    os.environ["CUDA_HOME"] = home  # cpp_extension reads it at import; set before that import
    return True, home


def _cpu_isa():
    isa = os.environ.get("VKERNELS_CPU_ISA")
    if isa is None:
        isa = "default"
        if platform.machine() in ("x86_64", "AMD64"):
            try:
                with open("/proc/cpuinfo") as f:
                    flags = f.read()
                if " avx2 " in flags and " fma " in flags and " f16c " in flags:
                    isa = "avx2"
            except OSError:
                pass
    if isa not in ("avx2", "default"):
        sys.exit(f"VKERNELS_CPU_ISA must be avx2 or default, got {isa!r}")
    return isa


# Minutes a build takes on the project's 2-core VM (the commit that sets them says how they were measured).
BUILD_MINUTES = {"cpu": 8, "cuda": 21}


def _announce(with_cuda, why, isa, n_cpp, n_cu):
    """Say what is built and how long it usually takes: pip shows nothing while the compilers run."""
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
    what = f"{n_cpp} C++ sources (CPU kernels, {isa})"
    if with_cuda:
        what += f" + {n_cu} CUDA sources for TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}"
    else:
        what += f"; no CUDA sources ({why})"
    minutes = BUILD_MINUTES["cuda" if with_cuda else "cpu"]
    print(f"vkernels: building vkernels._C from {what} with {jobs} parallel jobs; on 2 cores this usually takes about "
          f"{minutes} minutes, fewer with more cores", file=sys.stderr, flush=True)


def extensions():
    with_cuda, why = _want_cuda()
    import logging

    # cpp_extension logs "No CUDA runtime is found" at import on any machine without a GPU: expected when building.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    isa = _cpu_isa()
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fvisibility=hidden", "-Wno-unknown-pragmas", f'-DVKERNELS_CPU_ISA="{isa}"']
    if isa == "avx2":
        # at::vec picks its intrinsics from these macros; the inline namespace keeps them apart from torch's own.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    # -fopenmp at link time names libgomp.so.1, the same soname torch ships and has already loaded, so at::parallel_for
    # in our kernels runs on torch's own OpenMP pool.
    link = ["-fopenmp"]
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    include_dirs = [os.path.join(ROOT, "csrc")]
    macros = []
    n_cpp = len(sources)
    if with_cuda:
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        macros.append(("VKERNELS_WITH_CUDA", "1"))
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    if _BUILDING:
        _announce(with_cuda, why, isa, n_cpp, len(sources) - n_cpp)
    if with_cuda:
        nvcc = ["-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr"]
        ext = cpp_extension.CUDAExtension(
            "vkernels._C", sources, include_dirs=include_dirs, define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)
    else:
        ext = cpp_extension.CppExtension(
            "vkernels._C", sources, include_dirs=include_dirs, define_macros=macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=link)
    return [ext], cpp_extension.BuildExtension.with_options(use_ninja=True)


# Only commands that compile announce the build (not egg_info, --version, ...). Under pip, setup.py runs with
# "bdist_wheel" / "editable_wheel" / "develop"; `make` prints the plan itself because `pip -q` hides this output.
_BUILDING = any(a in ("build_ext", "build", "bdist_wheel", "editable_wheel", "develop", "install", "plan")
                for a in sys.argv[1:])
if sys.argv[1:] == ["plan"]:  # `python setup.py plan`: print what a build would compile and exit
    extensions()
    sys.exit(0)
exts, build_ext = extensions()
setup(
    name="vkernels",
    version="0.1.0",
    description="Fused CUDA/Triton/C++ kernels for GANs, fine-grained recognition and self-supervised learning",
    packages=find_packages(include=["vkernels", "vkernels.*"]),
    ext_modules=exts,
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.11",
    install_requires=["torch>=2.11", "numpy", "tqdm"],
    extras_require={"triton": ["triton>=3.6"], "test": ["pytest", "hypothesis"], "bench": ["matplotlib"]},
    zip_safe=False,
)
