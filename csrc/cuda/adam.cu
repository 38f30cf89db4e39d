// Fused Adam / AdamW step on CUDA through the multi-tensor engine. Per element: reads p, g, m, v and
// writes p, m, v (28 B in fp32, 14 B in half types); +2 accesses with amsgrad. A half param with
// fp32 master weights reads and writes the master and float32 moments and writes p: 28 B. About
// 15 FLOPs, one sqrt and one division per element: memory bound.
// step, lr, grad_scale and found_inf are read on the device, so a step never syncs with the host
// and can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/multi_tensor_apply.cuh"
#include "optim_args.h"
#include "optim_checks.h"

namespace torchext {
namespace cuda {
namespace {

struct AdamArgs {
  double lr, beta1, beta2, eps, weight_decay;
  const double* lr_ptr;      // device lr, overrides lr
  const float* grad_scale;   // divide grads by it
  const float* found_inf;    // nonzero: skip the step
  bool amsgrad, maximize, decoupled;
};

template <typename M>
struct AdamCoeffs {
  M beta1, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, inv_bc2_sqrt, decay, l2, grad_factor;
};

template <typename M>
__device__ __forceinline__ void adam_math(M& p, M g, M& m, M& v, M& vmax, bool amsgrad, const AdamCoeffs<M>& c) {
  p *= c.decay;
  g = g * c.grad_factor;
  // Only when there is L2 decay, as in torch: 0 * p would turn an infinite parameter into NaN.
  if (c.l2 != M(0)) g += c.l2 * p;
  m += c.one_minus_beta1 * (g - m);  // torch's lerp for weight < 0.5
  v = c.beta2 * v + c.one_minus_beta2 * g * g;
  M vd = v;
  if (amsgrad) {
    vmax = vmax > v ? vmax : v;
    vd = vmax;
  }
  // sqrt(v) / sqrt(bc2) as a multiply by 1 / sqrt(bc2), formed once per tensor, as the CPU kernel
  // does (one rounding of the denominator from torch's division); eps after it, as torch adds it.
  const M denom = sqrt(vd) * c.inv_bc2_sqrt + c.eps;
  p -= c.step_size * m / denom;
}

// Lists: 0 params, 1 grads, 2 exp_avgs, 3 exp_avg_sqs, 4 max_exp_avg_sqs, 5 fp32 master params.
// S is the moments' storage type: T, or float beside fp32 master weights (T is then a half type and
// list 5 is present). With master weights the param is only written: its old value is the
// master's rounding.
template <typename T, typename S>
struct AdamOp {
  using M = math_t<T>;
  using Coeffs = AdamCoeffs<M>;
  static constexpr int kBlocksPerSm = sizeof(M) == 8 ? 1 : 2;  // double math needs over 64 registers
  AdamArgs a;

  // Per tensor, once (the engine's prologue): the bias corrections from its step counter, the lr
  // and the grad scale, read on the device.
  __device__ Coeffs coeffs(const TensorMeta<6>& t) const {
    const double lr = a.lr_ptr != nullptr ? *a.lr_ptr : a.lr;
    // The counter is float32 like torch's and is bumped after the update; its incremented value
    // sets the bias correction, formed in double as on the CPU.
    const double step = static_cast<double>(*t.counter + 1.f);
    const double bc1 = 1.0 - pow(a.beta1, step);
    const double bc2 = 1.0 - pow(a.beta2, step);
    const double inv_scale = a.grad_scale != nullptr ? 1.0 / static_cast<double>(*a.grad_scale) : 1.0;
    Coeffs c;
    c.beta1 = M(a.beta1);
    c.beta2 = M(a.beta2);
    c.one_minus_beta1 = M(1.0 - a.beta1);
    c.one_minus_beta2 = M(1.0 - a.beta2);
    c.eps = M(a.eps);
    c.step_size = M(lr / bc1);
    c.inv_bc2_sqrt = M(1) / M(sqrt(bc2));
    c.decay = a.decoupled ? M(1.0 - lr * a.weight_decay) : M(1);
    c.l2 = a.decoupled ? M(0) : M(a.weight_decay);
    c.grad_factor = M(a.maximize ? -inv_scale : inv_scale);
    return c;
  }

