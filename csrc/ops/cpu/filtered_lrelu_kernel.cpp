// filtered_lrelu on CPU (and its masked linear twin, the gradient), fp16/bf16 computed in fp32, fp64 in fp64.
// One pass per (plane, band of TO output rows; a band is the whole plane unless planes are few or very wide): load
// the input rows the band needs (+ bias) into a zero-padded thread-local fp32 buffer, form the band's mid rows with
// polyphase up-filtering (only taps that land on input pixels: per mid sample ~fuh*fuw/up^2 MACs for 2-D fu,
// (fuw+fuh)/up separable, the horizontal pass on input rows), apply lrelu*gain+clamp (writing 2 mask bits) or the
// mask factors, then down-filter into the output rows (fdh*fdw/down^2 MACs per mid sample 2-D; separable: fdw per
// kept column of each mid row + fdh per output pixel). Every pass is one multi-tap at::vec kernel (dot_rows) over
// contiguous rows; mid rows are phase-major so no pass scatters or gathers (when up == down). The mid band lives only
// in the buffer. The activation (and the mask codes) run in the vertical up pass's epilogue (separable fu), the
// vertical down pass makes two output rows per sweep (dot_rows2), and row rests are full vectors overlapping the
// previous one. SG3 layer (12-tap up2/down2, 74x74 -> 74x74): 425,952 MACs per plane = ~78 MACs (156 FLOPs) per
// output pixel (6 per mid column of each input row + 6 per mid sample + 12 per kept column of each mid row + 12 per
// output pixel), the minimum for separable filters with the activation in between. Measured (AMD EPYC, 1 thread,
// shared machine): ~16 GFLOP/s of a 91 GFLOP/s FMA peak (a register-only FMA loop) and ~50 GFLOP/s of at::mm.
// Bytes: x read once (plus, for split planes, the band overlap ~(fdh-down)/(down*TO)), y written once, mask Mh*Mw/4
// bytes written (or read). channels_last goes through the buffers 16 channels at a time (see cblock).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/filtered_lrelu.h"
#include "ops/upfirdn2d.h"

