// compact_bilinear_pooling on CPU through the frequency-pooled route (sum_pool=True only).
//
// Forward, per image b: spectrum S_b = sum_l rfft(CS1(x_l)) * rfft(CS2(y_l)) (K = D/2 + 1 complex bins), then
// out_b = irfft(S_b, n=D) once. Locations are taken kChunk at a time: the chunk's count sketches (2 kChunk x D real)
// are built by a loop over channels (each bin's sum runs over channels in increasing order, one thread per buffer:
// no atomics), one at::fft_rfft (MKL/pocketfft) transforms both sketches of the chunk, and a fused loop adds the
// products into S_b (per bin, locations in increasing order). Memory per worker: 2 kChunk D reals + 2 kChunk K
// complex + K complex, whatever H W is: nothing per location beyond one chunk ever exists.
// Work per location: 2 real FFTs of length D (~2 x 2.5 D log2 D FLOPs), C1 + C2 scatter adds, 4 K MACs (complex);
// per image one inverse FFT. Bytes: x, y read once (a chunk reads kChunk contiguous values per channel in NCHW,
// values strided by C in channels_last); per worker a few MiB of chunk buffers (4 MiB at D = 8192, fp32).
//
// Backward, per image: Gf = rfft(g_b) once; per chunk the spectra F1, F2 are recomputed (nothing is saved), then
// dCS1_l = irfft(Gf conj(F2_l)) and dCS2_l = irfft(Gf conj(F1_l)) (circular correlations: d out[d] / d CS1_l[a]
// = sum_b g[(a + b) mod D] CS2_l[b]), in one at::fft_irfft of 2 kChunk rows; grad_x[c, l] = s1[c] dCS1_l[h1[c]] is a
// gather (each output element written once). 4 FFTs of length D per location.
//
// Parallelism: images over threads; when B < threads each image's locations are split into a fixed number of
// contiguous groups (ceil(threads / B)) whose partial spectra are summed in group order: deterministic for a given
// shape and thread count, like the Gram route.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ops/compact_bilinear_pooling.h"
#include "ops/cpu/compact_bilinear_pooling_cpu_common.h"

namespace vkernels::compact_bilinear_pooling {
namespace {

// Locations per chunk: at D = 8192 fp32 both sketches of a chunk are 2 MiB and their spectra 2 MiB per worker.
// Not tuned (other chunk sizes were not measured): large enough that each at::fft_rfft call transforms 64 rows,
// small enough that the per-thread buffers stay a few MiB whatever H W is.
constexpr int64_t kChunk = 32;

// A (B, C, HW) matrix in the accumulation dtype with its strides (NCHW: sc = HW, sl = 1; channels_last: sc = 1,
// sl = C), read as is.
template <class acc_t>
struct Mat {
  at::Tensor t;
  const acc_t* p;
  int64_t sb, sc, sl;
};

template <class acc_t>
Mat<acc_t> as_matrix(const at::Tensor& x) {
  at::Tensor t = x.to(acc_type(x)).flatten(2);
  return {t, t.const_data_ptr<acc_t>(), t.stride(0), t.stride(1), t.stride(2)};
}

// csT (D, ld) bin-major: csT[d * ld + l] = count sketch of location l0 + l, l < L (ld >= L; columns [L, ld) are left
// alone). Bin-major makes channel c's update one contiguous axpy of L values into row h[c] instead of L scattered
// cache lines (a location-major sketch measured the same within this machine's noise). Each bin's value is the sum
// over channels in increasing order.
template <class acc_t>
void sketch(const acc_t* xb, int64_t sc, int64_t sl, int64_t C, int64_t l0, int64_t L, const int32_t* h,
            const acc_t* s, int64_t ld, acc_t* csT) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* xc = xb + c * sc + l0 * sl;
    acc_t* row = csT + int64_t(h[c]) * ld;
    const acc_t sg = s[c];
    if (sl == 1)
      for (int64_t l = 0; l < L; ++l) row[l] += sg * xc[l];
    else
      for (int64_t l = 0; l < L; ++l) row[l] += sg * xc[l * sl];
  }
}

// Per-worker buffer: both sketches of a chunk, bin-major (D, 2 L): columns [0, L) from x, [L, 2 L) from y.
template <class acc_t>
struct Work {
  at::Tensor cs;
  explicit Work(int64_t D, const at::TensorOptions& opt) : cs(at::empty({2 * kChunk * D}, opt)) {}