  __device__ void operator()(const TensorMeta<6>& t, const Coeffs& coeffs, int64_t start, int64_t n) const {
    constexpr bool kMaster = kHasMaster<T, S>;
    if (a.found_inf != nullptr && *a.found_inf != 0.f) return;
    const Coeffs c = coeffs;

    T* p = static_cast<T*>(t.ptr[0]) + start;
    const T* g = static_cast<const T*>(t.ptr[1]) + start;
    S* m = static_cast<S*>(t.ptr[2]) + start;
    S* v = static_cast<S*>(t.ptr[3]) + start;
    S* vmax = a.amsgrad ? static_cast<S*>(t.ptr[4]) + start : nullptr;
    float* master = kMaster ? static_cast<float*>(t.ptr[5]) + start : nullptr;

    constexpr int V = 16 / sizeof(T);
    int64_t done = 0;
    if (t.aligned) {
      const int64_t nvec = n / V;
      for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
        const int64_t o = i * V;
        Vec<T, V> pp;
        Vec<float, V> master_p;
        if constexpr (kMaster) {
          master_p = load_vec<float, V>(master + o);
        } else {
          pp = load_vec<T, V>(p + o);
        }
        Vec<S, V> mp = load_vec<S, V>(m + o), vp = load_vec<S, V>(v + o);
        const Vec<T, V> gp = load_vec<T, V>(g + o);
        Vec<S, V> xp;
        if (a.amsgrad) xp = load_vec<S, V>(vmax + o);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          M pv = kMaster ? static_cast<M>(master_p.v[k]) : static_cast<M>(pp.v[k]);
          M mv = static_cast<M>(mp.v[k]), vv = static_cast<M>(vp.v[k]);
          M xv = a.amsgrad ? static_cast<M>(xp.v[k]) : M(0);
          adam_math<M>(pv, static_cast<M>(gp.v[k]), mv, vv, xv, a.amsgrad, c);
          pp.v[k] = static_cast<T>(pv);
          mp.v[k] = static_cast<S>(mv);
          vp.v[k] = static_cast<S>(vv);
          if (a.amsgrad) xp.v[k] = static_cast<S>(xv);
          if constexpr (kMaster) master_p.v[k] = static_cast<float>(pv);
        }
        store_vec<T, V>(p + o, pp);
        store_vec<S, V>(m + o, mp);
        store_vec<S, V>(v + o, vp);
        if (a.amsgrad) store_vec<S, V>(vmax + o, xp);
        if constexpr (kMaster) store_vec<float, V>(master + o, master_p);
      }
      done = nvec * V;
    }
    for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
      M pv = kMaster ? static_cast<M>(master[i]) : static_cast<M>(p[i]);
      M mv = static_cast<M>(m[i]), vv = static_cast<M>(v[i]);
      M xv = a.amsgrad ? static_cast<M>(vmax[i]) : M(0);
      adam_math<M>(pv, static_cast<M>(g[i]), mv, vv, xv, a.amsgrad, c);
      m[i] = static_cast<S>(mv);
      v[i] = static_cast<S>(vv);
      if (a.amsgrad) vmax[i] = static_cast<S>(xv);
      if constexpr (kMaster) master[i] = static_cast<float>(pv);
      p[i] = static_cast<T>(pv);
    }
  }
};

void adam_step_cuda(TORCHEXT_KERNEL_PARAMS(TORCHEXT_ADAM_STEP_ARGS)) {
  if (params.empty()) return;
  check_adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params, amsgrad,
                  grad_scale, found_inf, lr_tensor);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  DenseParams dense;  // params with gaps are stepped through dense copies
  params = dense.gather(params);
  std::vector<at::Tensor> grad_copies;
  grads = grads_in_param_layout(params, grads, grad_copies);
  const at::Tensor lr_dev = device_lr("adam_step_", lr_tensor, device, lr);  // alive until the launch is queued
  std::vector<TensorMeta<6>> metas = tensor_metas<6>(
      {params, grads, exp_avgs, exp_avg_sqs, amsgrad ? max_exp_avg_sqs : at::TensorList(), master_params},
      state_steps);
  AdamArgs args{lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                lr_dev.defined() ? lr_dev.const_data_ptr<double>() : nullptr,
                grad_scale.has_value() ? grad_scale->const_data_ptr<float>() : nullptr,
                found_inf.has_value() ? found_inf->const_data_ptr<float>() : nullptr,
                amsgrad,
                maximize,
                decoupled_weight_decay};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "torchext::adam_step_cuda", [&] {
    with_buffer_type<scalar_t>(!master_params.empty(), [&](auto buffer_type) {
      multi_tensor_apply<6>(std::move(metas), args.found_inf, device, AdamOp<scalar_t, decltype(buffer_type)>{args});
    });
  });
  dense.scatter();
}

}  // namespace
}  // namespace cuda
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, TORCHEXT_DEVICE_KEY, m) { m.impl("adam_step_", &torchext::cuda::adam_step_cuda); }