namespace vkernels::filtered_lrelu {
namespace {

using upfirdn2d::floor_div;
using upfirdn2d::floor_mod;

// Output epilogue of dot_rows: the identity, or lrelu*gain+clamp on the accumulators before they are stored (so the
// activation costs no extra pass over the mid row), optionally writing the 2-bit mask codes of the row as floats.
struct NoEpi {
  template <class V>
  V operator()(V a, int64_t, int64_t) const { return a; }
};

template <class T>
struct ActEpi {
  using V = at::vec::Vectorized<T>;
  V vs, vg, vc, vnc;
  T* codes;  // nullptr: no mask row wanted
  // lrelu * gain, clamped to [-clamp, clamp] (NaN stays NaN, as in the reference). The codes are computed
  // branch-free as floats (the signs are random: mispredicted branches would cost more than the filtering).
  V operator()(V v, int64_t k, int64_t cnt) const {
    const V zero(T(0)), one(T(1)), two(T(2));
    const V pos = v > zero;
    const V a = V::blendv(v * vs, v, pos) * vg;
    if (codes) {
      const V clamped = (a > vc) | (a < vnc);
      ((two - (pos & one)) * (one - (clamped & one))).store(codes + k, cnt);
    }
    return at::vec::minimum(at::vec::maximum(a, vnc), vc);
  }
};

// out[k] (+)= epi(sum_t w[t] * src[t][k]) for k < n: every pass of the kernel (horizontal/vertical, up/down, 1-D/2-D
// filters) is this, with src[t] pointing at shifted rows of a thread-local buffer. Four vector accumulators (32 fp32
// lanes on AVX2) keep the FMA chains independent; the tap loop is innermost so each output is stored once. The rest
// (< 4 vectors) runs as full vectors too when it can: the last one shifted back to end at n, recomputing a few
// outputs already stored (the same sums in the same order, so the same values: deterministic), which avoids masked
// loads and stores (the rows here are 74-158 samples, so the rest is 10-20% of every row).
template <class T, class Epi = NoEpi>
void dot_rows(T* __restrict__ out, const T* const* src, const T* w, int64_t nt, int64_t n, bool accumulate,
              const Epi& epi = Epi()) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  int64_t k = 0;
  for (; k + 4 * L <= n; k += 4 * L) {
    V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
    if (accumulate) {
      a0 = V::loadu(out + k), a1 = V::loadu(out + k + L), a2 = V::loadu(out + k + 2 * L);
      a3 = V::loadu(out + k + 3 * L);
    }
    for (int64_t t = 0; t < nt; ++t) {
      const V wt(w[t]);
      const T* s = src[t] + k;
      a0 = at::vec::fmadd(V::loadu(s), wt, a0);
      a1 = at::vec::fmadd(V::loadu(s + L), wt, a1);
      a2 = at::vec::fmadd(V::loadu(s + 2 * L), wt, a2);
      a3 = at::vec::fmadd(V::loadu(s + 3 * L), wt, a3);
    }
    epi(a0, k, L).store(out + k), epi(a1, k + L, L).store(out + k + L);
    epi(a2, k + 2 * L, L).store(out + k + 2 * L), epi(a3, k + 3 * L, L).store(out + k + 3 * L);
  }
  if (k < n && !accumulate && n >= L) {  // full vectors at k, k+L, ... and n-L (overlapping the previous one)
    const int64_t nv = (n - k + L - 1) / L;
    const int64_t o0 = std::min(k, n - L), o1 = std::min(k + L, n - L), o2 = std::min(k + 2 * L, n - L);
    const int64_t o3 = std::min(k + 3 * L, n - L);
    V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
    for (int64_t t = 0; t < nt; ++t) {
      const V wt(w[t]);
      const T* s = src[t];
      a0 = at::vec::fmadd(V::loadu(s + o0), wt, a0);
      if (nv > 1) a1 = at::vec::fmadd(V::loadu(s + o1), wt, a1);
      if (nv > 2) a2 = at::vec::fmadd(V::loadu(s + o2), wt, a2);
      if (nv > 3) a3 = at::vec::fmadd(V::loadu(s + o3), wt, a3);
    }
    epi(a0, o0, L).store(out + o0);
    if (nv > 1) epi(a1, o1, L).store(out + o1);
    if (nv > 2) epi(a2, o2, L).store(out + o2);
    if (nv > 3) epi(a3, o3, L).store(out + o3);
  } else if (k < n) {  // accumulating, or a row shorter than a vector: masked loads and stores
    const int64_t r = n - k;
    const int64_t c0 = std::min<int64_t>(L, r), c1 = std::clamp<int64_t>(r - L, 0, L);
    const int64_t c2 = std::clamp<int64_t>(r - 2 * L, 0, L), c3 = std::clamp<int64_t>(r - 3 * L, 0, L);
    V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
    if (accumulate) {
      a0 = V::loadu(out + k, c0), a1 = V::loadu(out + k + L, c1), a2 = V::loadu(out + k + 2 * L, c2);
      a3 = V::loadu(out + k + 3 * L, c3);
    }
    for (int64_t t = 0; t < nt; ++t) {
      const V wt(w[t]);
      const T* s = src[t] + k;
      a0 = at::vec::fmadd(V::loadu(s, c0), wt, a0);
      if (c1) a1 = at::vec::fmadd(V::loadu(s + L, c1), wt, a1);
      if (c2) a2 = at::vec::fmadd(V::loadu(s + 2 * L, c2), wt, a2);
      if (c3) a3 = at::vec::fmadd(V::loadu(s + 3 * L, c3), wt, a3);
    }
    epi(a0, k, c0).store(out + k, c0);
    if (c1) epi(a1, k + L, c1).store(out + k + L, c1);
    if (c2) epi(a2, k + 2 * L, c2).store(out + k + 2 * L, c2);
    if (c3) epi(a3, k + 3 * L, c3).store(out + k + 3 * L, c3);
  }
}

// Two output rows from one list of source rows (register blocking for the vertical down pass): out0 takes the rows
// whose bit 1 is set in use[t] (weight w0[t]), out1 those with bit 2 (w1[t]). Neighbouring output rows of a
// vertical filter share most of their source rows, so each loaded vector feeds two FMAs (half the loads per FMA)
// and eight accumulator chains run instead of four. Each output's taps are summed in the same order as dot_rows
// would, so the results are bit-identical to two dot_rows calls. Needs n >= one vector (the callers check).
// Measured (1 thread, interleaved, shared machine): 4-8% on the SG3 layer in the vertical down pass. The same pairing
// in the vertical up pass (mid rows my, my+1 with the activation epilogue) was 5-7% slower and is not used.
template <class T, class Epi0 = NoEpi, class Epi1 = NoEpi>
void dot_rows2(T* __restrict__ out0, T* __restrict__ out1, const T* const* src, const T* w0, const T* w1,
               const uint8_t* use, int64_t nt, int64_t n, const Epi0& epi0 = Epi0(), const Epi1& epi1 = Epi1()) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  auto block = [&](int64_t o0, int64_t o1, int64_t o2, int64_t o3, int64_t nv) {
    V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0)), b0(T(0)), b1(T(0)), b2(T(0)), b3(T(0));
    for (int64_t t = 0; t < nt; ++t) {
      const T* s = src[t];
      const V x0 = V::loadu(s + o0), x1 = nv > 1 ? V::loadu(s + o1) : V(T(0));
      const V x2 = nv > 2 ? V::loadu(s + o2) : V(T(0)), x3 = nv > 3 ? V::loadu(s + o3) : V(T(0));
      if (use[t] & 1) {
        const V wt(w0[t]);
        a0 = at::vec::fmadd(x0, wt, a0), a1 = at::vec::fmadd(x1, wt, a1);
        a2 = at::vec::fmadd(x2, wt, a2), a3 = at::vec::fmadd(x3, wt, a3);
      }
      if (use[t] & 2) {
        const V wt(w1[t]);
        b0 = at::vec::fmadd(x0, wt, b0), b1 = at::vec::fmadd(x1, wt, b1);
        b2 = at::vec::fmadd(x2, wt, b2), b3 = at::vec::fmadd(x3, wt, b3);
      }
    }
    epi0(a0, o0, L).store(out0 + o0), epi1(b0, o0, L).store(out1 + o0);
    if (nv > 1) epi0(a1, o1, L).store(out0 + o1), epi1(b1, o1, L).store(out1 + o1);
    if (nv > 2) epi0(a2, o2, L).store(out0 + o2), epi1(b2, o2, L).store(out1 + o2);
    if (nv > 3) epi0(a3, o3, L).store(out0 + o3), epi1(b3, o3, L).store(out1 + o3);
  };
  int64_t k = 0;
  for (; k + 4 * L <= n; k += 4 * L) block(k, k + L, k + 2 * L, k + 3 * L, 4);
  if (k < n)  // full vectors, the last one shifted back to end at n (recomputes a few outputs: same values)
    block(std::min(k, n - L), std::min(k + L, n - L), std::min(k + 2 * L, n - L), std::min(k + 3 * L, n - L),
          (n - k + L - 1) / L);
}

