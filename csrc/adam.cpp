// Fused Adam / AdamW step on CPU. One pass per element: reads p, g, m, v and writes p, m, v
// (28 B in fp32, +8 B with amsgrad; also 28 B for a half param with fp32 master weights, which
// reads and writes the master instead of p, keeps float32 moments, reads a half g and writes a half
// p). About 15 FLOPs, one sqrt and one division per element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "math_type.h"
#include "cpu/convert.h"
#include "cpu/dispatch.h"
#include "cpu/optim.h"
#include "optim_args.h"

// The float16 path below passes __m256 by value to always-inline helpers that only ever run
// inlined into AVX2 code, so GCC's note about the AVX calling convention does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace torchext {
namespace {

// The per-tensor constants of one step, formed in double from the step's arguments (as torch forms
// its Python numbers: 1 - 0.999f in float is off by 1.3e-5), then rounded to the math type.
template <typename M>
struct AdamConsts {
  M one_minus_beta1, one_minus_beta2, beta2, eps;
  M step_size;     // lr / (1 - beta1^t)
  // 1 / sqrt(1 - beta2^t): one division per element instead of two; differs from torch's division
  // by sqrt(bc2) by at most one rounding of the denominator. eps is added after it, as torch does.
  M inv_bc2_sqrt;
  M decay, l2;     // (1 - lr * wd) for decoupled weight decay, else 1; wd for L2, else 0
  M grad_factor;   // unscale and maximize in one multiply
};

TORCHEXT_INLINE float vsqrt(float x) { return std::sqrt(x); }
TORCHEXT_INLINE double vsqrt(double x) { return std::sqrt(x); }
// Compared in the math type: a half-rounded v can flush to 0 and leave only eps in the denominator.
TORCHEXT_INLINE float vmax_of(float old, float v) { return old > v ? old : v; }
TORCHEXT_INLINE double vmax_of(double old, double v) { return old > v ? old : v; }
#if TORCHEXT_F16C_OPTIM
TORCHEXT_TARGET_AVX2 inline __m256 vsqrt(__m256 x) { return _mm256_sqrt_ps(x); }
TORCHEXT_TARGET_AVX2 inline __m256 vmax_of(__m256 old, __m256 v) { return _mm256_max_ps(old, v); }  // old > v ? old : v
#endif

// The update of one element (V = the math type) or of 8 float lanes (V = __m256, whose arithmetic
// operators are GCC vector extensions), written once for both. Returns the new parameter and
// updates m, v and vmax in place.
template <bool kAmsgrad, typename V, typename M>
TORCHEXT_INLINE V adam_math(V p, V g, V& m, V& v, V& vmax, const AdamConsts<M>& c) {
  p = p * c.decay;
  V gv = g * c.grad_factor;
  // Only when there is L2 decay, as in torch: 0 * p would turn an infinite parameter into NaN.
  if (c.l2 != M(0)) gv = gv + c.l2 * p;
  m = m + c.one_minus_beta1 * (gv - m);  // torch's lerp for weight < 0.5
  v = c.beta2 * v + c.one_minus_beta2 * gv * gv;
  V denom = v;
  if (kAmsgrad) {
    vmax = vmax_of(vmax, v);
    denom = vmax;
  }
  return p - c.step_size * m / (vsqrt(denom) * c.inv_bc2_sqrt + c.eps);  // eps after the bias correction, as torch
}

// S is the moments' storage type: the param dtype, or float32 beside fp32 master weights (then T is
// a half type and master is never null). Master weights and amsgrad change which arrays are
// touched, so they are compile-time: the loop then has no conditional memory access and GCC
// vectorises it, square root and division included (setup.py passes -fno-math-errno; without it
// every sqrt becomes a scalar libm call), at every ISA level. One pass: each element is loaded once
// and stored once.
template <typename T, typename S, bool kAmsgrad>
TORCHEXT_INLINE void adam_loop(T* __restrict__ p, const T* __restrict__ g, S* __restrict__ m, S* __restrict__ v,
                               S* __restrict__ vmax, float* __restrict__ master, int64_t n,
                               const AdamConsts<math_t<T>>& c) {
  using M = math_t<T>;
  constexpr bool kMaster = kHasMaster<T, S>;
  for (int64_t j = 0; j < n; ++j) {
    M mv = cpu::load(m, j), vv = cpu::load(v, j), vmaxv = kAmsgrad ? cpu::load(vmax, j) : M(0);
    const M pv = adam_math<kAmsgrad>(kMaster ? static_cast<M>(master[j]) : cpu::load(p, j), cpu::load(g, j), mv,
                                     vv, vmaxv, c);
    cpu::store(m, j, mv);
    cpu::store(v, j, vv);
    if (kAmsgrad) cpu::store(vmax, j, vmaxv);
    if (kMaster) master[j] = static_cast<float>(pv);
    cpu::store(p, j, pv);
  }
}

// vmax is null without amsgrad.
template <typename T, typename S>
TORCHEXT_INLINE void adam_impl(T* p, const T* g, S* m, S* v, S* vmax, float* master, int64_t n,
                               const AdamConsts<math_t<T>>& c) {
  if (vmax) return adam_loop<T, S, true>(p, g, m, v, vmax, master, n, c);
  return adam_loop<T, S, false>(p, g, m, v, vmax, master, n, c);
}
TORCHEXT_CPU_DISPATCH(adam_kernel, adam_impl)

#if TORCHEXT_F16C_OPTIM

// float16 with F16C: 8 elements converted in registers per step (GCC does not vectorise scalar
// half conversions through F16C), the same math as adam_loop. The tail goes through adam_loop.
template <typename S, bool kAmsgrad>
TORCHEXT_TARGET_AVX2 void adam_loop_f16c(c10::Half* p, const c10::Half* g, S* m, S* v, S* vmax, float* master,
                                         int64_t n, const AdamConsts<float>& c) {
  constexpr bool kMaster = kHasMaster<c10::Half, S>;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 mv = cpu::load8(m + j), vv = cpu::load8(v + j);
    __m256 vmaxv = kAmsgrad ? cpu::load8(vmax + j) : vv;
    const __m256 pv =
        adam_math<kAmsgrad>(kMaster ? _mm256_loadu_ps(master + j) : cpu::load8(p + j), cpu::load8(g + j), mv, vv, vmaxv, c);
    cpu::store8(m + j, mv);
    cpu::store8(v + j, vv);
    if (kAmsgrad) cpu::store8(vmax + j, vmaxv);
    if (kMaster) _mm256_storeu_ps(master + j, pv);
    cpu::store8(p + j, pv);
  }
  adam_loop<c10::Half, S, kAmsgrad>(p + j, g + j, m + j, v + j, kAmsgrad ? vmax + j : nullptr,
                                    kMaster ? master + j : nullptr, n - j, c);
}
#endif

