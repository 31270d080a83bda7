// Streaming (non-temporal) vector stores for CPU kernels whose output cannot stay cached for its consumer.
// An ordinary store to a line that is not cached first reads the line from DRAM (write-allocate): for an op that
// reads x and writes y of x's size that is a third stream of traffic. Streaming stores skip that read. They pay only
// when the data does not fit the last-level cache anyway (else the output would have been consumed from cache), the
// rule of thumb glibc's memcpy uses, AND when the output's pages are already mapped: outputs of >= 32 MiB come from
// a fresh mmap per call, the kernel zeroes each page at first touch and leaves its lines cached, and streaming stores
// to them are slower (commit 19db2af). Measure before using them.
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <unistd.h>

#include <cstdint>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace vkernels::cpu {

// The shared last-level cache in bytes (sysconf; 32 MiB where the system does not say).
inline int64_t llc_bytes() {
  static const int64_t bytes = [] {
    long l3 = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
    l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return l3 > 0 ? int64_t(l3) : int64_t(32) << 20;
  }();
  return bytes;
}

// Whether an op moving `bytes` in total (inputs read + output written) should stream its output.
inline bool streaming_pays(int64_t bytes) { return bytes >= llc_bytes(); }

inline bool aligned32(const void* p) { return reinterpret_cast<uintptr_t>(p) % 32 == 0; }

// Non-temporal store of one vector to a 32-byte aligned p (AVX2 builds; elsewhere an ordinary store).
template <class T>
inline void stream_store(T* p, const at::vec::Vectorized<T>& v) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_stream_ps(p, v);
  } else if constexpr (std::is_same_v<T, double>) {
    _mm256_stream_pd(p, v);
  } else {
    static_assert(sizeof(at::vec::Vectorized<T>) == 32, "stream_store: 256-bit vectors only");
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
  }
#else
  v.store(p);
#endif
}

// Streaming stores are weakly ordered: fence before another thread may read what they wrote (end of a parallel
// region's work item).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

}  // namespace vkernels::cpu
