// Small helpers shared by the upsample_norm_act / spade_norm_act CPU kernels (forward in
// upsample_norm_act_kernel.cpp, backward in norm_act_backward_kernel.cpp).
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/string_view.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "ops/bias_act_math.h"
#include "ops/upsample_norm_act.h"

namespace vkernels::norm_act {

// One output coordinate of 1-D linear interpolation (align_corners=False), computed as torch's CPU kernel does
// (area_pixel_compute_source_index with scale = 1/s in the compute type), so results agree to the last bit or two.
template <class T>
struct Lin {
  int64_t i0, i1;
  T l0, l1;
};

template <class T>
std::vector<Lin<T>> make_lin(int64_t in, int64_t s) {
  std::vector<Lin<T>> r(in * s);
  const T scale = static_cast<T>(1.0 / static_cast<double>(s));
  for (int64_t o = 0; o < in * s; ++o) {
    T src = scale * (static_cast<T>(o) + T(0.5)) - T(0.5);
    if (src < T(0)) src = T(0);
    int64_t i0 = std::min(static_cast<int64_t>(src), in - 1);
    T l1 = std::min(std::max(src - static_cast<T>(i0), T(0)), T(1));
    r[o] = {i0, i0 + (i0 < in - 1 ? 1 : 0), T(1) - l1, l1};
  }
  return r;
}

inline bool is_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Calls f.template operator()<A>() with the runtime activation as a template argument.
template <class F>
void dispatch_act(bias_act::Act act, F&& f) {
  using bias_act::Act;
  switch (act) {
    case Act::kLinear: return f.template operator()<Act::kLinear>();
    case Act::kRelu: return f.template operator()<Act::kRelu>();
    case Act::kLrelu: return f.template operator()<Act::kLrelu>();
    case Act::kTanh: return f.template operator()<Act::kTanh>();
    case Act::kSigmoid: return f.template operator()<Act::kSigmoid>();
    case Act::kElu: return f.template operator()<Act::kElu>();
    case Act::kSelu: return f.template operator()<Act::kSelu>();
    case Act::kSoftplus: return f.template operator()<Act::kSoftplus>();
    default: return f.template operator()<Act::kSwish>();
  }
}

// Argument checks of the apply op (upsample_norm_act) and of its backward, which take the same arguments after dy:
// x, the per-(n, c) mean / a / b, scale, mode, act and clamp. Returns the parsed mode and activation.
inline std::pair<Mode, bias_act::Act> check_apply_args(std::string_view op, const at::Tensor& x, const at::Tensor& m,
                                                      const at::Tensor& a, const at::Tensor& b, int64_t scale,
                                                      c10::string_view mode_s, c10::string_view act_s,
                                                      std::optional<double> clamp) {
  check_x(op, x);
  TORCH_CHECK(scale >= 1, op, ": scale must be an integer >= 1, got ", scale);
  const Mode mode = parse_mode(op, std::string_view(mode_s.data(), mode_s.size()));
  const bias_act::Act act = parse_act(op, std::string_view(act_s.data(), act_s.size()));
  TORCH_CHECK(!clamp || *clamp >= 0, op, ": clamp must be None or >= 0, got ", clamp ? *clamp : 0.0);
  check_ab(op, x, m, "mean");
  check_ab(op, x, a, "a");
  check_ab(op, x, b, "b");
  return {mode, act};
}

inline bias_act::Params<double> make_params(double alpha, double gain, std::optional<double> clamp) {
  return {alpha, gain, gain != 0 ? 1.0 / gain : 0.0, clamp.value_or(0.0), -clamp.value_or(0.0), clamp.has_value()};
}

// Outputs of >= 32 MiB: glibc serves such sizes (>= its largest mmap threshold) with a fresh mmap on every call,
// so each 4 KiB page of the output is faulted in and zeroed by the kernel at our first store; on the 2-core test VM
// that cost ~70% of a clone of x (clone 39 ms -> 12 ms with 2 MiB pages, spade_norm_act 8x256x64^2, 1 thread).
// Such outputs are allocated 2 MiB-aligned and marked MADV_HUGEPAGE (what c10's THP_MEM_ALLOC_ENABLE=1 does for
// every allocation), so the kernel maps 2 MiB pages: 512x fewer faults, the same zeroing. With THP disabled the
// madvise is a no-op and the pages are 4 KiB, as with at::empty. Smaller outputs use at::empty (glibc reuses heap
// memory for them: no faults to save).
// OPT-IN (VKERNELS_CPU_HUGEPAGES=1), off by default: on the idle CI VM (THP defrag=madvise) the quiet benchmark
// showed it bimodal: some calls fast (upsample_norm_act nearest 25 ms), most far slower than with 4 KiB pages (134 vs
// 75 ms; spade_norm_act 8x256x64^2: 44 vs 26 ms), presumably the kernel compacting memory to find 2 MiB pages at
// fault time. The loaded helper measurement (2x faster) did not survive a quiet run.
class HugePageAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kHuge = size_t(2) << 20;
  // Allocations and frees are reported to the profiler like c10's CPU allocator does, so that profiler-based peak
  // memory (benchmarks/_harness.py) and torch.profiler's memory view still count these outputs.
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, &del, c10::Device(c10::DeviceType::CPU)};
    const size_t len = (n + kHuge - 1) / kHuge * kHuge;
    void* p = nullptr;
    TORCH_CHECK(posix_memalign(&p, kHuge, len) == 0, "vkernels: out of memory allocating ", len, " bytes");
    madvise(p, len, MADV_HUGEPAGE);
    auto* ctx = new Block{p, static_cast<int64_t>(len)};
    c10::reportMemoryUsageToProfiler(p, ctx->len, 0, 0, c10::Device(c10::DeviceType::CPU));
    return {p, ctx, &del, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dst, const void* src, std::size_t n) const override { default_copy_data(dst, src, n); }

 private:
  struct Block {
    void* ptr;
    int64_t len;
  };
  static void del(void* ctx) {
    if (ctx == nullptr) return;
    auto* b = static_cast<Block*>(ctx);
    c10::reportMemoryUsageToProfiler(b->ptr, -b->len, 0, 0, c10::Device(c10::DeviceType::CPU));
    std::free(b->ptr);
    delete b;
  }
};

inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opt, at::MemoryFormat fmt) {
  constexpr int64_t kMin = int64_t(32) << 20;
  int64_t n = static_cast<int64_t>(opt.dtype().itemsize());
  for (const int64_t s : sizes) n *= s;
  if (n < kMin) return at::empty(sizes, opt, fmt);
  if (const char* e = std::getenv("VKERNELS_CPU_HUGEPAGES"); !e || std::string_view(e) != "1")
    return at::empty(sizes, opt, fmt);
  static HugePageAllocator alloc;
  return at::detail::empty_generic(sizes, &alloc, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   opt.dtype().toScalarType(), fmt);
}

}  // namespace vkernels::norm_act
