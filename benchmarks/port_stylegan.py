"""The measured effect of porting NVlabs StyleGAN2/3 code to vkernels: G forward+backward time and peak RSS, with
their code as it stands (on CPU their custom ops run their pure-PyTorch reference) and after
`vkernels.compat.stylegan.install()`. Needs a stylegan3 checkout (and its imports: requests; pkg_resources).

    python -m benchmarks.port_stylegan --checkout /path/to/stylegan3 [--nets sg2,sg3-t,sg3-r] [--res 64] [--batch 4]

Each (network, code) pair runs in a fresh process, so that its peak RSS is its own: "peak RSS" is ru_maxrss at the
end, "step RSS" that minus the RSS before the first forward (the memory of the training step itself). Time: median
of --iters forward+backward steps (loss = mean square of the image) after one warm-up step. The networks are
train.py's configurations (resnet D is not involved: G only) with a reduced channel_base, in fp32 (CPU forces it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> dict:
    import torch

    sys.path.insert(0, args.checkout)
    import training.networks_stylegan2 as n2
    import training.networks_stylegan3 as n3

    torch.manual_seed(0)
    common = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=args.res, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), channel_base=args.cbase, channel_max=args.cmax,
                  num_fp16_res=0, conv_clamp=256)
    if args.net == "sg2":
        G = n2.Generator(**common, fused_modconv_default="inference_only")
    else:
        r = args.net == "sg3-r"
        common["channel_base"] *= 2 if r else 1
        common["channel_max"] *= 2 if r else 1
        G = n3.Generator(**common, conv_kernel=1 if r else 3, use_radial_filters=r,
                         magnitude_ema_beta=0.5 ** (args.batch / 20000))
    if args.code == "ours":
        import vkernels.compat.stylegan as sc

        sc.install()
    z, c = torch.randn(args.batch, 512), torch.zeros(args.batch, 0)

    def step():
        img = G(z, c)
        img.square().mean().backward()

    base = _rss_bytes()
    step()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(net=args.net, code=args.code, median_s=statistics.median(times), min_s=min(times),
                peak_rss_mb=peak / 2**20, step_rss_mb=(peak - base) / 2**20, threads=torch.get_num_threads())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkout", required=True)
    p.add_argument("--nets", default="sg2,sg3-t,sg3-r")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--cbase", type=int, default=8192)
    p.add_argument("--cmax", type=int, default=256)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--net", help=argparse.SUPPRESS)
    p.add_argument("--code", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.net:
        print(json.dumps(child(args)))
        return
    rows = []
    for net in args.nets.split(","):
        for code in ("theirs", "ours"):
            cmd = [sys.executable, "-m", "benchmarks.port_stylegan", *(sys.argv[1:] if argv is None else argv),
                   "--net", net, "--code", code]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
            r = rows[-1]
            print(f"{net:6} {code:6} fwd+bwd median {r['median_s'] * 1e3:9.1f} ms  peak RSS {r['peak_rss_mb']:7.0f} MB"
                  f"  step RSS {r['step_rss_mb']:7.0f} MB  ({r['threads']} threads)", flush=True)
        t, o = rows[-2], rows[-1]
        print(f"{net:6} ours vs theirs: {t['median_s'] / o['median_s']:.2f}x faster, "
              f"{t['peak_rss_mb'] / o['peak_rss_mb']:.2f}x less peak RSS, "
              f"{t['step_rss_mb'] / max(o['step_rss_mb'], 1e-9):.2f}x less step RSS", flush=True)


if __name__ == "__main__":
    main()
