// bias_act CUDA entry points: dtype dispatch to the per-dtype translation units, and the CUDA registrations.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/bias_act.h"

namespace vkernels::bias_act {

template <class scalar_t>
void run_cuda(const Problem& p);  // bias_act_kernel.cuh, instantiated in bias_act_kernel_<dtype>.cu

namespace {

void run(const Problem& p) {
  if (p.numel == 0) return;
  c10::cuda::CUDAGuard guard(p.out.device());
  switch (p.out.scalar_type()) {
    case at::kHalf: return run_cuda<at::Half>(p);
    case at::kBFloat16: return run_cuda<at::BFloat16>(p);
    case at::kFloat: return run_cuda<float>(p);
    case at::kDouble: return run_cuda<double>(p);
    default: TORCH_CHECK(false, "bias_act: unsupported dtype ", p.out.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CUDA, m) {
  m.impl("bias_act", &forward_op<run>);
  m.impl("bias_act_grad", &grad_op<run>);
}

}  // namespace vkernels::bias_act
