"""vkernels benchmarks: `python -m benchmarks [--device cpu|cuda] [--ops bias_act,...] [--quick] [--out DIR]`.

Adding an op = adding `benchmarks/bench_<op>.py` with `cases(device, quick) -> list[Case]` (see _harness.Case);
__main__ finds it by its file name, no central list. For every case the harness first checks that all providers
agree with the eager reference, then times the reference eagerly ("eager"), under torch.compile ("compile") and
every vkernels implementation of the device ("vkernels-<impl>"), and relates the times to machine ceilings measured
in the same run (copy bandwidth, `x.clone()` of the op's input, GEMM rate). Rows go to DIR/results.{csv,json};
`python benchmarks/plot.py DIR/results.csv` draws one PNG per op.
"""
