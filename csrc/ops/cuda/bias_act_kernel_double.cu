// bias_act CUDA kernels for double: a translation unit of its own so the build compiles the dtypes in parallel.
#include "ops/cuda/bias_act_kernel.cuh"

template void vkernels::bias_act::run_cuda<double>(const vkernels::bias_act::Problem& p);