// The (row pointer, tap weight) list of one dot_rows call, in preallocated storage: filling std::vectors with
// push_back per row cost as much as a short row's multiply-adds (the compiler reloads their ends on every push).
template <class T>
struct TapList {
  std::vector<const T*> p;
  std::vector<T> w;
  int64_t n = 0;
  explicit TapList(int64_t cap) : p(std::max<int64_t>(cap, 1)), w(std::max<int64_t>(cap, 1)) {}
  void add(const T* ptr, T wt) { p[n] = ptr, w[n] = wt, ++n; }
};

// The same for dot_rows2: a second weight per row and which of the two outputs each row feeds.
template <class T>
struct TapList2 : TapList<T> {
  std::vector<T> w1;
  std::vector<uint8_t> use;
  explicit TapList2(int64_t cap) : TapList<T>(cap), w1(std::max<int64_t>(cap, 1)), use(std::max<int64_t>(cap, 1)) {}
  void add(const T* ptr, T wa, T wb, uint8_t u) { w1[this->n] = wb, use[this->n] = u, TapList<T>::add(ptr, wa); }
};

// Mid rows are kept "phase-major": mid sample m = ph + k*U at [ph*R + k], R = ceil(M/U), so each up-filter phase
// (only the taps that land on input pixels: fuw/U of them) is one contiguous dot_rows over the zero-padded input
// row, with no scatter. When U == D this is also the layout the down pass wants (sample q*D + r at [r*R + q]: every
// down tap is one contiguous run over the output columns), so nothing is moved between the passes; otherwise one
// gather per mid row remaps it. Positions past M in a phase are never written (they stay zero) and never read by
// the down pass ((O-1)*D + B-1 = M-1).
struct UpPlan {
  struct Tap {
    int64_t j, start;
  };
  int64_t U = 1, M = 0, lo = 0, L = 0, R = 0;
  std::vector<int64_t> nk;
  std::vector<std::vector<Tap>> taps;

  explicit UpPlan(const Axis& a) : U(a.U), M(a.M), R((a.M + a.U - 1) / a.U) {
    nk.assign(U, 0);
    taps.resize(U);
    int64_t mn = std::numeric_limits<int64_t>::max(), mx = std::numeric_limits<int64_t>::min();
    std::vector<std::vector<std::pair<int64_t, int64_t>>> raw(U);
    for (int64_t ph = 0; ph < std::min(U, M); ++ph) {
      nk[ph] = (M - ph + U - 1) / U;
      for (int64_t j = 0; j < a.A; ++j) {
        const int64_t t = ph + j - a.P0;
        if (floor_mod(t, U) != 0) continue;  // an inserted zero for every k
        const int64_t base = floor_div(t, U);
        raw[ph].emplace_back(j, base);
        mn = std::min(mn, base);
        mx = std::max(mx, base + nk[ph] - 1);
      }
    }
    if (mn > mx) mn = mx = 0;
    lo = std::max<int64_t>(0, -mn);
    L = lo + a.Z + std::max<int64_t>(0, mx - (a.Z - 1));
    for (int64_t ph = 0; ph < U; ++ph)
      for (auto [j, base] : raw[ph]) taps[ph].push_back({j, base + lo});
  }
  int64_t row_len() const { return U * R; }
  int64_t pos(int64_t m) const { return (m % U) * R + m / U; }

  // One input row (zero-padded by lo) -> one phase-major mid row, through taps w[j] (+)= into `mid`.
  template <class T>
  void run(const T* buf, const T* w, T* mid, bool accumulate, TapList<T>& tl) const {
    for (int64_t ph = 0; ph < U; ++ph) {
      tl.n = 0;
      for (const auto& t : taps[ph]) tl.add(buf + t.start, w[t.j]);
      if (tl.n == 0 && accumulate) continue;
      dot_rows(mid + ph * R, tl.p.data(), tl.w.data(), tl.n, nk[ph], accumulate);
    }
  }
};

