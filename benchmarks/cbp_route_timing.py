"""Direct timing of compact_bilinear_pooling's two routes against the Gram GEMM floor, torch.compile of the best
plain-PyTorch formulation and the per-location port, outside the harness (interleaved, medians):
    python benchmarks/cbp_route_timing.py B C H W D [--port] [--mem] [--reps N]
On a shared machine only ratios inside one run mean anything. The numbers in the cbp-freq closing note came from
this script."""
import argparse
import importlib
import time

import torch

import vkernels
from benchmarks.cbp_per_location_port import per_location_fft_cbp
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling as ref_gram
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling_freq as ref_freq

ap = argparse.ArgumentParser()
ap.add_argument("size", type=int, nargs=5)
ap.add_argument("--port", action="store_true")
ap.add_argument("--mem", action="store_true")
ap.add_argument("--reps", type=int, default=5)
args = ap.parse_args()
B, C, H, W, D = args.size
g = torch.Generator().manual_seed(0)
x = torch.randn(B, C, H, W, generator=g).relu()
h1, h2 = torch.randint(0, D, (C,), generator=g), torch.randint(0, D, (C,), generator=g)
s1 = torch.randint(0, 2, (C,), generator=g) * 2. - 1
s2 = torch.randint(0, 2, (C,), generator=g) * 2. - 1
X = x.flatten(2)


def route(r):
    return lambda a, b, *rest: vkernels.compact_bilinear_pooling(a, b, *rest, route=r)


def fwd(fn):
    return lambda: fn(x, x, h1, s1, h2, s2, D)


def fb(fn):
    def run():
        xl = x.detach().requires_grad_()
        o = fn(xl, xl, h1, s1, h2, s2, D)
        o.backward(torch.ones_like(o))
    return run


def gemm_fb():
    G = torch.bmm(X, X.transpose(1, 2))
    return torch.bmm(G, X) + torch.bmm(G.transpose(1, 2), X)


comp_gram, comp_freq = torch.compile(ref_gram), torch.compile(ref_freq)
fns = {"fwd": {"gram": fwd(route("gram")), "freq": fwd(route("freq")), "auto": fwd(route("auto")),
               "gemm": lambda: torch.bmm(X, X.transpose(1, 2)), "compile-gram": fwd(comp_gram),
               "compile-freq": fwd(comp_freq)},
       "f+b": {"gram": fb(route("gram")), "freq": fb(route("freq")), "auto": fb(route("auto")), "gemm": gemm_fb,
               "compile-gram": fb(comp_gram), "compile-freq": fb(comp_freq)}}
if args.port:
    fns["fwd"]["port"] = fwd(per_location_fft_cbp)
    fns["f+b"]["port"] = fb(per_location_fft_cbp)
choose_route = importlib.import_module("vkernels.ops.compact_bilinear_pooling").choose_route
print(f"B={B} C={C} {H}x{W} D={D} threads={torch.get_num_threads()} auto={choose_route(C, C, D)}")
for mode, fs in fns.items():
    for f in fs.values():
        f()  # warm-up (and compile)
    ts = {k: [] for k in fs}
    for _ in range(args.reps):  # interleaved: the machine's load hits every candidate alike
        for k, f in fs.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in ts.items()}
    print(mode, "  ".join(f"{k} {v:.1f}" for k, v in med.items()), "ms")
    best = min(med["gram"], med["freq"])
    print(mode, f"best route / gemm {best / med['gemm']:.2f}  compile-best / best "
          f"{min(med['compile-gram'], med['compile-freq']) / best:.2f}  auto / best {med['auto'] / best:.2f}"
          + (f"  port / best {med['port'] / best:.1f}" if "port" in med else ""))
if args.mem:
    from benchmarks._harness import peak_bytes
    for mode, fs in fns.items():
        pk = peak_bytes({k: v for k, v in fs.items() if not k.startswith("compile")}, "cpu")
        print("peak MB", mode, "  ".join(f"{k} {v / 2 ** 20:.1f}" for k, v in pk.items() if v is not None))
