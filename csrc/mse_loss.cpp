// MSE loss on CPU. Memory bound, 3 FLOPs per element (sub, mul, add). Elements moved per element
// of input: mse_loss reads 2 (input, target) and writes 0 (mean/sum) or 1 (none); mse_loss_forward
// also writes diff, so 3 (mean/sum) or 4 (none); mse_loss_backward reads diff (and grad_output for
// none) and writes grad_input: 2 (mean/sum) or 3 (none).
//
// Reductions are split into fixed-size chunks whose partial sums are added in chunk order, so the
// result depends on neither the thread count nor the scheduling. Each chunk accumulates per SIMD
// lane in double for float64 and float32 (a squared float32 difference is exact there) and in
// float for the half types.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "checks.h"
#include "math_type.h"
#include "mse_loss_checks.h"
#include "cpu/convert.h"
#include "cpu/dispatch.h"

namespace torchext {
namespace {

// Elementwise math in math_t (float32 keeps torch's rounding of input - target), sums in sum_t.
using cpu::load;
using cpu::store;
using cpu::u16_alias;

// sum((x - t)^2) over n elements. `omp simd reduction` lets the compiler keep one partial sum per
// SIMD lane (it may reassociate); the order is fixed for a given SIMD level, so results repeat.
template <typename T>
TORCHEXT_INLINE void sq_diff_sum_impl(const T* __restrict__ x, const T* __restrict__ t, int64_t n,
                                      sum_t<T>* __restrict__ out) {
  using A = sum_t<T>;
  A acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const A d = load(x, i) - load(t, i);
    acc += d * d;
  }
  *out = acc;
}
TORCHEXT_CPU_DISPATCH(sq_diff_sum_kernel, sq_diff_sum_impl)

// Same sum, also writing diff = x - t for the backward in the same pass.
template <typename T>
TORCHEXT_INLINE void sq_diff_sum_save_impl(const T* __restrict__ x, const T* __restrict__ t, T* __restrict__ diff,
                                           int64_t n, sum_t<T>* __restrict__ out) {
  using A = sum_t<T>;
  A acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const math_t<T> d = load(x, i) - load(t, i);
    store(diff, i, d);
    acc += static_cast<A>(d) * static_cast<A>(d);
  }
  *out = acc;
}
TORCHEXT_CPU_DISPATCH(sq_diff_sum_save_kernel, sq_diff_sum_save_impl)

// loss = (x - t)^2 elementwise; diff may be null (loss only).
template <typename T>
TORCHEXT_INLINE void sq_diff_impl(const T* __restrict__ x, const T* __restrict__ t, T* __restrict__ loss,
                                  T* __restrict__ diff, int64_t n) {
  if (diff == nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      const math_t<T> d = load(x, i) - load(t, i);
      store(loss, i, d * d);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const math_t<T> d = load(x, i) - load(t, i);
      store(diff, i, d);
      store(loss, i, d * d);
    }
  }
}
TORCHEXT_CPU_DISPATCH(sq_diff_kernel, sq_diff_impl)

// grad_input = scale * diff (mean/sum: scale = 2 * grad_output [/ numel]).
template <typename T>
TORCHEXT_INLINE void scale_impl(const T* __restrict__ diff, T* __restrict__ out, int64_t n, math_t<T> scale) {
  for (int64_t i = 0; i < n; ++i) store(out, i, scale * load(diff, i));
}
TORCHEXT_CPU_DISPATCH(scale_kernel, scale_impl)

// grad_input = 2 * diff * grad_output elementwise (reduction none).
template <typename T>
TORCHEXT_INLINE void scale_mul_impl(const T* __restrict__ g, const T* __restrict__ diff, T* __restrict__ out,
                                    int64_t n) {
  using C = math_t<T>;
  for (int64_t i = 0; i < n; ++i) store(out, i, C(2) * load(diff, i) * load(g, i));
}
TORCHEXT_CPU_DISPATCH(scale_mul_kernel, scale_mul_impl)

#if TORCHEXT_X86_SIMD
// float16 on AVX2 / AVX-512 machines: GCC does not vectorise the software conversions, so these
// loops convert 8 elements at a time with F16C in registers and do the math in float (the same
// math as the software path, and the hardware also rounds to nearest even); tails take the
// software conversions. Sums keep 16 float lanes and add them in a fixed order.
using cpu::load8;
using cpu::store8;
using cpu::use_f16c;