// One work item of run(): a block of channels [c0, c0 + cn) of sample n (one channel unless channels_last), output
// rows [oy0, oy1), the mid rows [my0, my1) they need, the input rows [iy_lo, iy_hi] those need, and the end of the
// mask rows the band owns, [oy0 * D, own1): no mask byte has two writers.
struct Band {
  int64_t n, c0, cn, oy0, oy1, my0, my1, own1, iy_lo, iy_hi, nrows;
};

// What every work item of run() reads: the filters in the compute type, the band split, pointers and strides, and
// the index tables hoisted out of the row loops (integer divisions cost as much as a row's multiply-adds). The phases
// of a work item are its methods: load the input rows, form the mid rows (up, activation or mask, horizontal down),
// form the output rows (vertical down), store a channel block.
template <class scalar_t>
struct Plan {
  using T = at::opmath_type<scalar_t>;
  using V = at::vec::Vectorized<T>;

  const Problem& p;
  const Axis &ax, &ay;
  const UpPlan up;
  std::vector<T> wa, wb;
  int64_t Aw, Ah, Bw, Bh, Mw, Ow, L, LU, Rd, DR;
  bool remap;  // phase-major up layout != de-interleaved down layout
  int64_t TO, bands, mid_rows_max, in_rows_max;
  const scalar_t* x;
  scalar_t* out;
  int64_t sN, sC, sH, sW, oN, oC, oH, oW;
  const scalar_t* bias;
  int64_t sb;
  uint8_t* mask;
  int64_t RB;
  T gain, slope, clamp;
  std::vector<int64_t> nat, posm;
  std::vector<std::vector<std::pair<int64_t, int64_t>>> vtaps;
  std::vector<int32_t> fidx;
  std::vector<T> lut;
  std::vector<int64_t> pidx, doff;
  bool cblock, fuse_act;
  int64_t CB, cblocks, LB, OB;

  explicit Plan(const Problem& pr) : p(pr), ax(pr.ax), ay(pr.ay), up(pr.ax) {
    wa.assign(p.wa.begin(), p.wa.end()), wb.assign(p.wb.begin(), p.wb.end());
    Aw = ax.A, Ah = ay.A, Bw = ax.B, Bh = ay.B, Mw = ax.M, Ow = ax.O, L = up.L, LU = up.row_len();
    Rd = (Mw + ax.D - 1) / ax.D, DR = ax.D * Rd;
    remap = !(ax.U == ax.D && up.R == Rd);
    split_bands();
    x = p.x.const_data_ptr<scalar_t>();
    out = p.out.mutable_data_ptr<scalar_t>();
    sN = p.x.stride(0), sC = p.x.stride(1), sH = p.x.stride(2), sW = p.x.stride(3);
    oN = p.out.stride(0), oC = p.out.stride(1), oH = p.out.stride(2), oW = p.out.stride(3);
    bias = p.b ? p.b->const_data_ptr<scalar_t>() : nullptr;
    sb = p.b ? p.b->stride(0) : 0;
    const bool use_mask = p.masked || p.write_mask;
    mask = use_mask ? static_cast<uint8_t*>(p.mask.data_ptr()) : nullptr;
    RB = mask_row_bytes(p.mask_w);
    gain = T(p.gain), slope = T(p.slope);
    clamp = p.clamp < 0 ? std::numeric_limits<T>::infinity() : T(p.clamp);
    make_tables();
    // channels_last (C stride 1): a work item is a block of CB channels of one band, so input rows are read and
    // output rows written CB channels (a cache line) at a time and transposed through the thread-local buffers,
    // instead of one strided element per cache line per plane.
    cblock = sC == 1 && oC == 1 && p.C > 1;
    CB = cblock ? std::min<int64_t>(p.C, 16) : 1, cblocks = (p.C + CB - 1) / CB;
    LB = in_rows_max * L, OB = TO * Ow;
    // The activation runs in the vertical up pass's epilogue when that pass is one dot_rows call (separable fu).
    fuse_act = p.sep_a && !p.masked;
  }

  // Output rows per band. Whole planes when there are enough planes for the threads: neighbouring bands share
  // fdh - down mid rows (and their input/up work), which a band recomputes; a plane-sized band never does. Large
  // planes are cut to keep a band's buffers cache-sized, few planes are cut to feed every thread.
  void split_bands() {
    const int64_t planes = p.N * p.C;
    TO = std::min<int64_t>(ay.O, std::max<int64_t>(16, 65536 / std::max<int64_t>(Ow, 1)));
    const int64_t want = 4 * int64_t(at::get_num_threads());
    if (planes < want) TO = std::min(TO, std::max<int64_t>(4, (ay.O * planes + want - 1) / want));
    TO = std::max<int64_t>(1, TO);
    bands = (ay.O + TO - 1) / TO;
    mid_rows_max = (TO - 1) * ay.D + Bh;
    in_rows_max = (mid_rows_max + Ah - 2) / ay.U + 2;
  }

