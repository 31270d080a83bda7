// bilinear_pooling on CPU: the Gram matrix G_b = X_b Y_b^T by at::bmm (MKL/oneDNN, accumulation in fp32 or fp64),
// then one fused epilogue over G: scale by 1/HW, upper-triangle gather, signed square root, L2 norm and the cast to
// the output dtype, so G is read once per pass and nothing else of size B x P is written besides out (and the fp32 z
// the backward needs when normalising).
//
// Work: GEMM 2 B C1 C2 HW FLOPs (the floor); epilogue ~6 FLOPs per pooled element, bytes: G read twice (the norm
// needs the whole row sum first), out + z written once. Backward: the epilogue's derivative (~10 FLOPs per element)
// writes dG (B C1 C2, symmetrised when y is x) and two GEMMs (dX = dG Y, dY = dG^T X; one when y is x).
// Parallel over (image, row) pairs; per-row partial sums are reduced in row order, so results do not depend on the
// thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>

#include "ops/bilinear_pooling.h"

namespace vkernels::bilinear_pooling {
namespace {

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor as_mat(const at::Tensor& t, at::ScalarType acc) {
  return t.reshape({t.size(0), t.size(1), t.size(2) * t.size(3)}).to(acc);
}

// Row i of the pooled matrix as stored in the packed output: first column and packed offset.
inline int64_t row_j0(const Problem& p, int64_t i) { return p.triu ? i : 0; }
inline int64_t row_offset(const Problem& p, int64_t i) { return p.triu ? triu_index(i, i, p.C1) : i * p.C2; }

template <class acc_t>
inline acc_t signed_sqrt(acc_t z, acc_t eps) {
  // sign(0) = 0, as torch.sign: an exact zero stays zero.
  return z == acc_t(0) ? acc_t(0) : std::copysign(std::sqrt(std::abs(z) + eps), z);
}

template <class scalar_t>
std::tuple<at::Tensor, at::Tensor> forward(const Problem& p) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const auto acc = acc_type(p.x.scalar_type());
  const at::Tensor X = as_mat(p.x, acc);
  const at::Tensor Y = p.sym ? X : as_mat(p.y, acc);
  const at::Tensor G = at::bmm(X, Y.transpose(1, 2)).contiguous();
  at::Tensor out = at::empty({p.B, p.P}, p.x.options());
  at::Tensor z = p.normalize ? at::empty({p.B, p.P}, X.options()) : at::empty({0}, X.options());
  const int64_t B = p.B, C1 = p.C1, C2 = p.C2, P = p.P, rows = B * C1;
  const acc_t inv_m = acc_t(1) / acc_t(p.M), eps = acc_t(p.eps);
  const acc_t* g = G.const_data_ptr<acc_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  if (!p.normalize) {
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / C1, i = r % C1, j0 = row_j0(p, i);
        const acc_t* gr = g + (b * C1 + i) * C2;
        scalar_t* orow = o + b * P + row_offset(p, i) - j0;
        for (int64_t j = j0; j < C2; ++j) orow[j] = scalar_t(gr[j] * inv_m);
      }
    });
    return {out, z};
  }
  acc_t* zp = z.mutable_data_ptr<acc_t>();
  std::vector<acc_t> ss(rows);
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / C1, i = r % C1, j0 = row_j0(p, i);
      const acc_t* gr = g + (b * C1 + i) * C2;
      acc_t* zr = zp + b * P + row_offset(p, i) - j0;
      acc_t acc = 0;
      for (int64_t j = j0; j < C2; ++j) {
        const acc_t v = gr[j] * inv_m;
        zr[j] = v;
        acc += v == acc_t(0) ? acc_t(0) : std::abs(v) + eps;  // s^2
      }
      ss[r] = acc;
    }
  });
  std::vector<acc_t> inv_n(B);
  for (int64_t b = 0; b < B; ++b) {
    acc_t s = 0;
    for (int64_t i = 0; i < C1; ++i) s += ss[b * C1 + i];
    inv_n[b] = acc_t(1) / std::max(std::sqrt(s), acc_t(kL2Eps));
  }
  at::parallel_for(0, B * P, 4096, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) o[e] = scalar_t(signed_sqrt(zp[e], eps) * inv_n[e / P]);
  });
  return {out, z};
}

