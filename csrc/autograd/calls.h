#pragma once
// torchext's ops called through the dispatcher, for the autograd kernels in this folder. A backward
// that runs with grad mode on (create_graph=True) thereby records its own graph through the same
// ops' autograd kernels, so every derivative of every order is computed by torchext's kernels. A
// forward calls them under at::AutoDispatchBelowADInplaceOrView, which goes straight to the
// backend kernel.
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <tuple>

namespace torchext {
namespace ops {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using OptTensor = c10::optional<at::Tensor>;

inline at::Tensor relu(const at::Tensor& self) {
  static const auto op = op_handle<at::Tensor(const at::Tensor&)>("torchext::relu");
  return op.call(self);
}

inline void relu_(at::Tensor& self) {
  static const auto op = op_handle<void(at::Tensor&)>("torchext::relu_");
  op.call(self);
}

inline at::Tensor relu_backward(const at::Tensor& grad_output, const at::Tensor& result) {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&)>("torchext::relu_backward");
  return op.call(grad_output, result);
}

inline at::Tensor linear(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias) {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&)>("torchext::linear");
  return op.call(input, weight, bias);
}

inline at::Tensor linear_relu(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias) {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&)>("torchext::linear_relu");
  return op.call(input, weight, bias);
}

inline at::Tensor linear_bias_grad(const at::Tensor& grad_output) {
  static const auto op = op_handle<at::Tensor(const at::Tensor&)>("torchext::linear_bias_grad");
  return op.call(grad_output);
}

inline std::tuple<at::Tensor, at::Tensor> linear_relu_grad(const at::Tensor& grad_output, const at::Tensor& result) {
  static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>(
      "torchext::linear_relu_grad");
  return op.call(grad_output, result);
}

inline at::Tensor linear_batched(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias, bool relu) {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, bool)>("torchext::linear_batched");
  return op.call(input, weight, bias, relu);
}

inline at::Tensor mse_loss(const at::Tensor& input, const at::Tensor& target, int64_t reduction) {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>("torchext::mse_loss");
  return op.call(input, target, reduction);
}

inline std::tuple<at::Tensor, at::Tensor> mse_loss_forward(const at::Tensor& input, const at::Tensor& target,
                                                           int64_t reduction) {
  static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>(
      "torchext::mse_loss_forward");
  return op.call(input, target, reduction);
}

inline at::Tensor mse_loss_backward(const at::Tensor& grad_output, const at::Tensor& diff, int64_t reduction) {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>("torchext::mse_loss_backward");
  return op.call(grad_output, diff, reduction);
}

}  // namespace ops
}  // namespace torchext

namespace torchext {
namespace autograd {  // the autograd kernels' own namespace: the names they all use
using ops::OptTensor;
using torch::autograd::variable_list;
}  // namespace autograd
}  // namespace torchext
