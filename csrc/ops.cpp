// The one place where torchext's operator schemas are declared. Kernels register per backend with
// TORCH_LIBRARY_IMPL(torchext, CPU|CUDA, m) in csrc/<op>.cpp and csrc/cuda/<op>.cu; fake (meta)
// kernels are registered from Python next to each op's autograd wrapper (torchext/_ops/<op>.py).
#include <torch/extension.h>

#include <vector>

#include "cpu/dispatch.h"
#include "optim_args.h"
#include "optim_checks.h"
#include "optim_lowmem_checks.h"

#ifndef TORCHEXT_TORCH_VERSION
#define TORCHEXT_TORCH_VERSION "unknown"
#endif
#ifndef TORCHEXT_CUDA_ARCHS
#define TORCHEXT_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(torchext, m) {
  // ReLU
  m.def("relu(Tensor self) -> Tensor");
  m.def("relu_(Tensor(a!) self) -> ()");
  m.def("relu_backward(Tensor grad_output, Tensor result) -> Tensor");

  // Linear: input [M, K] (any strides), weight [N, K], bias [N] -> [M, N] = input @ weight.T + bias.
  // linear_relu applies ReLU in the GEMM epilogue. The grad helpers reduce over dim 0:
  // linear_bias_grad(g) = g.sum(0); linear_relu_grad(g, result) = (g * (result > 0), that.sum(0)).
  m.def("linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_relu(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_bias_grad(Tensor grad_output) -> Tensor");
  m.def("linear_relu_grad(Tensor grad_output, Tensor result) -> (Tensor, Tensor)");
  // One linear (relu: linear_relu) per entry of a batch, in one call: input [B, M, K], weight
  // [B, N, K], bias [B, N] -> [B, M, N]. The vmap rule of linear when inputs and weights are both
  // batched (per-sample weight gradients, ensembles).
  m.def("linear_batched(Tensor input, Tensor weight, Tensor? bias, bool relu) -> Tensor");

  // MSE loss; reduction: 0 none, 1 mean, 2 sum (torch's Reduction enum). mse_loss_forward returns
  // the loss and diff = input - target (broadcast), computed in one pass, for the backward.
  m.def("mse_loss(Tensor input, Tensor target, int reduction) -> Tensor");
  m.def("mse_loss_forward(Tensor input, Tensor target, int reduction) -> (Tensor, Tensor)");
  m.def("mse_loss_backward(Tensor grad_output, Tensor diff, int reduction) -> Tensor");

  // Optimizers (schemas below). One call updates a list of params of one device and dtype in place.
  // Optional lists are empty when unused (momentum_buffers with momentum 0, max_exp_avg_sqs without
  // amsgrad, master_params without fp32 master weights). Counters are one-element float32 tensors:
  // Adam's state `step`, and for SGD the number of momentum updates (0: the buffer is not yet
  // initialised and the next step copies the gradient into it). When found_inf != 0 nothing is
  // written; grads are divided by grad_scale. lr_tensor, when given, overrides lr.
  // The argument lists are declared once, in optim_args.h.
  m.def(TORCHEXT_OPTIM_SCHEMA(sgd_step_, TORCHEXT_SGD_STEP_ARGS));
  m.def(TORCHEXT_OPTIM_SCHEMA(adam_step_, TORCHEXT_ADAM_STEP_ARGS));
  // The same steps with the low-memory modes: stochastic rounding, Kahan compensation, bfloat16 or
  // int8 blockwise state (csrc/optim_lowmem.h).
  m.def(TORCHEXT_OPTIM_SCHEMA(sgd_lowmem_step_, TORCHEXT_SGD_LOWMEM_STEP_ARGS));
  m.def(TORCHEXT_OPTIM_SCHEMA(adam_lowmem_step_, TORCHEXT_ADAM_LOWMEM_STEP_ARGS));
}

namespace {

// The optimizer ops' argument checks alone, with the ops' signatures: an optimizer whose step
// launches several ops (one per param group, device and dtype) runs every launch's checks first,
// so a bad argument in a later launch cannot leave the earlier ones applied.
void check_sgd_step_args(TORCHEXT_SHIM_PARAMS(TORCHEXT_SGD_STEP_ARGS)) {
  if (params.empty()) return;
  torchext::check_sgd_step(params, grads, momentum_buffers, momentum_counts, master_params, momentum != 0.0,
                           grad_scale, found_inf, lr_tensor);
}

void check_adam_step_args(TORCHEXT_SHIM_PARAMS(TORCHEXT_ADAM_STEP_ARGS)) {
  if (params.empty()) return;
  torchext::check_adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params,
                            amsgrad, grad_scale, found_inf, lr_tensor);
}

void check_sgd_lowmem_step_args(TORCHEXT_SHIM_PARAMS(TORCHEXT_SGD_LOWMEM_STEP_ARGS)) {
  if (params.empty()) return;
  torchext::check_sgd_lowmem_step(params, grads, momentum_buffers, momentum_counts, master_params, momentum != 0.0,
                                  momentum_buffer_scales, kahan_comps, sr_state, grad_scale, found_inf, lr_tensor);
}