  // Spectra (2 L, K) complex of the chunk [l0, l0 + L): rows [0, L) from x, [L, 2 L) from y.
  at::Tensor spectra(const Mat<acc_t>& X, const Mat<acc_t>& Y, const Hashes<acc_t>& hs, int64_t b, int64_t l0,
                     int64_t L, int64_t C1, int64_t C2, int64_t D) {
    at::Tensor csT = cs.narrow(0, 0, 2 * L * D).view({D, 2 * L});
    csT.zero_();
    acc_t* p = csT.mutable_data_ptr<acc_t>();
    sketch<acc_t>(X.p + b * X.sb, X.sc, X.sl, C1, l0, L, hs.h1.data(), hs.s1.data(), 2 * L, p);
    sketch<acc_t>(Y.p + b * Y.sb, Y.sc, Y.sl, C2, l0, L, hs.h2.data(), hs.s2.data(), 2 * L, p + L);
    return at::fft_rfft(csT.t(), D, 1).contiguous();
  }
};

template <class acc_t>
at::Tensor forward(const at::Tensor& x, const at::Tensor& y, const Hashes<acc_t>& hs, int64_t D) {
  const int64_t B = x.size(0), C1 = x.size(1), C2 = y.size(1), HW = x.size(2) * x.size(3), K = D / 2 + 1;
  const Mat<acc_t> X = as_matrix<acc_t>(x), Y = as_matrix<acc_t>(y);
  const auto ropt = X.t.options();
  if (B == 0 || C1 == 0 || C2 == 0 || HW == 0) return at::zeros({B, D}, x.options());
  const int64_t nchunks = (HW + kChunk - 1) / kChunk;
  const int64_t ngroup = B >= at::get_num_threads() ? 1 : std::min(nchunks, (at::get_num_threads() + B - 1) / B);
  at::Tensor part = at::zeros({B, ngroup, K}, ropt.dtype(c10::toComplexType(ropt.dtype().toScalarType())));
  acc_t* pp = reinterpret_cast<acc_t*>(part.mutable_data_ptr());
  at::parallel_for(0, B * ngroup, 1, [&](int64_t t0, int64_t t1) {
    at::AutoDispatchBelowADInplaceOrView guard;  // per worker thread: the caller's TLS guard does not reach it
    Work<acc_t> w(D, ropt);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / ngroup, grp = t % ngroup;
      // Group grp owns chunks [grp * nchunks / ngroup, (grp + 1) * nchunks / ngroup): contiguous locations.
      const int64_t lo = grp * nchunks / ngroup * kChunk, hi = std::min(HW, (grp + 1) * nchunks / ngroup * kChunk);
      acc_t* acc = pp + 2 * K * t;
      for (int64_t l0 = lo; l0 < hi; l0 += kChunk) {
        const int64_t L = std::min(kChunk, hi - l0);
        const at::Tensor F = w.spectra(X, Y, hs, b, l0, L, C1, C2, D);
        const acc_t* f = reinterpret_cast<const acc_t*>(F.const_data_ptr());
        for (int64_t l = 0; l < L; ++l) {  // acc += F1_l * F2_l, interleaved (re, im); written out so it vectorizes
          const acc_t* a = f + 2 * K * l;
          const acc_t* c = f + 2 * K * (L + l);
          for (int64_t k = 0; k < K; ++k) {
            const acc_t ar = a[2 * k], ai = a[2 * k + 1], cr = c[2 * k], ci = c[2 * k + 1];
            acc[2 * k] += ar * cr - ai * ci;
            acc[2 * k + 1] += ar * ci + ai * cr;
          }
        }
      }
    }
  });
  // Group partial spectra added in group order (a fixed-shape reduction), then one inverse FFT per image.
  const at::Tensor spec = ngroup == 1 ? part.select(1, 0) : part.sum(1);
  return at::fft_irfft(spec, D, 1).to(x.scalar_type());
}