  void make_tables() {
    // Natural mid column of each phase-major position (-1: padding), and the reverse.
    nat.assign(LU, -1), posm.assign(Mw, 0);
    for (int64_t m = 0; m < Mw; ++m) posm[m] = up.pos(m), nat[posm[m]] = m;
    // Vertical up taps per residue rr = (my - P0) mod U as (tap i, input row offset from (my - P0 - rr) / U).
    vtaps.assign(ay.U, {});
    for (int64_t rr = 0; rr < ay.U; ++rr)
      for (int64_t i = 0; i < Ah; ++i)
        if ((rr + i) % ay.U == 0) vtaps[rr].emplace_back(i, (rr + i) / ay.U);
    // Masked op: factor of phase-major position q is fbuf[fidx[q]], fbuf[0] = 0 (padding / off the mask) and
    // fbuf[1 + col] the factor of mask column col; lut[4*byte + j] the factor of a byte's j-th 2-bit code.
    const T fac[4] = {T(0), gain, gain * slope, T(0)};
    fidx.assign(p.masked ? LU : 0, 0);
    lut.assign(p.masked ? 1024 : 0, T(0));
    if (p.masked) {
      for (int64_t q = 0; q < LU; ++q) {
        const int64_t col = nat[q] < 0 ? -1 : nat[q] + p.sx;
        fidx[q] = col >= 0 && col < p.mask_w ? int32_t(col + 1) : 0;
      }
      for (int64_t v = 0; v < 256; ++v)
        for (int64_t j = 0; j < 4; ++j) lut[4 * v + j] = fac[(v >> (2 * j)) & 3];
    }
    pidx.assign(4 * RB, LU);  // mask column -> phase-major position (LU past the row: code 0)
    for (int64_t m = 0; m < std::min<int64_t>(Mw, 4 * RB); ++m) pidx[m] = posm[m];
    // Down taps' offsets in a de-interleaved row.
    doff.assign(Bw, 0);
    for (int64_t k = 0; k < Bw; ++k) doff[k] = (k % ax.D) * Rd + k / ax.D;
  }

  Band band(int64_t idx) const {
    Band b;
    const int64_t k = idx % bands, nb = idx / bands;
    b.n = nb / cblocks, b.c0 = (nb % cblocks) * CB, b.cn = std::min(CB, p.C - b.c0);
    b.oy0 = k * TO, b.oy1 = std::min(ay.O, b.oy0 + TO);
    b.my0 = b.oy0 * ay.D, b.my1 = (b.oy1 - 1) * ay.D + Bh;
    b.own1 = k == bands - 1 ? ay.M : b.oy1 * ay.D;  // the last band: to the end
    b.iy_lo = std::max<int64_t>(0, -floor_div(-(b.my0 - ay.P0), ay.U));
    b.iy_hi = std::min<int64_t>(ay.Z - 1, floor_div(b.my1 - 1 + Ah - 1 - ay.P0, ay.U));
    b.nrows = std::max<int64_t>(0, b.iy_hi - b.iy_lo + 1);
    return b;
  }

  // A thread's buffers, zero-initialised once: positions a pass never writes (phase padding) must read as 0.
  struct Scratch {
    std::vector<T> lblk, hbuf, mrow, drow, midbuf, dbuf, acc, oblk, cbuf, fbuf;
    TapList<T> tl, tl2, hd;
    TapList2<T> vd;
    const T* md;  // the mid row the horizontal down taps read: phase-major, or remapped
    explicit Scratch(const Plan& pl)
        : lblk(pl.CB * pl.LB), hbuf(pl.p.sep_a ? pl.in_rows_max * pl.LU : 0), mrow(pl.LU),
          drow(pl.remap ? pl.DR : 0), midbuf(pl.p.sep_b ? 0 : pl.mid_rows_max * pl.DR),
          dbuf(pl.p.sep_b ? pl.mid_rows_max * pl.Ow : 0), acc(2 * pl.Ow), oblk(pl.cblock ? pl.CB * pl.OB : 0),
          cbuf(pl.LU + 1), fbuf(pl.p.masked ? 1 + 4 * pl.RB : 0), tl(pl.tap_capacity()), tl2(pl.tap_capacity()),
          hd(pl.Bw), vd(pl.ay.D + pl.Bh), md(pl.remap ? drow.data() : mrow.data()) {
      for (int64_t k = 0; k < pl.Bw; ++k) hd.add(md + pl.doff[k], pl.wb[k]);
    }
  };
  int64_t tap_capacity() const { return std::max({Aw, Ah, Bw * Bh, Bw, Bh}); }

