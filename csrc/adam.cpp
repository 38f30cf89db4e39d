// Fused Adam / AdamW step on CPU. One pass per element: reads p, g, m, v and writes p, m, v
// (28 B in fp32; +8 B with amsgrad, +8 B with fp32 master weights). About 15 FLOPs and one sqrt
// and one division per element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "cpu/dispatch.h"
#include "cpu/optim.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace torchext {
namespace {

template <typename M>
struct AdamScalars {
  M lr, beta1, beta2, eps, weight_decay, inv_scale;
  // Formed in double like torch's Python scalars: 1 - 0.999f in float is off by 1.3e-5.
  M one_minus_beta1, one_minus_beta2, decay;
  M step_size;             // lr / (1 - beta1^t)
  M bias_correction2_sqrt; // sqrt(1 - beta2^t); eps is added after dividing by it, as torch does
  bool amsgrad, maximize, decoupled;
};

// GCC will not vectorise sqrt without -fno-math-errno (the scalar call may set errno), so square
// roots are taken a block at a time by these explicitly vectorised helpers, picked by the same
// run-time SIMD level as the rest of the kernel.
#if defined(__x86_64__) && defined(__GNUC__)
TORCHEXT_TARGET_AVX512 void sqrt_inplace_avx512(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_sqrt_ps(_mm512_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] = __builtin_sqrtf(x[i]);
}
TORCHEXT_TARGET_AVX512 void sqrt_inplace_avx512(double* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm512_storeu_pd(x + i, _mm512_sqrt_pd(_mm512_loadu_pd(x + i)));
  for (; i < n; ++i) x[i] = __builtin_sqrt(x[i]);
}
TORCHEXT_TARGET_AVX2 void sqrt_inplace_avx2(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] = __builtin_sqrtf(x[i]);
}
TORCHEXT_TARGET_AVX2 void sqrt_inplace_avx2(double* x, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(x + i, _mm256_sqrt_pd(_mm256_loadu_pd(x + i)));
  for (; i < n; ++i) x[i] = __builtin_sqrt(x[i]);
}
void sqrt_inplace_sse2(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] = __builtin_sqrtf(x[i]);
}
void sqrt_inplace_sse2(double* x, int64_t n) {
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) _mm_storeu_pd(x + i, _mm_sqrt_pd(_mm_loadu_pd(x + i)));
  for (; i < n; ++i) x[i] = __builtin_sqrt(x[i]);
}
template <typename M>
void sqrt_inplace(M* x, int64_t n) {
  switch (cpu::level()) {
    case cpu::Level::AVX512: return sqrt_inplace_avx512(x, n);
    case cpu::Level::AVX2: return sqrt_inplace_avx2(x, n);
    default: return sqrt_inplace_sse2(x, n);
  }
}
#else
template <typename M>
void sqrt_inplace(M* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::sqrt(x[i]);
}
#endif

// Master weights and amsgrad change which arrays are touched, so they are compile-time: the loops
// then have no conditional memory access and GCC vectorises them at every ISA level. Elements go
// in L1-resident blocks: moments first, then the square roots, then the params.
template <typename T, bool kMaster, bool kAmsgrad>
TORCHEXT_INLINE void adam_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                               T* __restrict__ vmax, float* __restrict__ master, int64_t n,
                               const AdamScalars<typename cpu::OpMath<T>::type>& s) {
  using M = typename cpu::OpMath<T>::type;
  constexpr int64_t kBlock = 512;
  const M one_minus_beta1 = s.one_minus_beta1;
  const M one_minus_beta2 = s.one_minus_beta2;
  const M beta2 = s.beta2, eps = s.eps, step_size = s.step_size;
  // One division per element instead of two; differs from torch's division by sqrt(bc2) by at most
  // one rounding of the denominator.
  const M inv_bc2_sqrt = M(1) / s.bias_correction2_sqrt;
  const M decay = s.decoupled ? s.decay : M(1);
  const M l2 = s.decoupled ? M(0) : s.weight_decay;
  const M grad_factor = s.maximize ? -s.inv_scale : s.inv_scale;  // unscale and maximize in one multiply
  alignas(64) M mb[kBlock];
  alignas(64) M db[kBlock];
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = std::min(kBlock, n - b0);
    T* __restrict__ pp = p + b0;
    const T* __restrict__ gp = g + b0;
    T* __restrict__ mp = m + b0;
    T* __restrict__ vp = v + b0;
    for (int64_t j = 0; j < len; ++j) {
      const M pv = (kMaster ? static_cast<M>(master[b0 + j]) : static_cast<M>(pp[j])) * decay;
      const M gv = static_cast<M>(gp[j]) * grad_factor + l2 * pv;
      M mv = static_cast<M>(mp[j]);
      mv += one_minus_beta1 * (gv - mv);  // torch's lerp for weight < 0.5
      const M vv = beta2 * static_cast<M>(vp[j]) + one_minus_beta2 * gv * gv;
      mp[j] = static_cast<T>(mv);
      vp[j] = static_cast<T>(vv);
      mb[j] = mv;
      M vd = vv;
      if (kAmsgrad) {
        // Compared in float like the rest of the math: a half-rounded v can flush to 0 and leave
        // only eps in the denominator.
        const M old = static_cast<M>(vmax[b0 + j]);
        vd = old > vv ? old : vv;
        vmax[b0 + j] = static_cast<T>(vd);
      }
      db[j] = vd;
    }
    sqrt_inplace<M>(db, len);
    for (int64_t j = 0; j < len; ++j) {
      M pv = (kMaster ? static_cast<M>(master[b0 + j]) : static_cast<M>(pp[j])) * decay;
      pv -= step_size * mb[j] / (db[j] * inv_bc2_sqrt + eps);  // eps after the bias correction, as torch
      if (kMaster) master[b0 + j] = static_cast<float>(pv);
      pp[j] = static_cast<T>(pv);
    }
  }
}

