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

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "checks.h"
#include "mse_loss_checks.h"
#include "cpu/dispatch.h"

namespace torchext {
namespace {

// Arithmetic type of the elementwise math (float32 keeps torch's rounding of input - target) and
// accumulator type of the sums.
template <typename T>
using compute_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
template <typename T>
using acc_t = typename std::conditional<std::is_same<T, double>::value || std::is_same<T, float>::value,
                                        double, float>::type;

// Element loads and stores in compute_t. The half types are converted with integer and float
// arithmetic on their bit patterns instead of c10's routines (or GCC's _Float16, which converts
// one element at a time), so that every loop vectorises at every SIMD level. Both conversions are
// exact / round to nearest even, keep NaN (as a quiet NaN) and infinities, and handle subnormals.
typedef uint16_t u16_alias __attribute__((may_alias));

TORCHEXT_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
TORCHEXT_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

TORCHEXT_INLINE double load(const double* p, int64_t i) { return p[i]; }
TORCHEXT_INLINE float load(const float* p, int64_t i) { return p[i]; }
TORCHEXT_INLINE float load(const c10::Half* p, int64_t i) {
  const uint32_t h = reinterpret_cast<const u16_alias*>(p)[i];
  const uint32_t mag = h & 0x7fffu;
  // Shifted into a float's exponent/mantissa fields the magnitude is off by 2^(127-15) for normal
  // numbers and, as a float subnormal, by the same factor for half subnormals.
  uint32_t bits = float_to_bits(bits_to_float(mag << 13) * 0x1.0p112f);
  bits = mag >= 0x7c00u ? ((mag << 13) | 0x7f800000u) : bits;  // inf and NaN keep their payload
  return bits_to_float(bits | ((h & 0x8000u) << 16));
}
TORCHEXT_INLINE float load(const c10::BFloat16* p, int64_t i) {
  return bits_to_float(static_cast<uint32_t>(reinterpret_cast<const u16_alias*>(p)[i]) << 16);
}

TORCHEXT_INLINE void store(double* p, int64_t i, double v) { p[i] = v; }
TORCHEXT_INLINE void store(float* p, int64_t i, float v) { p[i] = v; }
TORCHEXT_INLINE void store(c10::Half* p, int64_t i, float v) {
  const uint32_t w = float_to_bits(v);
  const uint32_t a = w & 0x7fffffffu;
  // Normal halves: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to
  // nearest even; a mantissa carry correctly bumps the exponent.
  const uint32_t normal = ((a + 0x0fffu + ((a >> 13) & 1u)) >> 13) - (112u << 10);
  // Below 2^-14: adding 0.5f makes the FPU round |v| to a multiple of 2^-24, the half subnormal
  // step, which then sits in the low mantissa bits (2^-14 itself comes out as the smallest normal).
  const uint32_t subnormal = float_to_bits(bits_to_float(a) + 0.5f) - 0x3f000000u;
  uint32_t h = a < 0x38800000u ? subnormal : normal;
  h = a >= 0x477ff000u ? 0x7c00u : h;  // rounds to infinity from 65520 on
  h = a > 0x7f800000u ? 0x7e00u : h;   // NaN
  reinterpret_cast<u16_alias*>(p)[i] = static_cast<uint16_t>(h | ((w >> 16) & 0x8000u));
}
TORCHEXT_INLINE void store(c10::BFloat16* p, int64_t i, float v) {
  const uint32_t bits = float_to_bits(v);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  reinterpret_cast<u16_alias*>(p)[i] = static_cast<uint16_t>(v != v ? 0x7fc0u : rounded);
}

// sum((x - t)^2) over n elements. `omp simd reduction` lets the compiler keep one partial sum per
// SIMD lane (it may reassociate); the order is fixed for a given SIMD level, so results repeat.
template <typename T>
TORCHEXT_INLINE void sq_diff_sum_impl(const T* __restrict__ x, const T* __restrict__ t, int64_t n,
                                      acc_t<T>* __restrict__ out) {
  using A = acc_t<T>;
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
                                           int64_t n, acc_t<T>* __restrict__ out) {
  using A = acc_t<T>;
  A acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const compute_t<T> d = load(x, i) - load(t, i);
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
      const compute_t<T> d = load(x, i) - load(t, i);
      store(loss, i, d * d);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const compute_t<T> d = load(x, i) - load(t, i);
      store(diff, i, d);
      store(loss, i, d * d);
    }
  }
}
TORCHEXT_CPU_DISPATCH(sq_diff_kernel, sq_diff_impl)

// grad_input = scale * diff (mean/sum: scale = 2 * grad_output [/ numel]).
template <typename T>
TORCHEXT_INLINE void scale_impl(const T* __restrict__ diff, T* __restrict__ out, int64_t n, compute_t<T> scale) {
  for (int64_t i = 0; i < n; ++i) store(out, i, scale * load(diff, i));
}
TORCHEXT_CPU_DISPATCH(scale_kernel, scale_impl)

// grad_input = 2 * diff * grad_output elementwise (reduction none).
template <typename T>
TORCHEXT_INLINE void scale_mul_impl(const T* __restrict__ g, const T* __restrict__ diff, T* __restrict__ out,
                                    int64_t n) {
  using C = compute_t<T>;
  for (int64_t i = 0; i < n; ++i) store(out, i, C(2) * load(diff, i) * load(g, i));
}
TORCHEXT_CPU_DISPATCH(scale_mul_kernel, scale_mul_impl)