template <class acc_t>
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& y,
                                            const Hashes<acc_t>& hs, int64_t D) {
  const int64_t B = x.size(0), C1 = x.size(1), C2 = y.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t K = D / 2 + 1;
  const Mat<acc_t> X = as_matrix<acc_t>(x), Y = as_matrix<acc_t>(y);
  const auto ropt = X.t.options();
  if (B == 0 || C1 == 0 || C2 == 0 || HW == 0)
    return {at::zeros(x.sizes(), x.options()), at::zeros(y.sizes(), y.options())};
  // Every element is written by the gathers below: no zero fill.
  at::Tensor dX = at::empty({B, C1, HW}, ropt), dY = at::empty({B, C2, HW}, ropt);
  acc_t* dxp = dX.mutable_data_ptr<acc_t>();
  acc_t* dyp = dY.mutable_data_ptr<acc_t>();
  const at::Tensor Gf = at::fft_rfft(grad_out.to(acc_type(x)), D, 1).contiguous();  // (B, K)
  const acc_t* gfp = reinterpret_cast<const acc_t*>(Gf.const_data_ptr());
  const int64_t nchunks = (HW + kChunk - 1) / kChunk;
  const auto copt = ropt.dtype(c10::toComplexType(ropt.dtype().toScalarType()));
  at::parallel_for(0, B * nchunks, 1, [&](int64_t t0, int64_t t1) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Work<acc_t> w(D, ropt);
    at::Tensor P = at::empty({2 * kChunk, K}, copt);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nchunks, l0 = t % nchunks * kChunk, L = std::min(kChunk, HW - l0);
      const at::Tensor F = w.spectra(X, Y, hs, b, l0, L, C1, C2, D);
      const acc_t* f = reinterpret_cast<const acc_t*>(F.const_data_ptr());
      acc_t* pp = reinterpret_cast<acc_t*>(P.mutable_data_ptr());
      const acc_t* gf = gfp + 2 * K * b;
      // Row l: Gf conj(F2_l) (-> dCS1_l); row L + l: Gf conj(F1_l) (-> dCS2_l).
      for (int64_t r = 0; r < 2 * L; ++r) {
        const acc_t* o = f + 2 * K * (r < L ? r + L : r - L);
        acc_t* q = pp + 2 * K * r;
        for (int64_t k = 0; k < K; ++k) {
          const acc_t gr = gf[2 * k], gi = gf[2 * k + 1], orr = o[2 * k], oi = o[2 * k + 1];
          q[2 * k] = gr * orr + gi * oi;
          q[2 * k + 1] = gi * orr - gr * oi;
        }
      }
      const at::Tensor dcs = at::fft_irfft(P.narrow(0, 0, 2 * L), D, 1).contiguous();  // (2 L, D)
      const acc_t* d = dcs.const_data_ptr<acc_t>();
      for (int64_t c = 0; c < C1; ++c) {
        acc_t* o = dxp + (b * C1 + c) * HW + l0;
        const acc_t* col = d + hs.h1[c];
        const acc_t sg = hs.s1[c];
        for (int64_t l = 0; l < L; ++l) o[l] = sg * col[l * D];
      }
      for (int64_t c = 0; c < C2; ++c) {
        acc_t* o = dyp + (b * C2 + c) * HW + l0;
        const acc_t* col = d + L * D + hs.h2[c];
        const acc_t sg = hs.s2[c];
        for (int64_t l = 0; l < L; ++l) o[l] = sg * col[l * D];
      }
    }
  });
  return {dX.view({B, C1, H, W}).to(x.scalar_type()), dY.view({B, C2, H, W}).to(x.scalar_type())};
}

at::Tensor compact_bilinear_pooling_freq_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h1,
                                             const at::Tensor& s1, const at::Tensor& h2, const at::Tensor& s2,
                                             int64_t output_dim) {
  at::AutoDispatchBelowADInplaceOrView guard;  // the FFTs are internal, never differentiated
  check_inputs("compact_bilinear_pooling_freq", x, y, h1, s1, h2, s2, output_dim);
  return with_hashes(x, h1, s1, h2, s2, [&](const auto& hs) { return forward(x, y, hs, output_dim); });
}

std::tuple<at::Tensor, at::Tensor> compact_bilinear_pooling_freq_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& y, const at::Tensor& h1, const at::Tensor& s1,
    const at::Tensor& h2, const at::Tensor& s2) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const char* op = "compact_bilinear_pooling_freq_backward";
  const int64_t D = check_backward_inputs(op, grad_out, x, y, h1, s1, h2, s2);
  return with_hashes(x, h1, s1, h2, s2, [&](const auto& hs) { return backward(grad_out, x, y, hs, D); });
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("compact_bilinear_pooling_freq", &compact_bilinear_pooling_freq_cpu);
  m.impl("compact_bilinear_pooling_freq_backward", &compact_bilinear_pooling_freq_backward_cpu);
}

}  // namespace vkernels::compact_bilinear_pooling
