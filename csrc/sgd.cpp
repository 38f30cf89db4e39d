// Fused SGD step on CPU. Per element: with momentum reads p, g, buf and writes p, buf (20 B in
// fp32); without momentum reads p, g and writes p (12 B). About 6 FLOPs per element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/dispatch.h"
#include "cpu/optim.h"

namespace torchext {
namespace {

template <typename M>
struct SgdScalars {
  M lr, momentum, dampening, weight_decay, inv_scale;
  bool nesterov, maximize, use_momentum, first;  // first: buf holds no history yet, copy g into it
};

// master (fp32) replaces p as the value being updated when present; p then receives its rounding.
// Which arrays exist is compile-time so the loop has no conditional memory access and vectorises.
template <typename T, bool kMaster, bool kMomentum>
TORCHEXT_INLINE void sgd_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf,
                              float* __restrict__ master, int64_t n,
                              const SgdScalars<typename cpu::OpMath<T>::type>& s) {
  using M = typename cpu::OpMath<T>::type;
  const M grad_factor = s.maximize ? -s.inv_scale : s.inv_scale;  // unscale and maximize in one multiply
  const M lr = s.lr, wd = s.weight_decay, momentum = s.momentum;
  const M keep = s.first ? M(0) : momentum;            // the first step's buffer is the gradient itself
  const M take = s.first ? M(1) : M(1) - s.dampening;
  for (int64_t i = 0; i < n; ++i) {
    const M pv = kMaster ? static_cast<M>(master[i]) : static_cast<M>(p[i]);
    M gv = static_cast<M>(g[i]) * grad_factor + wd * pv;
    if (kMomentum) {
      const M b = keep * static_cast<M>(buf[i]) + take * gv;
      buf[i] = static_cast<T>(b);
      gv = s.nesterov ? gv + momentum * b : b;
    }
    const M out = pv - lr * gv;
    if (kMaster) master[i] = static_cast<float>(out);
    p[i] = static_cast<T>(out);
  }
}

template <typename T>
TORCHEXT_INLINE void sgd_impl(T* p, const T* g, T* buf, float* master, int64_t n,
                              SgdScalars<typename cpu::OpMath<T>::type> s) {
  if (master) {
    if (s.use_momentum) return sgd_loop<T, true, true>(p, g, buf, master, n, s);
    return sgd_loop<T, true, false>(p, g, buf, master, n, s);
  }
  if (s.use_momentum) return sgd_loop<T, false, true>(p, g, buf, master, n, s);
  return sgd_loop<T, false, false>(p, g, buf, master, n, s);
}
TORCHEXT_CPU_DISPATCH(sgd_kernel, sgd_impl)

constexpr int64_t kGrain = 1 << 14;

void sgd_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                  at::TensorList momentum_counts, at::TensorList master_params, double lr, double momentum,
                  double dampening, double weight_decay, bool nesterov, bool maximize,
                  const c10::optional<at::Tensor>& lr_tensor, const c10::optional<at::Tensor>& grad_scale,
                  const c10::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  const bool use_momentum = momentum != 0.0;
  check_sgd_step(params, grads, momentum_buffers, momentum_counts, master_params, use_momentum, grad_scale,
                 found_inf, lr_tensor);
  if (lr_tensor.has_value()) lr = lr_tensor->item<double>();
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return;  // skipped step: touch nothing
  const double inv_scale = grad_scale.has_value() ? 1.0 / static_cast<double>(grad_scale->item<float>()) : 1.0;

  std::vector<int64_t> numels;
  for (const auto& p : params) numels.push_back(p.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "torchext::sgd_step_", [&] {
    using M = typename cpu::OpMath<scalar_t>::type;
    std::vector<SgdScalars<M>> scalars(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      const bool first = use_momentum && momentum_counts[i].item<float>() == 0.f;
      scalars[i] = {M(lr), M(momentum), M(dampening), M(weight_decay), M(inv_scale), nesterov, maximize,
                    use_momentum, first};
    }
    cpu::parallel_over_tensors(numels, kGrain, [&](size_t t, int64_t begin, int64_t end) {
      scalar_t* p = params[t].mutable_data_ptr<scalar_t>() + begin;
      const scalar_t* g = grads[t].const_data_ptr<scalar_t>() + begin;
      scalar_t* buf = use_momentum ? momentum_buffers[t].mutable_data_ptr<scalar_t>() + begin : nullptr;
      float* master = master_params.empty() ? nullptr : master_params[t].mutable_data_ptr<float>() + begin;
      sgd_kernel<scalar_t>(p, g, buf, master, end - begin, scalars[t]);
    });
  });
  for (const auto& c : momentum_counts) c.add_(1);
}

}  // namespace
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, CPU, m) { m.impl("sgd_step_", &torchext::sgd_step_cpu); }