// float16 on AVX2 / AVX-512 machines: the software conversions above cost more than the memory
// traffic while data is in cache, so blocks of kStage elements are converted with F16C into
// L1-resident float buffers, run through the float kernels (same rounding: the math is float
// either way) and converted back. The hardware rounds to nearest even like the software path.
constexpr int64_t kStage = 1024;

bool use_f16c() { return cpu::level() != cpu::Level::Default; }

TORCHEXT_TARGET_AVX2 void half_to_float(const c10::Half* src, float* dst, int64_t n) {
  const u16_alias* s = reinterpret_cast<const u16_alias*>(src);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_store_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  }
  for (; i < n; ++i) dst[i] = load(src, i);
}

TORCHEXT_TARGET_AVX2 void float_to_half(const float* src, c10::Half* dst, int64_t n) {
  u16_alias* d = reinterpret_cast<u16_alias*>(dst);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(_mm256_load_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) store(dst, i, src[i]);
}

// The kernels as called by the drivers below: generic, with a staged float16 overload.
template <typename T>
void run_sum(const T* x, const T* t, T* diff, int64_t n, acc_t<T>* out) {
  if (diff == nullptr) {
    sq_diff_sum_kernel<T>(x, t, n, out);
  } else {
    sq_diff_sum_save_kernel<T>(x, t, diff, n, out);
  }
}
void run_sum(const c10::Half* x, const c10::Half* t, c10::Half* diff, int64_t n, float* out) {
  if (!use_f16c()) return run_sum<c10::Half>(x, t, diff, n, out);
  alignas(64) float xb[kStage];
  alignas(64) float tb[kStage];
  alignas(64) float db[kStage];
  double total = 0.0;
  for (int64_t i = 0; i < n; i += kStage) {
    const int64_t m = std::min(kStage, n - i);
    half_to_float(x + i, xb, m);
    half_to_float(t + i, tb, m);
    double part;
    if (diff == nullptr) {
      sq_diff_sum_kernel<float>(xb, tb, m, &part);
    } else {
      sq_diff_sum_save_kernel<float>(xb, tb, db, m, &part);
      float_to_half(db, diff + i, m);
    }
    total += part;
  }
  *out = static_cast<float>(total);
}

template <typename T>
void run_elementwise(const T* x, const T* t, T* loss, T* diff, int64_t n) {
  sq_diff_kernel<T>(x, t, loss, diff, n);
}
void run_elementwise(const c10::Half* x, const c10::Half* t, c10::Half* loss, c10::Half* diff, int64_t n) {
  if (!use_f16c()) return run_elementwise<c10::Half>(x, t, loss, diff, n);
  alignas(64) float xb[kStage];
  alignas(64) float tb[kStage];
  alignas(64) float lb[kStage];
  alignas(64) float db[kStage];
  for (int64_t i = 0; i < n; i += kStage) {
    const int64_t m = std::min(kStage, n - i);
    half_to_float(x + i, xb, m);
    half_to_float(t + i, tb, m);
    sq_diff_kernel<float>(xb, tb, lb, diff == nullptr ? nullptr : db, m);
    float_to_half(lb, loss + i, m);
    if (diff != nullptr) float_to_half(db, diff + i, m);
  }
}

template <typename T>
void run_scale(const T* diff, T* out, int64_t n, compute_t<T> scale) {
  scale_kernel<T>(diff, out, n, scale);
}
void run_scale(const c10::Half* diff, c10::Half* out, int64_t n, float scale) {
  if (!use_f16c()) return run_scale<c10::Half>(diff, out, n, scale);
  alignas(64) float db[kStage];
  alignas(64) float ob[kStage];
  for (int64_t i = 0; i < n; i += kStage) {
    const int64_t m = std::min(kStage, n - i);
    half_to_float(diff + i, db, m);
    scale_kernel<float>(db, ob, m, scale);
    float_to_half(ob, out + i, m);
  }
}

template <typename T>
void run_scale_mul(const T* g, const T* diff, T* out, int64_t n) {
  scale_mul_kernel<T>(g, diff, out, n);
}
void run_scale_mul(const c10::Half* g, const c10::Half* diff, c10::Half* out, int64_t n) {
  if (!use_f16c()) return run_scale_mul<c10::Half>(g, diff, out, n);
  alignas(64) float gb[kStage];
  alignas(64) float db[kStage];
  alignas(64) float ob[kStage];
  for (int64_t i = 0; i < n; i += kStage) {
    const int64_t m = std::min(kStage, n - i);
    half_to_float(g + i, gb, m);
    half_to_float(diff + i, db, m);
    scale_mul_kernel<float>(gb, db, ob, m);
    float_to_half(ob, out + i, m);
  }
}

constexpr int64_t kGrain = 1 << 15;       // elementwise work per task
constexpr int64_t kChunk = 1 << 13;       // elements per partial sum (fixed: makes sums reproducible)
constexpr int64_t kChunksPerTask = 4;     // so small reductions stay on the calling thread

// Deterministic sum of (x - t)^2, optionally writing diff.
template <typename T>
double reduce_sq_diff(const T* x, const T* t, T* diff, int64_t n) {
  using A = acc_t<T>;
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
    using C = compute_t<scalar_t>;
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