  // channels_last: the band's input rows of CB channels (+ bias), transposed into the per-channel row buffers.
  void load_channel_block(const Band& b, Scratch& s) const {
    T bvs[16];
    for (int64_t cc = 0; cc < b.cn; ++cc) bvs[cc] = bias ? T(bias[(b.c0 + cc) * sb]) : T(0);
    for (int64_t r = 0; r < b.nrows; ++r) {
      const scalar_t* src = x + b.n * sN + b.c0 + (b.iy_lo + r) * sH;
      T* dst = s.lblk.data() + r * L + up.lo;  // the zero padding around it is never written
      for (int64_t i = 0; i < ax.Z; ++i)
        for (int64_t cc = 0; cc < b.cn; ++cc) dst[cc * LB + i] = T(src[i * sW + cc]) + bvs[cc];
    }
  }

  // One channel's input rows of the band (+ bias) into lbuf.
  void load_channel(const Band& b, int64_t c, T* lbuf) const {
    const T bv = bias ? T(bias[c * sb]) : T(0);
    const scalar_t* xp = x + b.n * sN + c * sC;
    for (int64_t r = 0; r < b.nrows; ++r) {
      T* dst = lbuf + r * L + up.lo;  // the zero padding around it is never written
      const scalar_t* src = xp + (b.iy_lo + r) * sH;
      if (sW == 1) {
#pragma omp simd
        for (int64_t i = 0; i < ax.Z; ++i) dst[i] = T(src[i]) + bv;
      } else {
        for (int64_t i = 0; i < ax.Z; ++i) dst[i] = T(src[i * sW]) + bv;
      }
    }
  }

  // Mid row my of the band into s.mrow: the vertical up taps that land on input rows of this band (polyphase:
  // ~fuh/U of them) over the horizontally up-filtered rows (separable fu, with the activation in the epilogue when
  // fuse_act) or each tap's row up-filtered in 2-D.
  void up_row(const Band& b, int64_t my, const T* lbuf, const ActEpi<T>& act, Scratch& s) const {
    s.tl.n = 0;
    bool first = true;
    const int64_t rr = floor_mod(my - ay.P0, ay.U), base = floor_div(my - ay.P0 - rr, ay.U);
    for (const auto& [i, di] : vtaps[rr]) {
      const int64_t iy = base + di;
      if (iy < b.iy_lo || iy > b.iy_hi) continue;
      if (p.sep_a) {
        s.tl.add(s.hbuf.data() + (iy - b.iy_lo) * LU, wa[i]);
      } else {
        up.run(lbuf + (iy - b.iy_lo) * L, wa.data() + i * Aw, s.mrow.data(), !first, s.tl2);
        first = false;
      }
    }
    if (fuse_act)
      dot_rows(s.mrow.data(), s.tl.p.data(), s.tl.w.data(), s.tl.n, LU, false, act);
    else if (p.sep_a)
      dot_rows(s.mrow.data(), s.tl.p.data(), s.tl.w.data(), s.tl.n, LU, false);
    else if (first)
      std::fill(s.mrow.begin(), s.mrow.end(), T(0));
  }

  // lrelu * gain + clamp on s.mrow (unless fused into up_row) and, with wm, the row's mask codes packed in natural
  // order through pidx (LU: the zero sentinel) into mask row my of plane `plane`.
  void activate_row(int64_t plane, int64_t my, const ActEpi<T>& act, bool wm, Scratch& s) const {
    if (!fuse_act) {
      constexpr int64_t VL = V::size();
      for (int64_t k = 0; k < LU; k += VL) {
        const int64_t cnt = std::min<int64_t>(VL, LU - k);
        act(V::loadu(s.mrow.data() + k, cnt), k, cnt).store(s.mrow.data() + k, cnt);
      }
    }
    if (wm) {
      s.cbuf[LU] = T(0);
      const int64_t rb = RB;  // a local: the uint8_t stores below may alias any member
      uint8_t* mr = mask + (plane * p.mask_h + my) * rb;
      const int64_t* pi = pidx.data();
      for (int64_t q = 0; q < rb; ++q, pi += 4)
        mr[q] = uint8_t(int(s.cbuf[pi[0]]) | (int(s.cbuf[pi[1]]) << 2) | (int(s.cbuf[pi[2]]) << 4) |
                        (int(s.cbuf[pi[3]]) << 6));
    }
  }

  // The masked op: s.mrow times the factors of mask row my + sy of plane `plane` (0 off the mask).
  void mask_row(int64_t plane, int64_t my, Scratch& s) const {
    const int64_t row = my + p.sy;
    if (row < 0 || row >= p.mask_h) {
      std::fill(s.mrow.begin(), s.mrow.end(), T(0));
      return;
    }
    // Decode the mask row to factors (a byte -> 4 factors by table), then one indexed multiply.
    const uint8_t* mr = mask + (plane * p.mask_h + row) * RB;
    for (int64_t qb = 0; qb < RB; ++qb)
      std::copy(lut.begin() + 4 * mr[qb], lut.begin() + 4 * mr[qb] + 4, s.fbuf.begin() + 1 + 4 * qb);
    for (int64_t q = 0; q < LU; ++q) s.mrow[q] *= s.fbuf[fidx[q]];
  }