template <class scalar_t>
std::tuple<at::Tensor, at::Tensor> backward(const Problem& p, const at::Tensor& grad_out, const at::Tensor& z) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const auto acc = acc_type(p.x.scalar_type());
  const int64_t B = p.B, C1 = p.C1, C2 = p.C2, P = p.P;
  const acc_t inv_m = acc_t(1) / acc_t(p.M), eps = acc_t(p.eps);
  // dz = d loss / d z, scaled by 1/HW (the GEMM's scale), in the packed layout.
  at::Tensor dz = grad_out.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();  // written in place
  acc_t* dzp = dz.mutable_data_ptr<acc_t>();
  if (p.normalize) {
    const acc_t* zp = z.const_data_ptr<acc_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* zr = zp + b * P;
        acc_t* gr = dzp + b * P;
        acc_t ss = 0, dot = 0;
        for (int64_t e = 0; e < P; ++e) {
          const acc_t s = signed_sqrt(zr[e], eps);
          ss += s * s;
          dot += s * gr[e];
        }
        const acc_t n = std::sqrt(ss);
        // out = s / max(n, 1e-12): d out = (g - out <out, g>) / n above the floor, g / 1e-12 below it.
        const bool above = n > acc_t(kL2Eps);
        const acc_t a = acc_t(1) / (above ? n : acc_t(kL2Eps)), c = above ? dot / (n * n * n) : acc_t(0);
        for (int64_t e = 0; e < P; ++e) {
          const acc_t zv = zr[e];
          const acc_t ds = a * gr[e] - c * signed_sqrt(zv, eps);
          // d sign(z) sqrt(|z| + eps) / dz = 0.5 / sqrt(|z| + eps) (<= 0.5 / sqrt(eps)); 0 at z == 0, as autograd.
          gr[e] = zv == acc_t(0) ? acc_t(0) : ds * acc_t(0.5) / std::sqrt(std::abs(zv) + eps) * inv_m;
        }
      }
    });
  } else {
    at::parallel_for(0, B * P, 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) dzp[e] *= inv_m;
    });
  }
  // dG (B, C1, C2): dz scattered back; when y is x, dG + dG^T (both factors of G are x).
  at::Tensor dG = at::empty({B, C1, C2}, dz.options());
  acc_t* dg = dG.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B * C1, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / C1, i = r % C1;
      const acc_t* d = dzp + b * P;
      acc_t* row = dg + r * C2;
      for (int64_t j = 0; j < C2; ++j) {
        acc_t v;
        if (p.triu) {
          const int64_t lo = std::min(i, j), hi = std::max(i, j);
          const acc_t t = d[triu_index(lo, hi, C1)];
          v = p.sym ? (i == j ? 2 * t : t) : (i <= j ? t : acc_t(0));
        } else {
          v = p.sym ? d[i * C2 + j] + d[j * C2 + i] : d[i * C2 + j];
        }
        row[j] = v;
      }
    }
  });
  const at::Tensor X = as_mat(p.x, acc);
  at::Tensor gx, gy;
  if (p.sym) {
    gx = at::bmm(dG, X);
    gy = at::empty({0}, p.x.options());
  } else {
    const at::Tensor Y = as_mat(p.y, acc);
    gx = at::bmm(dG, Y);
    gy = at::bmm(dG.transpose(1, 2), X).view(p.y.sizes()).to(p.x.scalar_type());
  }
  return {gx.view(p.x.sizes()).to(p.x.scalar_type()), gy};
}

std::tuple<at::Tensor, at::Tensor> bilinear_pooling_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y,
                                                        c10::string_view normalize, bool triu, double eps) {
  const Problem p = make_problem("bilinear_pooling", x, y, std::string(normalize), triu, eps);
  std::tuple<at::Tensor, at::Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bilinear_pooling_cpu",
                                  [&] { r = forward<scalar_t>(p); });
  return r;
}

std::tuple<at::Tensor, at::Tensor> bilinear_pooling_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                 const std::optional<at::Tensor>& y,
                                                                 const at::Tensor& z, c10::string_view normalize,
                                                                 bool triu, double eps) {
  const Problem p = make_problem("bilinear_pooling_backward", x, y, std::string(normalize), triu, eps);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == p.B && grad_out.size(1) == p.P,
              "bilinear_pooling_backward: grad_out must have shape [", p.B, ", ", p.P, "], got ", grad_out.sizes());
  const auto acc = acc_type(x.scalar_type());
  if (p.normalize)
    TORCH_CHECK(z.sizes() == grad_out.sizes() && z.scalar_type() == acc,
                "bilinear_pooling_backward: z must be the forward's (", p.B, ", ", p.P, ") ", acc, " z, got ",
                z.sizes(), " ", z.scalar_type());
  std::tuple<at::Tensor, at::Tensor> r;
  const at::Tensor zc = p.normalize ? z.contiguous() : z;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bilinear_pooling_backward_cpu",
                                  [&] { r = backward<scalar_t>(p, grad_out, zc); });
  return r;
}

}  // namespace

TORCH_LIBRARY_IMPL(vkernels, CPU, m) {
  m.impl("bilinear_pooling", &bilinear_pooling_cpu);
  m.impl("bilinear_pooling_backward", &bilinear_pooling_backward_cpu);
}

}  // namespace vkernels::bilinear_pooling