TORCHEXT_TARGET_AVX2 inline float lane_sum(__m256 a, __m256 b) {
  alignas(32) float l[8];
  _mm256_store_ps(l, _mm256_add_ps(a, b));
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

template <bool kSaveDiff>
TORCHEXT_TARGET_AVX2 void sum_f16c(const c10::Half* x, const c10::Half* t, c10::Half* diff, int64_t n, float* out) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 d0 = _mm256_sub_ps(load8(x + i), load8(t + i));
    const __m256 d1 = _mm256_sub_ps(load8(x + i + 8), load8(t + i + 8));
    if (kSaveDiff) {
      store8(diff + i, d0);
      store8(diff + i + 8, d1);
    }
    acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(d0, d0));
    acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(d1, d1));
  }
  float total = lane_sum(acc0, acc1);
  for (; i < n; ++i) {
    const float d = load(x, i) - load(t, i);
    if (kSaveDiff) store(diff, i, d);
    total += d * d;
  }
  *out = total;
}

TORCHEXT_TARGET_AVX2 void elementwise_f16c(const c10::Half* x, const c10::Half* t, c10::Half* loss, c10::Half* diff,
                                           int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(load8(x + i), load8(t + i));
    if (diff != nullptr) store8(diff + i, d);
    store8(loss + i, _mm256_mul_ps(d, d));
  }
  for (; i < n; ++i) {
    const float d = load(x, i) - load(t, i);
    if (diff != nullptr) store(diff, i, d);
    store(loss, i, d * d);
  }
}

TORCHEXT_TARGET_AVX2 void scale_f16c(const c10::Half* diff, c10::Half* out, int64_t n, float scale) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, _mm256_mul_ps(s, load8(diff + i)));
  for (; i < n; ++i) store(out, i, scale * load(diff, i));
}

TORCHEXT_TARGET_AVX2 void scale_mul_f16c(const c10::Half* g, const c10::Half* diff, c10::Half* out, int64_t n) {
  const __m256 two = _mm256_set1_ps(2.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, _mm256_mul_ps(_mm256_mul_ps(two, load8(diff + i)), load8(g + i)));
  for (; i < n; ++i) store(out, i, 2.f * load(diff, i) * load(g, i));
}
#endif  // TORCHEXT_X86_SIMD

// The kernels as called by the drivers below: generic, with a float16 overload using F16C on x86.
template <typename T>
void run_sum(const T* x, const T* t, T* diff, int64_t n, sum_t<T>* out) {
  if (diff == nullptr) {
    sq_diff_sum_kernel<T>(x, t, n, out);
  } else {
    sq_diff_sum_save_kernel<T>(x, t, diff, n, out);
  }
}
#if TORCHEXT_X86_SIMD
void run_sum(const c10::Half* x, const c10::Half* t, c10::Half* diff, int64_t n, float* out) {
  if (!use_f16c()) return run_sum<c10::Half>(x, t, diff, n, out);
  if (diff == nullptr) return sum_f16c<false>(x, t, diff, n, out);
  sum_f16c<true>(x, t, diff, n, out);
}
#endif

template <typename T>
void run_elementwise(const T* x, const T* t, T* loss, T* diff, int64_t n) {
  sq_diff_kernel<T>(x, t, loss, diff, n);
}
#if TORCHEXT_X86_SIMD
void run_elementwise(const c10::Half* x, const c10::Half* t, c10::Half* loss, c10::Half* diff, int64_t n) {
  if (!use_f16c()) return run_elementwise<c10::Half>(x, t, loss, diff, n);
  elementwise_f16c(x, t, loss, diff, n);
}
#endif

template <typename T>
void run_scale(const T* diff, T* out, int64_t n, math_t<T> scale) {
  scale_kernel<T>(diff, out, n, scale);
}
#if TORCHEXT_X86_SIMD
void run_scale(const c10::Half* diff, c10::Half* out, int64_t n, float scale) {
  if (!use_f16c()) return run_scale<c10::Half>(diff, out, n, scale);
  scale_f16c(diff, out, n, scale);
}
#endif

template <typename T>
void run_scale_mul(const T* g, const T* diff, T* out, int64_t n) {
  scale_mul_kernel<T>(g, diff, out, n);
}
#if TORCHEXT_X86_SIMD
void run_scale_mul(const c10::Half* g, const c10::Half* diff, c10::Half* out, int64_t n) {
  if (!use_f16c()) return run_scale_mul<c10::Half>(g, diff, out, n);
  scale_mul_f16c(g, diff, out, n);
}
#endif

