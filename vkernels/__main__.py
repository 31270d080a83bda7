"""python -m vkernels info: versions, what was built, and which implementation each op runs per device."""
import sys


def info() -> str:
    import platform

    import torch

    from vkernels import _backend

    lines = [f"vkernels {__import__('vkernels').__version__}",
             f"python {platform.python_version()}  torch {torch.__version__}  CUDA (torch build) "
             f"{torch.version.cuda or 'none'}  CUDA available: {torch.cuda.is_available()}"]
    if _backend.HAS_TRITON:
        import triton
        lines.append(f"triton {triton.__version__}" + ("  (TRITON_INTERPRET=1: runs on CPU tensors)"
                                                     if _backend.TRITON_INTERPRET else ""))
    else:
        lines.append("triton: not installed")
    C = _backend._C
    if C is None:
        lines.append(f"vkernels._C: NOT BUILT ({_backend.C_ERROR})")
    else:
        cuda = "no (built without CUDA sources)"
        if C.with_cuda:
            cuda = "yes (compiled in)" + ("" if torch.cuda.is_available() else
                                          "; they run only where torch sees a GPU, not on this machine")
        lines.append(f"vkernels._C: built; CPU kernels ({C.cpu_isa}); CUDA kernels: {cuda}")
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name()}")
    forced = _backend._forced
    if forced != "auto":
        lines.append(f"VKERNELS_IMPL={forced}: every op is forced to this impl")
    lines.append("")
    width = max([len("op"), *map(len, _backend.OPS)])
    lines.append(f"{'op':<{width}} {'device':<7} {'auto runs':<11} available")

    class _Probe:  # resolve_impl only needs .device; no tensor on a missing device is made
        def __init__(self, d):
            self.device = torch.device(d)

    for op in sorted(_backend.OPS):
        for dev in ("cpu", "cuda"):
            avail = _backend.available_impls(op, dev)
            try:
                chosen = _backend.resolve_impl(op, _Probe(dev), "auto")
            except RuntimeError as e:
                chosen = f"error: {e}"
            lines.append(f"{op:<{width}} {dev:<7} {chosen:<11} {', '.join(avail)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["info"]:
        print("usage: python -m vkernels info", file=sys.stderr)
        return 2
    import warnings

    import vkernels  # noqa: F401  (registers every op)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # info reports fallbacks itself
        print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