  // The band's mid rows of channel c: up (with the activation and mask codes, or the mask factors), then the
  // horizontal down pass (separable fd) into s.dbuf, or the whole mid row kept in s.midbuf (2-D fd).
  void mid_rows(const Band& b, int64_t c, const T* lbuf, Scratch& s) const {
    const int64_t plane = b.n * p.C + c;
    if (p.sep_a)
      for (int64_t r = 0; r < b.nrows; ++r) up.run(lbuf + r * L, wa.data(), s.hbuf.data() + r * LU, false, s.tl);
    const V vs(slope), vg(gain), vc(clamp), vnc(-clamp);
    for (int64_t my = b.my0; my < b.my1; ++my) {
      const bool wm = !p.masked && p.write_mask && my >= b.oy0 * ay.D && my < b.own1;
      const ActEpi<T> act{vs, vg, vc, vnc, wm ? s.cbuf.data() : nullptr};
      up_row(b, my, lbuf, act, s);
      if (!p.masked)
        activate_row(plane, my, act, wm, s);
      else
        mask_row(plane, my, s);
      if (remap) {
        for (int64_t m = 0, q = 0, r = 0; m < Mw; ++m) {  // m = q*D + r
          s.drow[r * Rd + q] = s.mrow[posm[m]];
          if (++r == ax.D) r = 0, ++q;
        }
      }
      if (p.sep_b) {
        dot_rows(s.dbuf.data() + (my - b.my0) * Ow, s.hd.p.data(), s.hd.w.data(), Bw, Ow, false);
      } else {
        std::copy(s.md, s.md + DR, s.midbuf.data() + (my - b.my0) * DR);
      }
    }
  }

  // The band's output rows of channel c0 + cc from its mid rows (the vertical down pass; 2-D fd: both passes).
  void out_rows(const Band& b, int64_t cc, Scratch& s) const {
    const int64_t c = b.c0 + cc;
    // Output row oy goes to: the channel block's buffer, y itself (fp32/fp64 rows with unit stride), or acc.
    auto orow = [&](int64_t oy, int64_t j) -> T* {
      if (cblock) return s.oblk.data() + cc * OB + (oy - b.oy0) * Ow;
      if constexpr (std::is_same_v<scalar_t, T>) {
        if (oW == 1) return out + b.n * oN + c * oC + oy * oH;
      }
      return s.acc.data() + j * Ow;
    };
    auto flush = [&](int64_t oy, const T* row) {
      if (cblock) return;
      scalar_t* dst = out + b.n * oN + c * oC + oy * oH;
      if (static_cast<const void*>(row) == static_cast<const void*>(dst)) return;
      for (int64_t ox = 0; ox < Ow; ++ox) dst[ox * oW] = static_cast<scalar_t>(row[ox]);
    };
    for (int64_t oy = b.oy0; oy < b.oy1; ++oy) {
      if (p.sep_b && Ow >= V::size() && oy + 1 < b.oy1) {  // two output rows per pass over the source rows
        s.vd.n = 0;
        const int64_t r0 = oy * ay.D - b.my0;
        for (int64_t rr = 0; rr < ay.D + Bh; ++rr) {
          const bool u0 = rr < Bh, u1 = rr >= ay.D && rr - ay.D < Bh;
          if (u0 || u1) s.vd.add(s.dbuf.data() + (r0 + rr) * Ow, u0 ? wb[rr] : T(0), u1 ? wb[rr - ay.D] : T(0),
                                 uint8_t(u0 | (u1 << 1)));
        }
        T* d0 = orow(oy, 0);
        T* d1 = orow(oy + 1, 1);
        dot_rows2(d0, d1, s.vd.p.data(), s.vd.w.data(), s.vd.w1.data(), s.vd.use.data(), s.vd.n, Ow);
        flush(oy, d0), flush(oy + 1, d1);
        ++oy;
        continue;
      }
      s.tl.n = 0;
      for (int64_t k = 0; k < Bh; ++k) {
        const int64_t r = oy * ay.D + k - b.my0;
        if (p.sep_b) {
          s.tl.add(s.dbuf.data() + r * Ow, wb[k]);
        } else {
          for (int64_t kx = 0; kx < Bw; ++kx) s.tl.add(s.midbuf.data() + r * DR + doff[kx], wb[k * Bw + kx]);
        }
      }
      T* d0 = orow(oy, 0);
      dot_rows(d0, s.tl.p.data(), s.tl.w.data(), s.tl.n, Ow, false);
      flush(oy, d0);
    }
  }

  // channels_last: the block's output rows, transposed from the per-channel buffers into y.
  void store_channel_block(const Band& b, const Scratch& s) const {
    for (int64_t oy = b.oy0; oy < b.oy1; ++oy) {
      scalar_t* dst = out + b.n * oN + b.c0 + oy * oH;
      const T* src = s.oblk.data() + (oy - b.oy0) * Ow;
      for (int64_t ox = 0; ox < Ow; ++ox)
        for (int64_t cc = 0; cc < b.cn; ++cc) dst[ox * oW + cc] = static_cast<scalar_t>(src[cc * OB + ox]);
    }
  }
};

