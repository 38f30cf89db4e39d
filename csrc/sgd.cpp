// Fused SGD step on CPU. Per element: with momentum reads p, g, buf and writes p, buf (20 B in
// fp32); without momentum reads p, g and writes p (12 B). A half param with fp32 master weights
// reads and writes the master (and a float32 buffer) and writes p. About 6 FLOPs per element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

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

// The per-tensor constants of one step, formed in double from the step's arguments (1 - dampening
// as torch forms it), then rounded to the math type.
template <typename M>
struct SgdConsts {
  M grad_factor;  // unscale and maximize in one multiply
  M lr, wd, momentum;
  M keep, take;   // buf = keep * buf + take * g
  bool first;     // no history yet: the buffer becomes the gradient itself, whatever it held
  bool nesterov;
};

// The update of one element (V = the math type) or of 8 float lanes (V = __m256, whose arithmetic
// operators are GCC vector extensions), written once for both. Returns the new parameter and
// updates buf in place.
template <bool kMomentum, typename V, typename M>
TORCHEXT_INLINE V sgd_math(V p, V g, V& buf, const SgdConsts<M>& c) {
  V gv = g * c.grad_factor;
  // Only when there is weight decay, as in torch: 0 * p would turn an infinite parameter into NaN.
  if (c.wd != M(0)) gv = gv + c.wd * p;
  if (kMomentum) {
    buf = c.first ? gv : c.keep * buf + c.take * gv;
    if (c.nesterov) {
      gv = gv + c.momentum * buf;
    } else {
      gv = buf;
    }
  }
  return p - c.lr * gv;
}

// S is the momentum buffer's storage type: the param dtype, or float32 beside fp32 master weights
// (then T is a half type and master is never null); master replaces p as the value being updated
// and p receives its rounding. Which arrays exist is compile-time so the loop has no conditional
// memory access and vectorises.
template <typename T, typename S, bool kMomentum>
TORCHEXT_INLINE void sgd_loop(T* __restrict__ p, const T* __restrict__ g, S* __restrict__ buf,
                              float* __restrict__ master, int64_t n, const SgdConsts<math_t<T>>& c) {
  using M = math_t<T>;
  constexpr bool kMaster = kHasMaster<T, S>;
  for (int64_t i = 0; i < n; ++i) {
    M b = kMomentum ? cpu::load(buf, i) : M(0);
    const M out = sgd_math<kMomentum>(kMaster ? static_cast<M>(master[i]) : cpu::load(p, i), cpu::load(g, i), b, c);
    if (kMomentum) cpu::store(buf, i, b);
    if (kMaster) master[i] = static_cast<float>(out);
    cpu::store(p, i, out);
  }
}

template <typename T, typename S>
TORCHEXT_INLINE void sgd_impl(T* p, const T* g, S* buf, float* master, int64_t n,
                              const SgdConsts<math_t<T>>& c) {  // buf is null without momentum
  if (buf) return sgd_loop<T, S, true>(p, g, buf, master, n, c);
  return sgd_loop<T, S, false>(p, g, buf, master, n, c);
}
TORCHEXT_CPU_DISPATCH(sgd_kernel, sgd_impl)

#if TORCHEXT_F16C_OPTIM
// float16 with F16C: 8 elements converted in registers per step (GCC does not vectorise scalar
// half conversions through F16C), the same math as sgd_loop. The tail goes through sgd_loop.
template <typename S, bool kMomentum>
TORCHEXT_TARGET_AVX2 void sgd_loop_f16c(c10::Half* p, const c10::Half* g, S* buf, float* master, int64_t n,
                                        const SgdConsts<float>& c) {
  constexpr bool kMaster = kHasMaster<c10::Half, S>;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 b = kMomentum ? cpu::load8(buf + i) : _mm256_setzero_ps();
    const __m256 out =
        sgd_math<kMomentum>(kMaster ? _mm256_loadu_ps(master + i) : cpu::load8(p + i), cpu::load8(g + i), b, c);
    if (kMomentum) cpu::store8(buf + i, b);
    if (kMaster) _mm256_storeu_ps(master + i, out);
    cpu::store8(p + i, out);
  }
  sgd_loop<c10::Half, S, kMomentum>(p + i, g + i, kMomentum ? buf + i : nullptr, kMaster ? master + i : nullptr,
                                    n - i, c);
}
#endif

template <typename T, typename S>
void run_sgd(T* p, const T* g, S* buf, float* master, int64_t n, const SgdConsts<math_t<T>>& c) {
  sgd_kernel<T>(p, g, buf, master, n, c);
}
template <typename S>
void run_sgd(c10::Half* p, const c10::Half* g, S* buf, float* master, int64_t n, const SgdConsts<float>& c) {
#if TORCHEXT_F16C_OPTIM
  if (cpu::use_f16c()) {
    if (buf) return sgd_loop_f16c<S, true>(p, g, buf, master, n, c);
    return sgd_loop_f16c<S, false>(p, g, buf, master, n, c);
  }
#endif
  sgd_kernel<c10::Half>(p, g, buf, master, n, c);
}

constexpr int64_t kGrain = 1 << 14;

void sgd_step_cpu(TORCHEXT_KERNEL_PARAMS(TORCHEXT_SGD_STEP_ARGS)) {
  if (params.empty()) return;
  const bool use_momentum = momentum != 0.0;
  check_sgd_step(params, grads, momentum_buffers, momentum_counts, master_params, use_momentum, grad_scale,
                 found_inf, lr_tensor);
  if (lr_tensor.has_value()) lr = lr_tensor->item<double>();
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return;  // skipped step: touch nothing
  DenseParams dense;  // params with gaps are stepped through dense copies
  params = dense.gather(params);
  std::vector<at::Tensor> grad_copies;
  grads = grads_in_param_layout(params, grads, grad_copies);
  const double inv_scale = grad_scale.has_value() ? 1.0 / static_cast<double>(grad_scale->item<float>()) : 1.0;

  std::vector<int64_t> numels;
  for (const auto& p : params) numels.push_back(p.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "torchext::sgd_step_", [&] {
    using M = math_t<scalar_t>;
    std::vector<SgdConsts<M>> consts(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      SgdConsts<M>& c = consts[i];
      c.first = use_momentum && cpu::counter_value(momentum_counts[i]) == 0.f;
      c.grad_factor = maximize ? -M(inv_scale) : M(inv_scale);
      c.lr = M(lr);
      c.wd = M(weight_decay);
      c.momentum = M(momentum);
      c.keep = M(momentum);
      c.take = M(1.0 - dampening);
      c.nesterov = nesterov;
    }
    // S: the momentum buffer's storage type (float32 beside master weights, else the param dtype).
    with_buffer_type<scalar_t>(!master_params.empty(), [&](auto buffer_type) {
      using S = decltype(buffer_type);
      cpu::parallel_over_tensors(numels, kGrain, [&](size_t t, int64_t begin, int64_t end) {
        scalar_t* p = params[t].mutable_data_ptr<scalar_t>() + begin;
        const scalar_t* g = grads[t].const_data_ptr<scalar_t>() + begin;
        S* buf = use_momentum ? momentum_buffers[t].mutable_data_ptr<S>() + begin : nullptr;
        float* master = master_params.empty() ? nullptr : master_params[t].mutable_data_ptr<float>() + begin;
        run_sgd(p, g, buf, master, end - begin, consts[t]);
      });
    });
  });
  cpu::bump_counters(momentum_counts);
  dense.scatter();
}

}  // namespace
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, CPU, m) { m.impl("sgd_step_", &torchext::sgd_step_cpu); }
