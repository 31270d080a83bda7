"""Interleaved A/B timing of random_maclaurin_pooling's project route, forward+backward (x requires grad, y is x):
the saved-projection backward vs the tiled recomputing one vs torch.compile of the plain-PyTorch formulation vs the
GEMM floor (the projection GEMM [W1; W2] @ [X_1 .. X_B] twice), or, where auto picks the gram route (C=512 28x28), gram vs the saved project route. Medians of
--repeats interleaved rounds and each provider's peak CPU memory (profiler). Usage:
  PYTHONPATH=. python benchmarks/rmp_saved_timing.py [--sizes 2,2048,14,14,8192] [--repeats 5] [--mode fwd+bwd]"""
import argparse
import statistics
import time

import torch

import vkernels
from benchmarks._harness import _peak_bytes_cpu, fwd_bwd
from benchmarks.bench_random_maclaurin_pooling import _floor, _plain


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2,2048,14,14,8192")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mode", default="fwd+bwd")
    a = ap.parse_args()
    for spec in a.sizes.split(";"):
        B, C, H, W, D = map(int, spec.split(","))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, C, H, W, generator=g).relu()
        w1 = (2 * torch.randint(0, 2, (D, C), generator=g) - 1).float()
        w2 = (2 * torch.randint(0, 2, (D, C), generator=g) - 1).float()
        bwd = a.mode == "fwd+bwd"
        wrap = fwd_bwd if bwd else (lambda f: f)
        auto_route = vkernels.random_maclaurin_pooling.__globals__["choose_gram"]
        plain_route = "gram" if auto_route(H * W, C, C, D, bwd, saved=bwd) else "project"

        def mk(route, save):
            return wrap(lambda x, y, u, v: vkernels.random_maclaurin_pooling(x, y, u, v, route=route,
                                                                             save_projections=save))
        X = x.flatten(2)
        G = torch.bmm(X, X.transpose(1, 2)).transpose(0, 1).reshape(C, B * C).contiguous()
        fl = _floor(plain_route, bwd)
        provs = {"auto": mk("auto", None), "project-saved": mk("project", True)}
        if plain_route == "project":  # the old recomputing backward; gram there is 6x slower, not worth the time
            provs["project-tiled"] = mk("project", False)
        else:
            provs["gram"] = mk("gram", False)
        provs["compile"] = wrap(torch.compile(_plain(plain_route)))
        provs["floor"] = lambda x, y, u, v: fl(x, y, u, v, G)
        args = (x, x, w1, w2)
        for f in provs.values():  # warm up (compile)
            f(*args)
        times = {k: [] for k in provs}
        for _ in range(a.repeats):
            for k, f in provs.items():
                t = time.perf_counter()
                f(*args)
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        peak = _peak_bytes_cpu({k: (lambda f=f: f(*args)) for k, f in provs.items()})
        print(f"B={B} C={C} {H}x{W} D={D} {a.mode} (auto -> {plain_route}; compile/floor use {plain_route})")
        for k in provs:
            print(f"  {k:14s} {med[k]:9.1f} ms  compile/this {med['compile'] / med[k]:5.2f}  "
                  f"this/floor {med[k] / med['floor']:5.2f}  peak {peak[k] / 2**20:7.1f} MB")


if __name__ == "__main__":
    main()
