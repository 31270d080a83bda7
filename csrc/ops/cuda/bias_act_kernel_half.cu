// bias_act CUDA kernels for at::Half: a translation unit of its own so the build compiles the dtypes in parallel.
#include "ops/cuda/bias_act_kernel.cuh"

template void vkernels::bias_act::run_cuda<at::Half>(const vkernels::bias_act::Problem& p);
