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

// sqrt may set errno, which keeps GCC from vectorising it. Nothing here reads errno, so let the
// kernels below use the ISA's vector square root.
#pragma GCC optimize("no-math-errno")

namespace torchext {
namespace {

template <typename M>
struct AdamScalars {
  M lr, beta1, beta2, eps, weight_decay, inv_scale;
  M step_size;             // lr / (1 - beta1^t)
  M bias_correction2_sqrt; // sqrt(1 - beta2^t); eps is added after dividing by it, as torch does
  bool amsgrad, maximize, decoupled;
};

template <typename M>
TORCHEXT_INLINE M fast_sqrt(M x) {
  return __builtin_sqrt(x);
}
template <>
TORCHEXT_INLINE float fast_sqrt<float>(float x) {
  return __builtin_sqrtf(x);
}

// Master weights and amsgrad change which arrays are touched, so they are compile-time: the loop
// then has no conditional memory access and GCC vectorises it at every ISA level.
template <typename T, bool kMaster, bool kAmsgrad>
TORCHEXT_INLINE void adam_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                               T* __restrict__ vmax, float* __restrict__ master, int64_t n,
                               const AdamScalars<typename cpu::OpMath<T>::type>& s) {
  using M = typename cpu::OpMath<T>::type;
  const M one_minus_beta1 = M(1) - s.beta1;
  const M one_minus_beta2 = M(1) - s.beta2;
  const M beta2 = s.beta2, eps = s.eps, step_size = s.step_size, bc2_sqrt = s.bias_correction2_sqrt;
  const M decay = s.decoupled ? M(1) - s.lr * s.weight_decay : M(1);
  const M l2 = s.decoupled ? M(0) : s.weight_decay;
  const M grad_factor = s.maximize ? -s.inv_scale : s.inv_scale;  // unscale and maximize in one multiply
  for (int64_t i = 0; i < n; ++i) {
    M pv = kMaster ? static_cast<M>(master[i]) : static_cast<M>(p[i]);
    pv *= decay;
    const M gv = static_cast<M>(g[i]) * grad_factor + l2 * pv;
    M mv = static_cast<M>(m[i]);
    mv += one_minus_beta1 * (gv - mv);  // torch's lerp for weight < 0.5
    const M vv = beta2 * static_cast<M>(v[i]) + one_minus_beta2 * gv * gv;
    m[i] = static_cast<T>(mv);
    v[i] = static_cast<T>(vv);
    M vd = vv;
    if (kAmsgrad) {
      // Compared in float like the rest of the math: a half-rounded v can flush to 0 and leave only
      // eps in the denominator.
      const M old = static_cast<M>(vmax[i]);
      vd = old > vv ? old : vv;
      vmax[i] = static_cast<T>(vd);
    }
    const M denom = fast_sqrt<M>(vd) / bc2_sqrt + eps;
    pv -= step_size * mv / denom;
    if (kMaster) master[i] = static_cast<float>(pv);
    p[i] = static_cast<T>(pv);
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
      scalars[i] = {M(lr), M(beta1), M(beta2), M(eps), M(weight_decay), M(inv_scale), M(lr / bc1),
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
