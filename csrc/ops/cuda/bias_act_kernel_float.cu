// bias_act CUDA kernels for float: a translation unit of its own so the build compiles the dtypes in parallel.
#include "ops/cuda/bias_act_kernel.cuh"

template void vkernels::bias_act::run_cuda<float>(const vkernels::bias_act::Problem& p);
