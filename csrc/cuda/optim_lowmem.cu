// The low-memory SGD / Adam / AdamW steps on CUDA through the multi-tensor engine: the twin of
// csrc/optim_lowmem.cpp, with the element math of csrc/optim_lowmem.h, so both write the same bits.
// One warp per 256-element quantization block: lane l handles elements l, l + 32, ... (coalesced),
// the block's new absolute maximum (the int8 scale) is a warp shuffle reduction. Per element: p, g
// and each state buffer read and written once (1 byte per int8 code, 2 per bfloat16), plus 4 bytes
// per block of scale; about 60 integer ops of Philox per element with stochastic rounding, which on
// the GPU may cost more than the bytes saved: these modes trade speed for memory.
// seed, offset, step, lr, grad_scale and found_inf are read on the device (graph-capturable); the
// launch offset is bumped by a one-thread kernel after the update, unless the step is skipped.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/multi_tensor_apply.cuh"
#include "optim_args.h"
#include "optim_checks.h"
#include "optim_lowmem.h"
#include "optim_lowmem_checks.h"

namespace torchext {
namespace cuda {
namespace {

using lowmem::kQuantBlock;
constexpr int kPerLane = kQuantBlock / 32;
// Lists: 0 params, 1 grads, 2-4 state buffers, 5-6 the scales of buffers 0 and 1 (int8), 7 fp32
// masters, 8 Kahan compensation.
constexpr int kLists = 9;

struct LowmemArgs {
  double lr;
  const double* lr_ptr;
  const float* grad_scale;
  const float* found_inf;
  const int64_t* sr_state;  // (seed, offset) or null
  int num_buffers;
  bool sqrt_coded[3];
};

template <typename C>
struct LowmemCoeffs {
  C c;
  uint64_t seed, offset;
};

struct AdamRule {
  using C = lowmem::AdamC;
  double beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled;
  __device__ C constants(const TensorMeta<kLists>& t, double lr, double inv_scale) const {
    const double step = static_cast<double>(*t.counter + 1.f);
    return lowmem::adam_constants(lr, beta1, beta2, eps, weight_decay, decoupled, maximize, step, inv_scale);
  }
  __device__ float delta(float p, float g, float* b, const C& c) const {
    return lowmem::adam_delta(p, g, b[0], b[1], b[2], amsgrad, c);
  }
};

struct SgdRule {
  using C = lowmem::SgdC;
  double momentum, dampening, weight_decay;
  bool nesterov, maximize;
  __device__ C constants(const TensorMeta<kLists>& t, double lr, double inv_scale) const {
    const bool first = momentum != 0.0 && t.counter != nullptr && *t.counter == 0.f;
    return lowmem::sgd_constants(lr, momentum, dampening, weight_decay, nesterov, maximize, first, inv_scale);
  }
  __device__ float delta(float p, float g, float* b, const C& c) const { return lowmem::sgd_delta(p, g, b[0], c); }
};

template <typename Rule, typename T, typename S>
struct LowmemOp {
  using Coeffs = LowmemCoeffs<typename Rule::C>;
  // One block of the engine per SM: the per-lane arrays of a 256-element block (up to three state
  // buffers) need more registers than two blocks per SM leave, and would spill.
  static constexpr int kBlocksPerSm = 1;
  LowmemArgs a;
  Rule rule;

  __device__ Coeffs coeffs(const TensorMeta<kLists>& t) const {
    const double lr = a.lr_ptr != nullptr ? *a.lr_ptr : a.lr;
    const double inv_scale = a.grad_scale != nullptr ? 1.0 / static_cast<double>(*a.grad_scale) : 1.0;
    Coeffs c;
    c.c = rule.constants(t, lr, inv_scale);
    c.seed = a.sr_state != nullptr ? static_cast<uint64_t>(a.sr_state[0]) : 0;
    c.offset = a.sr_state != nullptr ? static_cast<uint64_t>(a.sr_state[1]) : 0;
    return c;
  }

