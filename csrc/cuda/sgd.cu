// Fused SGD step on CUDA through the multi-tensor engine. Per element with momentum: reads p, g,
// buf and writes p, buf (20 B in fp32); without momentum 12 B. A half param with fp32 master
// weights reads and writes the master (and a float32 buffer) instead of p, and writes p.
// About 6 FLOPs per element: memory bound. The per-tensor momentum count (0: the buffer holds no
// history yet and takes the gradient) and lr, grad_scale, found_inf are read on the device.
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

struct SgdArgs {
  double lr, momentum, dampening, weight_decay;
  const double* lr_ptr;
  const float* grad_scale;
  const float* found_inf;
  bool nesterov, maximize, use_momentum;
};

template <typename M>
struct SgdCoeffs {
  M lr, wd, momentum, keep, take, grad_factor;
  bool first, nesterov, use_momentum;  // first: no history yet, the buffer becomes the gradient
};

template <typename M>
__device__ __forceinline__ void sgd_math(M& p, M g, M& buf, const SgdCoeffs<M>& c) {
  g = g * c.grad_factor;
  // Only when there is weight decay, as in torch: 0 * p would turn an infinite parameter into NaN.
  if (c.wd != M(0)) g += c.wd * p;
  if (c.use_momentum) {
    buf = c.first ? g : c.keep * buf + c.take * g;
    g = c.nesterov ? g + c.momentum * buf : buf;
  }
  p -= c.lr * g;
}

// Lists: 0 params, 1 grads, 2 momentum buffers, 3 fp32 master params. S is the buffer's storage
// type: T, or float beside fp32 master weights (T is then a half type and list 3 is present). With
// master weights the param is only written: its old value is the master's rounding.
template <typename T, typename S>
struct SgdOp {
  using M = math_t<T>;
  using Coeffs = SgdCoeffs<M>;
  static constexpr int kBlocksPerSm = 2;
  SgdArgs a;

  // Per tensor, once (the engine's prologue): its counter (0: no history yet), the lr and the
  // grad scale, read on the device.
  __device__ Coeffs coeffs(const TensorMeta<4>& t) const {
    const double inv_scale = a.grad_scale != nullptr ? 1.0 / static_cast<double>(*a.grad_scale) : 1.0;
    Coeffs c;
    c.first = a.use_momentum && *t.counter == 0.f;  // counter is bumped after the update
    c.lr = M(a.lr_ptr != nullptr ? *a.lr_ptr : a.lr);
    c.wd = M(a.weight_decay);
    c.momentum = M(a.momentum);
    c.keep = M(a.momentum);
    c.take = M(1.0 - a.dampening);
    c.grad_factor = M(a.maximize ? -inv_scale : inv_scale);
    c.nesterov = a.nesterov;
    c.use_momentum = a.use_momentum;
    return c;
  }

  __device__ void operator()(const TensorMeta<4>& t, const Coeffs& coeffs, int64_t start, int64_t n) const {
    constexpr bool kMaster = kHasMaster<T, S>;
    if (a.found_inf != nullptr && *a.found_inf != 0.f) return;
    const Coeffs c = coeffs;
    T* p = static_cast<T*>(t.ptr[0]) + start;
    const T* g = static_cast<const T*>(t.ptr[1]) + start;
    S* buf = c.use_momentum ? static_cast<S*>(t.ptr[2]) + start : nullptr;
    float* master = kMaster ? static_cast<float*>(t.ptr[3]) + start : nullptr;

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
        const Vec<T, V> gp = load_vec<T, V>(g + o);
        Vec<S, V> bp;
        if (c.use_momentum) bp = load_vec<S, V>(buf + o);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          M pv = kMaster ? static_cast<M>(master_p.v[k]) : static_cast<M>(pp.v[k]);
          M bv = c.use_momentum ? static_cast<M>(bp.v[k]) : M(0);
          sgd_math<M>(pv, static_cast<M>(gp.v[k]), bv, c);
          pp.v[k] = static_cast<T>(pv);
          if (c.use_momentum) bp.v[k] = static_cast<S>(bv);
          if constexpr (kMaster) master_p.v[k] = static_cast<float>(pv);
        }
        store_vec<T, V>(p + o, pp);
        if (c.use_momentum) store_vec<S, V>(buf + o, bp);
        if constexpr (kMaster) store_vec<float, V>(master + o, master_p);
      }
      done = nvec * V;
    }
    for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
      M pv = kMaster ? static_cast<M>(master[i]) : static_cast<M>(p[i]);
      M bv = c.use_momentum ? static_cast<M>(buf[i]) : M(0);
      sgd_math<M>(pv, static_cast<M>(g[i]), bv, c);
      if (c.use_momentum) buf[i] = static_cast<S>(bv);
      if constexpr (kMaster) master[i] = static_cast<float>(pv);
      p[i] = static_cast<T>(pv);
    }
  }
};

void sgd_step_cuda(TORCHEXT_KERNEL_PARAMS(TORCHEXT_SGD_STEP_ARGS)) {
  if (params.empty()) return;
  const bool use_momentum = momentum != 0.0;
  check_sgd_step(params, grads, momentum_buffers, momentum_counts, master_params, use_momentum, grad_scale,
                 found_inf, lr_tensor);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  DenseParams dense;  // params with gaps are stepped through dense copies
  params = dense.gather(params);
  std::vector<at::Tensor> grad_copies;
  grads = grads_in_param_layout(params, grads, grad_copies);
  const at::Tensor lr_dev = device_lr("sgd_step_", lr_tensor, device, lr);  // alive until the launch is queued
  std::vector<TensorMeta<4>> metas =
      tensor_metas<4>({params, grads, use_momentum ? momentum_buffers : at::TensorList(), master_params},
                      momentum_counts);  // bumped whenever given, as on the CPU
  SgdArgs args{lr,
               momentum,
               dampening,
               weight_decay,
               lr_dev.defined() ? lr_dev.const_data_ptr<double>() : nullptr,
               grad_scale.has_value() ? grad_scale->const_data_ptr<float>() : nullptr,
               found_inf.has_value() ? found_inf->const_data_ptr<float>() : nullptr,
               nesterov,
               maximize,
               use_momentum};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "torchext::sgd_step_cuda", [&] {
    with_buffer_type<scalar_t>(!master_params.empty(), [&](auto buffer_type) {
      multi_tensor_apply<4>(std::move(metas), args.found_inf, device, SgdOp<scalar_t, decltype(buffer_type)>{args});
    });
  });
  dense.scatter();
}

}  // namespace
}  // namespace cuda
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, TORCHEXT_DEVICE_KEY, m) { m.impl("sgd_step_", &torchext::cuda::sgd_step_cuda); }
