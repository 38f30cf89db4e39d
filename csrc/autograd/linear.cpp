// Autograd for linear, linear_relu and their grad helpers, in C++ (see relu.cpp for why; the Python
// Functions in torchext/_ops/linear.py remain for forward-mode AD and torch.func). z = X W^T + b:
//   dX = linear(dZ, W^T)     dW = linear(dZ^T, X^T)     db = linear_bias_grad(dZ)
// and for linear_relu, (dZ, db) = linear_relu_grad(dY, result) first. The transposes are views (the
// GEMM's packing reads any strides). Only the gradients that autograd asks for are computed. Without a
// bias, the Function has two tensor inputs (an absent optional is not one).
#include "autograd/calls.h"

namespace torchext {
namespace autograd {
namespace {

// The gradients of z = input @ weight.T + bias (bias: only when with_bias) from dZ.
variable_list linear_grads(AutogradContext* ctx, const at::Tensor& grad_z, const at::Tensor& input,
                           const at::Tensor& weight, bool with_bias) {
  variable_list grads(3);
  if (ctx->needs_input_grad(0)) grads[0] = ops::linear(grad_z, weight.t(), c10::nullopt);
  if (ctx->needs_input_grad(1)) grads[1] = ops::linear(grad_z.t(), input.t(), c10::nullopt);
  if (with_bias && ctx->needs_input_grad(2)) grads[2] = ops::linear_bias_grad(grad_z);
  return grads;
}

// db = dY.sum(0): linear in dY, so its backward spreads the incoming gradient over the rows.
struct BiasGradFunction : public torch::autograd::Function<BiasGradFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output) {
    ctx->saved_data["rows"] = grad_output.size(0);
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::linear_bias_grad(grad_output);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t rows = ctx->saved_data["rows"].toInt();
    return {grads[0].unsqueeze(0).expand({rows, grads[0].size(0)})};
  }
};

// (dZ, db) = (dY * (result > 0), dZ.sum(0)): linear in dY; the mask is piecewise constant in result,
// which gets no gradient (as in torch's threshold_backward).
struct ReLUGradFunction : public torch::autograd::Function<ReLUGradFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& result) {
    ctx->save_for_backward({result});
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView below;
    auto out = ops::linear_relu_grad(grad_output, result);
    return {std::get<0>(out), std::get<1>(out)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor result = ctx->get_saved_variables()[0];
    at::Tensor total = grads[0];
    if (grads[1].defined()) {
      at::Tensor spread = grads[1].unsqueeze(0).expand_as(result);
      total = total.defined() ? total + spread : spread;
    }
    if (!total.defined()) return {at::Tensor(), at::Tensor()};
    return {ops::relu_backward(total, result), at::Tensor()};
  }
};

struct LinearFunction : public torch::autograd::Function<LinearFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const OptTensor& bias) {
    ctx->save_for_backward({input, weight});
    ctx->saved_data["bias"] = bias.has_value();
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::linear(input, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return linear_grads(ctx, grads[0], saved[0], saved[1], ctx->saved_data["bias"].toBool());
  }
};

struct LinearReLUFunction : public torch::autograd::Function<LinearReLUFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const OptTensor& bias) {
    at::Tensor result;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      result = ops::linear_relu(input, weight, bias);
    }
    ctx->save_for_backward({input, weight, result});
    ctx->saved_data["bias"] = bias.has_value();
    return result;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool with_bias = ctx->saved_data["bias"].toBool();
    const bool bias_grad = with_bias && ctx->needs_input_grad(2);
    if (!ctx->needs_input_grad(0) && !ctx->needs_input_grad(1) && !bias_grad) return variable_list(3);
    at::Tensor grad_z, grad_bias;
    std::tie(grad_z, grad_bias) = ops::linear_relu_grad(grads[0], saved[2]);
    variable_list out = linear_grads(ctx, grad_z, saved[0], saved[1], /*with_bias=*/false);
    if (bias_grad) out[2] = grad_bias;
    return out;
  }
};

at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias) {
  if (nothing_to_record({&input, &weight, bias.has_value() ? &*bias : nullptr})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::linear(input, weight, bias);
  }
  return LinearFunction::apply(input, weight, bias);
}

at::Tensor linear_relu_autograd(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias) {
  if (nothing_to_record({&input, &weight, bias.has_value() ? &*bias : nullptr})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::linear_relu(input, weight, bias);
  }
  return LinearReLUFunction::apply(input, weight, bias);
}

at::Tensor linear_bias_grad_autograd(const at::Tensor& grad_output) {
  if (nothing_to_record({&grad_output})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::linear_bias_grad(grad_output);
  }
  return BiasGradFunction::apply(grad_output);
}

std::tuple<at::Tensor, at::Tensor> linear_relu_grad_autograd(const at::Tensor& grad_output, const at::Tensor& result) {
  if (nothing_to_record({&grad_output, &result})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::linear_relu_grad(grad_output, result);
  }
  auto out = ReLUGradFunction::apply(grad_output, result);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace autograd
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, Autograd, m) {
  m.impl("linear", &torchext::autograd::linear_autograd);
  m.impl("linear_relu", &torchext::autograd::linear_relu_autograd);
  m.impl("linear_bias_grad", &torchext::autograd::linear_bias_grad_autograd);
  m.impl("linear_relu_grad", &torchext::autograd::linear_relu_grad_autograd);
}