  __device__ void operator()(const TensorMeta<kLists>& t, const Coeffs& coeffs, int64_t start, int64_t n) const {
    constexpr bool kCodes = std::is_same_v<S, int8_t>;
    __shared__ float block_max[kMtaThreads / 32];
    TORCHEXT_SHARED(block_max);
    if (a.found_inf != nullptr && *a.found_inf != 0.f) return;
    const Coeffs cf = coeffs;
    T* p = static_cast<T*>(t.ptr[0]);
    const T* g = static_cast<const T*>(t.ptr[1]);
    S* buf[3] = {static_cast<S*>(t.ptr[2]), static_cast<S*>(t.ptr[3]), static_cast<S*>(t.ptr[4])};
    float* scale[3] = {static_cast<float*>(t.ptr[5]), static_cast<float*>(t.ptr[6]), nullptr};
    float* master = static_cast<float*>(t.ptr[7]);
    T* comp = static_cast<T*>(t.ptr[8]);
    const bool stochastic = a.sr_state != nullptr;
    const int K = a.num_buffers;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    // start is a multiple of the chunk size, itself a multiple of kQuantBlock.
    for (int64_t q = warp; q * kQuantBlock < n; q += warps) {  // the same q for the whole warp
      const int64_t blk = (start + q * kQuantBlock) / kQuantBlock;
      float nb[3][kPerLane];
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) {
        const int64_t j = q * kQuantBlock + k * 32 + lane;
        if (j >= n) continue;
        const int64_t i = start + j;
        const float pv = master ? master[i] : static_cast<float>(p[i]);
        float b[3] = {0.f, 0.f, 0.f};
#pragma unroll
        for (int s = 0; s < 3; ++s) {  // unrolled over the most buffers, so the arrays stay in registers
          if (s < K) b[s] = lowmem::load_state(buf[s], i, scale[s], blk, a.sqrt_coded[s]);
        }
        const float delta = rule.delta(pv, static_cast<float>(g[i]), b, cf.c);
        const uint32_t r = stochastic ? lowmem::random_word(cf.seed, cf.offset, static_cast<uint32_t>(t.index), i) : 0u;
        const auto out = lowmem::apply_delta<T>(pv, delta, comp ? static_cast<float>(comp[i]) : 0.f, comp != nullptr,
                                                stochastic, r);
        p[i] = out.param;
        if (master) master[i] = out.master;
        if (comp) comp[i] = static_cast<T>(out.comp);
#pragma unroll
        for (int s = 0; s < 3; ++s) nb[s][k] = b[s];
      }
#pragma unroll
      for (int s = 0; s < 3; ++s) {
        if (s >= K) break;
        if constexpr (kCodes) {
          float amax = 0.f;
#pragma unroll
          for (int k = 0; k < kPerLane; ++k) {
            if (q * kQuantBlock + k * 32 + lane >= n) continue;
            const float x = a.sqrt_coded[s] ? lowmem::root(nb[s][k]) : fabsf(nb[s][k]);
            if (a.sqrt_coded[s]) nb[s][k] = x;
            amax = x > amax ? x : amax;
          }
          for (int off = 16; off > 0; off /= 2) {
            const float other = __shfl_down_sync(0xffffffffu, amax, off);
            amax = other > amax ? other : amax;
          }
          if (lane == 0) block_max[warp] = amax;
          __syncwarp();
          amax = block_max[warp];
          __syncwarp();
          if (lane == 0) scale[s][blk] = amax;
          const float inv = lowmem::inverse_scale(amax);
#pragma unroll
          for (int k = 0; k < kPerLane; ++k) {
            const int64_t j = q * kQuantBlock + k * 32 + lane;
            if (j < n) buf[s][start + j] = lowmem::encode(nb[s][k], inv);
          }
        } else {
#pragma unroll
          for (int k = 0; k < kPerLane; ++k) {
            const int64_t j = q * kQuantBlock + k * 32 + lane;
            if (j < n) buf[s][start + j] = static_cast<S>(nb[s][k]);
          }
        }
      }
    }
  }
};

template <int Unused>
__global__ void bump_sr_offset_kernel(int64_t* sr_state, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.f) return;
  sr_state[1] += 1;
}

template <typename Rule>
void launch_lowmem(const Rule& rule, at::TensorList params, at::TensorList grads,
                   std::initializer_list<at::TensorList> buffers, at::TensorList scales0, at::TensorList scales1,
                   at::TensorList master_params, at::TensorList kahan_comps, at::TensorList counters, int num_buffers,
                   bool sqrt_coded1, double lr, const c10::optional<at::Tensor>& lr_tensor,
                   const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                   const c10::optional<at::Tensor>& sr_state, const char* op, at::ScalarType state_type) {
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  DenseParams dense;
  params = dense.gather(params);
  std::vector<at::Tensor> grad_copies;
  grads = grads_in_param_layout(params, grads, grad_copies);
  const at::Tensor lr_dev = device_lr(op, lr_tensor, device, lr);
  std::array<at::TensorList, kLists> lists;
  lists[0] = params;
  lists[1] = grads;
  int k = 2;
  for (const auto& b : buffers) lists[k++] = b;
  for (; k < 5; ++k) lists[k] = at::TensorList();
  lists[5] = scales0;
  lists[6] = scales1;
  lists[7] = master_params;
  lists[8] = kahan_comps;
  std::vector<TensorMeta<kLists>> metas = tensor_metas<kLists>(lists, counters);
  LowmemArgs args{lr,
                  lr_dev.defined() ? lr_dev.const_data_ptr<double>() : nullptr,
                  grad_scale.has_value() ? grad_scale->const_data_ptr<float>() : nullptr,
                  found_inf.has_value() ? found_inf->const_data_ptr<float>() : nullptr,
                  sr_state.has_value() ? sr_state->const_data_ptr<int64_t>() : nullptr,
                  num_buffers,
                  {false, sqrt_coded1, true}};
  dispatch_lowmem_types(params[0].scalar_type(), state_type, op, [&](auto tp, auto sp) {
    multi_tensor_apply<kLists>(std::move(metas), args.found_inf, device,
                               LowmemOp<Rule, decltype(tp), decltype(sp)>{args, rule});
  });
  if (sr_state.has_value()) {
    TORCHEXT_LAUNCH(bump_sr_offset_kernel<0>, 1, 1, 0, at::cuda::getCurrentCUDAStream(),
                    sr_state->mutable_data_ptr<int64_t>(), args.found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  dense.scatter();
}

void sgd_lowmem_step_cuda(TORCHEXT_KERNEL_PARAMS(TORCHEXT_SGD_LOWMEM_STEP_ARGS)) {
  if (params.empty()) return;
  const bool use_momentum = momentum != 0.0;
  check_sgd_lowmem_step(params, grads, momentum_buffers, momentum_counts, master_params, use_momentum,
                        momentum_buffer_scales, kahan_comps, sr_state, grad_scale, found_inf, lr_tensor);
  const SgdRule rule{momentum, dampening, weight_decay, nesterov, maximize};
  launch_lowmem(rule, params, grads, {use_momentum ? momentum_buffers : at::TensorList()}, momentum_buffer_scales,
                at::TensorList(), master_params, kahan_comps, momentum_counts, use_momentum ? 1 : 0, false, lr,
                lr_tensor, grad_scale, found_inf, sr_state, "sgd_lowmem_step_",
                use_momentum ? momentum_buffers[0].scalar_type() : at::kFloat);
}

void adam_lowmem_step_cuda(TORCHEXT_KERNEL_PARAMS(TORCHEXT_ADAM_LOWMEM_STEP_ARGS)) {
  if (params.empty()) return;
  check_adam_lowmem_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params, amsgrad,
                         exp_avg_scales, exp_avg_sq_scales, kahan_comps, sr_state, grad_scale, found_inf, lr_tensor);
  const AdamRule rule{beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay};
  launch_lowmem(rule, params, grads, {exp_avgs, exp_avg_sqs, amsgrad ? max_exp_avg_sqs : at::TensorList()},
                exp_avg_scales, exp_avg_sq_scales, master_params, kahan_comps, state_steps, amsgrad ? 3 : 2, true, lr,
                lr_tensor, grad_scale, found_inf, sr_state, "adam_lowmem_step_", exp_avgs[0].scalar_type());
}

}  // namespace
}  // namespace cuda
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, TORCHEXT_DEVICE_KEY, m) {
  m.impl("sgd_lowmem_step_", &torchext::cuda::sgd_lowmem_step_cuda);
  m.impl("adam_lowmem_step_", &torchext::cuda::adam_lowmem_step_cuda);
}