void check_adam_lowmem_step_args(TORCHEXT_SHIM_PARAMS(TORCHEXT_ADAM_LOWMEM_STEP_ARGS)) {
  if (params.empty()) return;
  torchext::check_adam_lowmem_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params,
                                   amsgrad, exp_avg_scales, exp_avg_sq_scales, kahan_comps, sr_state, grad_scale,
                                   found_inf, lr_tensor);
}

// Eager entry points for the optimizer steps: the same ops through the dispatcher, called from C++
// so that pybind converts the tensor lists once instead of torch.ops boxing them from Python (and
// re-taking the GIL per tensor when the boxed copies are released), and dispatched below the
// autograd keys, which have nothing to record for an in-place update under no_grad. About half
// the per-tensor overhead of a torch.ops call for lists of thousands of small tensors.
void sgd_step_eager(TORCHEXT_SHIM_PARAMS(TORCHEXT_SGD_STEP_ARGS)) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchext::sgd_step_", "")
                       .typed<TORCHEXT_KERNEL_SIGNATURE(TORCHEXT_SGD_STEP_ARGS)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.call(TORCHEXT_ARG_NAMES(TORCHEXT_SGD_STEP_ARGS));
}

void adam_step_eager(TORCHEXT_SHIM_PARAMS(TORCHEXT_ADAM_STEP_ARGS)) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchext::adam_step_", "")
                       .typed<TORCHEXT_KERNEL_SIGNATURE(TORCHEXT_ADAM_STEP_ARGS)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.call(TORCHEXT_ARG_NAMES(TORCHEXT_ADAM_STEP_ARGS));
}

// The eager entry point of op `name` with argument list ARGS.
#define TORCHEXT_EAGER_SHIM(fn, name, ARGS)                                                            \
  void fn(TORCHEXT_SHIM_PARAMS(ARGS)) {                                                                \
    static auto op =                                                                                   \
        c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<TORCHEXT_KERNEL_SIGNATURE(ARGS)>(); \
    at::AutoDispatchBelowADInplaceOrView below_autograd;                                               \
    op.call(TORCHEXT_ARG_NAMES(ARGS));                                                                 \
  }
TORCHEXT_EAGER_SHIM(sgd_lowmem_step_eager, "torchext::sgd_lowmem_step_", TORCHEXT_SGD_LOWMEM_STEP_ARGS)
TORCHEXT_EAGER_SHIM(adam_lowmem_step_eager, "torchext::adam_lowmem_step_", TORCHEXT_ADAM_LOWMEM_STEP_ARGS)

bool with_cuda() {
#ifdef TORCHEXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "torchext compiled kernels; the ops live in torch.ops.torchext";
  m.def("built_torch_version", [] { return std::string(TORCHEXT_TORCH_VERSION); },
        "torch.__version__ this extension was compiled against");
  m.def("with_cuda", &with_cuda, "whether CUDA kernels were compiled in");
  m.def("cuda_archs", [] { return std::string(TORCHEXT_CUDA_ARCHS); },
        "TORCH_CUDA_ARCH_LIST the CUDA kernels were compiled for");
  m.def("check_sgd_step_args", &check_sgd_step_args, "torchext::sgd_step_'s argument checks, writing nothing");
  m.def("check_adam_step_args", &check_adam_step_args, "torchext::adam_step_'s argument checks, writing nothing");
  m.def("sgd_step_eager", &sgd_step_eager, "torchext::sgd_step_ called from C++, below the autograd keys");
  m.def("adam_step_eager", &adam_step_eager, "torchext::adam_step_ called from C++, below the autograd keys");
  m.def("check_sgd_lowmem_step_args", &check_sgd_lowmem_step_args, "torchext::sgd_lowmem_step_'s argument checks");
  m.def("check_adam_lowmem_step_args", &check_adam_lowmem_step_args,
        "torchext::adam_lowmem_step_'s argument checks");
  m.def("sgd_lowmem_step_eager", &sgd_lowmem_step_eager, "torchext::sgd_lowmem_step_ called from C++");
  m.def("adam_lowmem_step_eager", &adam_lowmem_step_eager, "torchext::adam_lowmem_step_ called from C++");
  m.def("cpu_capability", [] { return std::string(torchext::cpu::level_name()); },
        "SIMD level the CPU kernels dispatch to on this machine");
  m.def("cpu_x86_kernels", [] { return TORCHEXT_X86_SIMD != 0; },
        "whether the AVX2 / AVX-512 kernel variants were compiled in (not on other CPUs or in a "
        "TORCHEXT_PORTABLE build)");
  m.def("cpu_bf16_dot", &torchext::cpu::use_avx512_bf16,
        "whether bfloat16 Linear uses AVX512_BF16 dot products on this machine");
}
