// The one place where torchext's operator schemas are declared. Kernels register per backend with
// TORCH_LIBRARY_IMPL(torchext, CPU|CUDA, m) in csrc/<op>.cpp and csrc/cuda/<op>.cu; fake (meta)
// kernels are registered from Python next to each op's autograd wrapper (torchext/_ops/<op>.py).
#include <torch/extension.h>

#include "cpu/dispatch.h"

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

  // MSE loss; reduction: 0 none, 1 mean, 2 sum (torch's Reduction enum). mse_loss_forward returns
  // the loss and diff = input - target (broadcast), computed in one pass, for the backward.
  m.def("mse_loss(Tensor input, Tensor target, int reduction) -> Tensor");
  m.def("mse_loss_forward(Tensor input, Tensor target, int reduction) -> (Tensor, Tensor)");
  m.def("mse_loss_backward(Tensor grad_output, Tensor diff, int reduction) -> Tensor");

  // Optimizers (schemas below)
}

namespace {

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
  m.def("cpu_capability", [] { return std::string(torchext::cpu::level_name()); },
        "SIMD level the CPU kernels dispatch to on this machine");
}
