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

at::Tensor bias_act_cuda(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                         double alpha, double gain, std::optional<double> clamp) {
  Problem p = make_forward(x, b, dim, std::string_view(act.data(), act.size()), alpha, gain, clamp);
  run(p);
  return p.out;
}

at::Tensor bias_act_grad_cuda(const at::Tensor& grad, const at::Tensor& ref, const std::optional<at::Tensor>& b,
                              int64_t dim, c10::string_view act, double alpha, double gain,
                              std::optional<double> clamp, bool ref_is_y, int64_t order) {
  Problem p = make_grad(grad, ref, b, dim, std::string_view(act.data(), act.size()), alpha, gain, clamp, ref_is_y,
                        order);
  run(p);
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CUDA, m) {
  m.impl("bias_act", &bias_act_cuda);
  m.impl("bias_act_grad", &bias_act_grad_cuda);
}

}  // namespace vkernels::bias_act
