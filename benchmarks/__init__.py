"""vkernels benchmarks: `python -m benchmarks [--full] [--device cpu|cuda] [--ops bias_act,...] [--quick] [--out DIR]`.

Adding an op = adding `benchmarks/bench_<op>.py` with `cases(device, quick) -> list[Case]` (see _harness.Case);
__main__ finds it by its file name, no central list. For every case the harness first checks that all providers
agree with the eager reference, then times the reference eagerly ("eager"), under torch.compile ("compile"), every
vkernels implementation of the device ("vkernels-<impl>") and the case's floor ("floor-clone" or "floor-gemm"), and
relates the times to machine ceilings measured in the same run (copy bandwidth, GEMM rate).
Data files: targets.py (the goals and each op's headline case), providers.py (what each provider name means).
Outputs: DIR/results.{csv,json}, DIR/goals.json, DIR/<op>.png (plot.py), DIR/summary.{md,png} (summary.py);
record.py files a run under benchmarks/results/<machine>/ with its history.
"""
