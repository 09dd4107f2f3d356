// mtdp CPU kernels, compiled on first use by mtdp/kernels.py (plain g++, torch's headers).
//
// biased_softmax_unnormalised: the elementwise part of one T5 attention head, fused.
// torch would need three passes over the [n, m] score matrix (+ bias, softmax's max / exp+sum
// / scale); this does two (add bias and max; exp and sum) and leaves the 1/sum scale to the
// caller, who applies it to the [n, d_kv] output of scores @ v instead of the [n, m] scores.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace {

using Vec = at::vec::Vectorized<float>;

// scores [n, m] contiguous float32, in place:
//   t[i, j] = scores[i, j] + bias[offset + i + j]     (a Hankel view of one bias vector)
//   scores[i, j] = exp(t[i, j] - max_j t[i, j]),  inv_sum[i] = 1 / sum_j scores[i, j]
void biased_softmax_unnormalised(at::Tensor scores, const at::Tensor& bias, int64_t offset,
                                 at::Tensor inv_sum) {
  TORCH_CHECK(scores.dim() == 2 && scores.is_contiguous() && scores.scalar_type() == at::kFloat,
              "scores must be a contiguous 2-D float32 tensor");
  TORCH_CHECK(bias.dim() == 1 && bias.is_contiguous() && bias.scalar_type() == at::kFloat,
              "bias must be a contiguous 1-D float32 tensor");
  TORCH_CHECK(inv_sum.is_contiguous() && inv_sum.scalar_type() == at::kFloat &&
                  inv_sum.numel() == scores.size(0),
              "inv_sum must be a contiguous float32 tensor with one value per row");
  const int64_t n = scores.size(0), m = scores.size(1);
  TORCH_CHECK(n == 0 || m == 0 || (offset >= 0 && offset + (n - 1) + (m - 1) < bias.numel()),
              "bias vector too short for ", n, " x ", m, " scores at offset ", offset);
  float* s = scores.data_ptr<float>();
  const float* b = bias.data_ptr<float>() + offset;
  float* z = inv_sum.data_ptr<float>();
  const int64_t V = Vec::size();
  at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = s + i * m;
      const float* brow = b + i;
      Vec vmax(-std::numeric_limits<float>::infinity());
      int64_t j = 0;
      for (; j + V <= m; j += V) {
        const Vec t = Vec::loadu(row + j) + Vec::loadu(brow + j);
        t.store(row + j);
        vmax = at::vec::maximum(vmax, t);
      }
      float mx = at::vec::vec_reduce_all<float>(
          [](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, vmax);
      for (; j < m; ++j) {
        row[j] += brow[j];
        mx = std::max(mx, row[j]);
      }
      const Vec vmx(mx);
      Vec vsum(0.f);
      j = 0;
      for (; j + V <= m; j += V) {
        // exp_u20 (<= 2 ulp) rather than softmax's exp (1 ulp): 20 % faster here, and the
        // difference is below the float32 rounding of the row sum.
        const Vec e = (Vec::loadu(row + j) - vmx).exp_u20();
        e.store(row + j);
        vsum = vsum + e;
      }
      float sum = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, vsum);
      for (; j < m; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      z[i] = 1.f / sum;
    }
  });
}

}  // namespace

TORCH_LIBRARY(mtdp, m) {
  m.def("biased_softmax_unnormalised(Tensor(a!) scores, Tensor bias, int offset, "
        "Tensor(b!) inv_sum) -> ()");
}

TORCH_LIBRARY_IMPL(mtdp, CPU, m) {
  m.impl("biased_softmax_unnormalised", biased_softmax_unnormalised);
}
