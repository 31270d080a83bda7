// What the two CPU routes of compact_bilinear_pooling share (Gram route in compact_bilinear_pooling_kernel.cpp,
// frequency-pooled route in compact_bilinear_pooling_freq_kernel.cpp): the hashes and signs in the kernels' own
// types, the accumulation dtype, and the fp64 / fp32 dispatch of a route's forward or backward.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace vkernels::compact_bilinear_pooling {

// h1, h2 as int32 (the checks bound output_dim by 2^30) and s1, s2 in the accumulation type, read once per call.
template <class acc_t>
struct Hashes {
  std::vector<int32_t> h1, h2;
  std::vector<acc_t> s1, s2;
};

template <class acc_t>
Hashes<acc_t> load_hashes(const at::Tensor& h1, const at::Tensor& s1, const at::Tensor& h2, const at::Tensor& s2) {
  Hashes<acc_t> hs;
  auto load = [](const at::Tensor& h, const at::Tensor& s, std::vector<int32_t>& hv, std::vector<acc_t>& sv) {
    const at::Tensor hc = h.contiguous(), sc = s.to(at::kDouble).contiguous();
    const int64_t n = h.numel();
    hv.resize(n);
    sv.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      hv[i] = int32_t(hc.const_data_ptr<int64_t>()[i]);
      sv[i] = acc_t(sc.const_data_ptr<double>()[i]);
    }
  };
  load(h1, s1, hs.h1, hs.s1);
  load(h2, s2, hs.h2, hs.s2);
  return hs;
}

inline at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Calls run(hs) with the hashes loaded in x's accumulation type (double for fp64 x, float otherwise); run is a
// generic lambda, so a route's forward<acc_t> / backward<acc_t> is picked by deduction from Hashes<acc_t>.
template <class F>
auto with_hashes(const at::Tensor& x, const at::Tensor& h1, const at::Tensor& s1, const at::Tensor& h2,
                 const at::Tensor& s2, F&& run) {
  if (x.scalar_type() == at::kDouble) return run(load_hashes<double>(h1, s1, h2, s2));
  return run(load_hashes<float>(h1, s1, h2, s2));
}

}  // namespace vkernels::compact_bilinear_pooling