constexpr int64_t kGrain = 1 << 15;       // elementwise work per task
constexpr int64_t kChunk = 1 << 13;       // elements per partial sum (fixed: makes sums reproducible)
constexpr int64_t kChunksPerTask = 4;     // so small reductions stay on the calling thread

// Deterministic sum of (x - t)^2, optionally writing diff.
template <typename T>
double reduce_sq_diff(const T* x, const T* t, T* diff, int64_t n) {
  using A = sum_t<T>;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<A> partial(static_cast<size_t>(chunks));
  at::parallel_for(0, chunks, kChunksPerTask, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk;
      const int64_t len = std::min(kChunk, n - begin);
      run_sum(x + begin, t + begin, diff == nullptr ? nullptr : diff + begin, len, &partial[c]);
    }
  });
  double total = 0.0;
  for (const A p : partial) total += static_cast<double>(p);
  return total;
}

// The shared body of mse_loss and mse_loss_forward; diff_out is undefined for loss only.
at::Tensor mse_impl(const char* op, const at::Tensor& input, const at::Tensor& target, int64_t reduction,
                    at::Tensor* diff_out) {
  check_mse_args(op, input, target, reduction);
  const auto xt = common_layout(input, target);
  const at::Tensor& x = xt.first;
  const at::Tensor& t = xt.second;
  const int64_t n = x.numel();
  at::Tensor diff;
  if (diff_out != nullptr) {
    diff = at::empty_like(x);
    *diff_out = diff;
  }
  at::Tensor loss = reduction == 0 ? at::empty_like(x) : at::empty({}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "torchext::mse_loss", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    scalar_t* dp = diff.defined() ? diff.mutable_data_ptr<scalar_t>() : nullptr;
    if (reduction == 0) {
      scalar_t* lp = loss.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        run_elementwise(xp + begin, tp + begin, lp + begin, dp ? dp + begin : nullptr, end - begin);
      });
    } else {
      const double total = reduce_sq_diff<scalar_t>(xp, tp, dp, n);
      // mean of an empty tensor is 0/0 = nan, as in torch.
      const double value = reduction == 1 ? total / static_cast<double>(n) : total;
      *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(value);
    }
  });
  return loss;
}

at::Tensor mse_loss_cpu(const at::Tensor& input, const at::Tensor& target, int64_t reduction) {
  return mse_impl("mse_loss", input, target, reduction, nullptr);
}

std::tuple<at::Tensor, at::Tensor> mse_loss_forward_cpu(const at::Tensor& input, const at::Tensor& target,
                                                        int64_t reduction) {
  at::Tensor diff;
  at::Tensor loss = mse_impl("mse_loss_forward", input, target, reduction, &diff);
  return {loss, diff};
}

at::Tensor mse_loss_backward_cpu(const at::Tensor& grad_output, const at::Tensor& diff, int64_t reduction) {
  const char* op = "mse_loss_backward";
  check_mse_backward_args(op, grad_output, diff, reduction);
  const int64_t n = diff.numel();
  if (reduction == 0) {
    const auto gd = common_layout(grad_output, diff);
    const at::Tensor& g = gd.first;
    const at::Tensor& d = gd.second;
    at::Tensor out = at::empty_like(d);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "torchext::mse_loss_backward", [&] {
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const scalar_t* dp = d.const_data_ptr<scalar_t>();
      scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        run_scale_mul(gp + begin, dp + begin, op_ + begin, end - begin);
      });
    });
    return out;
  }
  const at::Tensor d = diff.is_non_overlapping_and_dense() ? diff : diff.contiguous();
  at::Tensor out = at::empty_like(d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "torchext::mse_loss_backward", [&] {
    using C = math_t<scalar_t>;
    const double g = static_cast<double>(*grad_output.const_data_ptr<scalar_t>());
    const double norm = reduction == 1 ? 2.0 / static_cast<double>(n) : 2.0;
    const C scale = static_cast<C>(norm * g);
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      run_scale(dp + begin, op_ + begin, end - begin, scale);
    });
  });
  return out;
}

}  // namespace
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("mse_loss", &torchext::mse_loss_cpu);
  m.impl("mse_loss_forward", &torchext::mse_loss_forward_cpu);
  m.impl("mse_loss_backward", &torchext::mse_loss_backward_cpu);
}