template <typename T, typename S>
void run_adam(T* p, const T* g, S* m, S* v, S* vmax, float* master, int64_t n, const AdamConsts<math_t<T>>& c) {
  adam_kernel<T>(p, g, m, v, vmax, master, n, c);
}
template <typename S>
void run_adam(c10::Half* p, const c10::Half* g, S* m, S* v, S* vmax, float* master, int64_t n,
              const AdamConsts<float>& c) {
#if TORCHEXT_F16C_OPTIM
  if (cpu::use_f16c()) {
    if (vmax) return adam_loop_f16c<S, true>(p, g, m, v, vmax, master, n, c);
    return adam_loop_f16c<S, false>(p, g, m, v, vmax, master, n, c);
  }
#endif
  adam_kernel<c10::Half>(p, g, m, v, vmax, master, n, c);
}

constexpr int64_t kGrain = 1 << 14;

void adam_step_cpu(TORCHEXT_KERNEL_PARAMS(TORCHEXT_ADAM_STEP_ARGS)) {
  if (params.empty()) return;
  check_adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params, amsgrad,
                  grad_scale, found_inf, lr_tensor);
  if (lr_tensor.has_value()) lr = lr_tensor->item<double>();
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return;  // skipped step: touch nothing
  DenseParams dense;  // params with gaps are stepped through dense copies
  params = dense.gather(params);
  std::vector<at::Tensor> grad_copies;
  grads = grads_in_param_layout(params, grads, grad_copies);
  const double inv_scale = grad_scale.has_value() ? 1.0 / static_cast<double>(grad_scale->item<float>()) : 1.0;

  std::vector<int64_t> numels;
  for (const auto& p : params) numels.push_back(p.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "torchext::adam_step_", [&] {
    using M = math_t<scalar_t>;
    std::vector<AdamConsts<M>> consts(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      // The counter is float32 like torch's; its incremented value sets the bias correction.
      const double step = static_cast<double>(cpu::counter_value(state_steps[i]) + 1.f);
      const double bc1 = 1.0 - std::pow(beta1, step);
      const double bc2 = 1.0 - std::pow(beta2, step);
      AdamConsts<M>& c = consts[i];
      c.one_minus_beta1 = M(1.0 - beta1);
      c.one_minus_beta2 = M(1.0 - beta2);
      c.beta2 = M(beta2);
      c.eps = M(eps);
      c.step_size = M(lr / bc1);
      c.inv_bc2_sqrt = M(1) / M(std::sqrt(bc2));
      c.decay = decoupled_weight_decay ? M(1.0 - lr * weight_decay) : M(1);
      c.l2 = decoupled_weight_decay ? M(0) : M(weight_decay);
      c.grad_factor = maximize ? -M(inv_scale) : M(inv_scale);
    }
    // S: the moments' storage type (float32 beside master weights, else the param dtype).
    with_buffer_type<scalar_t>(!master_params.empty(), [&](auto moment_type) {
      using S = decltype(moment_type);
      cpu::parallel_over_tensors(numels, kGrain, [&](size_t t, int64_t begin, int64_t end) {
        scalar_t* p = params[t].mutable_data_ptr<scalar_t>() + begin;
        const scalar_t* g = grads[t].const_data_ptr<scalar_t>() + begin;
        S* m = exp_avgs[t].mutable_data_ptr<S>() + begin;
        S* v = exp_avg_sqs[t].mutable_data_ptr<S>() + begin;
        S* vmax = amsgrad ? max_exp_avg_sqs[t].mutable_data_ptr<S>() + begin : nullptr;
        float* master = master_params.empty() ? nullptr : master_params[t].mutable_data_ptr<float>() + begin;
        run_adam(p, g, m, v, vmax, master, end - begin, consts[t]);
      });
    });
  });
  cpu::bump_counters(state_steps);
  dense.scatter();
}

}  // namespace
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, CPU, m) { m.impl("adam_step_", &torchext::adam_step_cpu); }