template <typename T>
TORCHEXT_INLINE void adam_impl(T* p, const T* g, T* m, T* v, T* vmax, float* master, int64_t n,
                               AdamScalars<typename cpu::OpMath<T>::type> s) {
  if (master) {
    if (s.amsgrad) return adam_loop<T, true, true>(p, g, m, v, vmax, master, n, s);
    return adam_loop<T, true, false>(p, g, m, v, vmax, master, n, s);
  }
  if (s.amsgrad) return adam_loop<T, false, true>(p, g, m, v, vmax, master, n, s);
  return adam_loop<T, false, false>(p, g, m, v, vmax, master, n, s);
}
TORCHEXT_CPU_DISPATCH(adam_kernel, adam_impl)

constexpr int64_t kGrain = 1 << 14;

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList max_exp_avg_sqs, at::TensorList state_steps, at::TensorList master_params,
                   double lr, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                   bool maximize, bool decoupled_weight_decay, const c10::optional<at::Tensor>& lr_tensor,
                   const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  check_adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params, amsgrad,
                  grad_scale, found_inf, lr_tensor);
  if (lr_tensor.has_value()) lr = lr_tensor->item<double>();
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return;  // skipped step: touch nothing
  const double inv_scale = grad_scale.has_value() ? 1.0 / static_cast<double>(grad_scale->item<float>()) : 1.0;

  std::vector<int64_t> numels;
  for (const auto& p : params) numels.push_back(p.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "torchext::adam_step_", [&] {
    using M = typename cpu::OpMath<scalar_t>::type;
    std::vector<AdamScalars<M>> scalars(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      // The counter is float32 like torch's; its incremented value sets the bias correction.
      const double step = static_cast<double>(state_steps[i].item<float>() + 1.f);
      const double bc1 = 1.0 - std::pow(beta1, step);
      const double bc2 = 1.0 - std::pow(beta2, step);
      scalars[i] = {M(lr), M(beta1), M(beta2), M(eps), M(weight_decay), M(inv_scale), M(1.0 - beta1),
                    M(1.0 - beta2), M(1.0 - lr * weight_decay), M(lr / bc1),
                    M(std::sqrt(bc2)), amsgrad, maximize, decoupled_weight_decay};
    }
    cpu::parallel_over_tensors(numels, kGrain, [&](size_t t, int64_t begin, int64_t end) {
      scalar_t* p = params[t].mutable_data_ptr<scalar_t>() + begin;
      const scalar_t* g = grads[t].const_data_ptr<scalar_t>() + begin;
      scalar_t* m = exp_avgs[t].mutable_data_ptr<scalar_t>() + begin;
      scalar_t* v = exp_avg_sqs[t].mutable_data_ptr<scalar_t>() + begin;
      scalar_t* vmax = amsgrad ? max_exp_avg_sqs[t].mutable_data_ptr<scalar_t>() + begin : nullptr;
      float* master = master_params.empty() ? nullptr : master_params[t].mutable_data_ptr<float>() + begin;
      adam_kernel<scalar_t>(p, g, m, v, vmax, master, end - begin, scalars[t]);
    });
  });
  for (const auto& s : state_steps) s.add_(1);
}

}  // namespace
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, CPU, m) { m.impl("adam_step_", &torchext::adam_step_cpu); }