template <class scalar_t>
void run(const Problem& p) {
  const Plan<scalar_t> pl(p);
  at::parallel_for(0, p.N * pl.cblocks * pl.bands, 1, [&](int64_t begin, int64_t end) {
    typename Plan<scalar_t>::Scratch s(pl);
    for (int64_t idx = begin; idx < end; ++idx) {
      const Band b = pl.band(idx);
      if (pl.cblock) pl.load_channel_block(b, s);
      for (int64_t cc = 0; cc < b.cn; ++cc) {
        auto* lbuf = s.lblk.data() + cc * pl.LB;
        if (!pl.cblock) pl.load_channel(b, b.c0 + cc, lbuf);
        pl.mid_rows(b, b.c0 + cc, lbuf, s);
        pl.out_rows(b, cc, s);
      }
      if (pl.cblock) pl.store_channel_block(b, s);
    }
  });
}

void dispatch(const Problem& p) {
  if (p.out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "filtered_lrelu_cpu",
                                  [&] { run<scalar_t>(p); });
}

std::tuple<at::Tensor, at::Tensor> filtered_lrelu_cpu(const at::Tensor& x, const at::Tensor& fu, const at::Tensor& fd,
                                                      const std::optional<at::Tensor>& b, int64_t up, int64_t down,
                                                      int64_t px0, int64_t px1, int64_t py0, int64_t py1,
                                                      double gain, double slope, std::optional<double> clamp,
                                                      bool flip_filter, bool write_mask) {
  TORCH_CHECK(x.device().is_cpu(), "filtered_lrelu: the CPU kernel got x on ", x.device());
  Problem p = make(x, fu, fd, up, down, px0, px1, py0, py1, double(up * up), 1.0, flip_filter, "filtered_lrelu");
  TORCH_CHECK(std::isfinite(gain), "filtered_lrelu: gain must be finite, got ", gain);
  TORCH_CHECK(std::isfinite(slope), "filtered_lrelu: slope must be finite, got ", slope);
  TORCH_CHECK(!clamp || *clamp >= 0, "filtered_lrelu: clamp must be None or >= 0, got ", *clamp);
  if (b) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == p.C, "filtered_lrelu: b must have shape (", p.C, ",), got ",
                b->sizes());
    TORCH_CHECK(b->scalar_type() == x.scalar_type(), "filtered_lrelu: b must have x's dtype ", x.scalar_type(),
                ", got ", b->scalar_type());
    TORCH_CHECK(b->device() == x.device(), "filtered_lrelu: b is on ", b->device(), " but x is on ", x.device());
    p.b = *b;
  }
  p.gain = gain, p.slope = slope, p.clamp = clamp ? *clamp : -1.0;
  p.write_mask = write_mask;
  p.mask_h = p.ay.M, p.mask_w = p.ax.M;
  p.mask = write_mask ? at::zeros({p.N, p.C, p.mask_h, mask_row_bytes(p.mask_w)}, x.options().dtype(at::kByte))
                      : at::empty({0}, x.options().dtype(at::kByte));
  if (write_mask && p.mask.numel() == 0) p.write_mask = false;
  dispatch(p);
  return {p.out, p.mask};
}

at::Tensor filtered_lrelu_masked_cpu(const at::Tensor& z, const at::Tensor& fa, const at::Tensor& fb,
                                     const at::Tensor& mask, int64_t mask_w, int64_t sx, int64_t sy, int64_t up,
                                     int64_t down, int64_t px0, int64_t px1, int64_t py0, int64_t py1, double gain_a,
                                     double gain_b, double gain, double slope, bool flip_filter) {
  TORCH_CHECK(z.device().is_cpu(), "filtered_lrelu_masked: the CPU kernel got z on ", z.device());
  Problem p = make(z, fa, fb, up, down, px0, px1, py0, py1, gain_a, gain_b, flip_filter, "filtered_lrelu_masked");
  TORCH_CHECK(mask.scalar_type() == at::kByte, "filtered_lrelu_masked: mask must be uint8, got ", mask.scalar_type());
  TORCH_CHECK(mask_w >= 0, "filtered_lrelu_masked: mask_w must be >= 0, got ", mask_w);
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == p.N && mask.size(1) == p.C &&
                  mask.size(3) == mask_row_bytes(mask_w),
              "filtered_lrelu_masked: mask must have shape (", p.N, ", ", p.C, ", mask_h, ", mask_row_bytes(mask_w),
              "), got ", mask.sizes());
  TORCH_CHECK(mask.device() == z.device(), "filtered_lrelu_masked: mask is on ", mask.device(), " but z is on ",
              z.device());
  p.masked = true;
  p.mask = mask.contiguous();
  p.mask_w = mask_w, p.mask_h = mask.size(2), p.sx = sx, p.sy = sy;
  p.gain = gain, p.slope = slope;
  dispatch(p);
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("filtered_lrelu", &filtered_lrelu_cpu);
  m.impl("filtered_lrelu_masked", &filtered_lrelu_masked_cpu);
}

}  // namespace vkernels::filtered_lrelu
