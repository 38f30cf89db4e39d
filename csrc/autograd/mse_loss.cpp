// Autograd for the MSE loss ops, in C++ (see relu.cpp for why; the Python Functions in
// torchext/_ops/mse_loss.py remain for forward-mode AD and torch.func).
//   mse_loss_forward: (loss, diff) from one pass, diff = input - target; diff is a differentiable
//     output, saved as an output (no reference cycle), and the double backward goes through it.
//     grad_input = mse_loss_backward(grad_loss, diff) (+ grad_diff), grad_target = -grad_input.
//   mse_loss: with something to record it runs mse_loss_forward's autograd and returns the loss;
//     otherwise the loss-only kernel.
//   mse_loss_backward: bilinear in (grad_output, diff), so both of its gradients are
//     mse_loss_backward calls again (plus a reduction for the scalar grad_output of mean/sum).
#include "autograd/calls.h"

namespace torchext {
namespace autograd {
namespace {

constexpr int64_t kNone = 0, kMean = 1;

struct MSELossBackwardFunction : public torch::autograd::Function<MSELossBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& diff,
                            int64_t reduction) {
    ctx->save_for_backward({grad_output, diff});
    ctx->saved_data["reduction"] = reduction;
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::mse_loss_backward(grad_output, diff, reduction);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    variable_list out(3);
    if (ctx->needs_input_grad(0)) {
      // 2 * diff * grad_grad elementwise, reduced as the loss was.
      at::Tensor terms = ops::mse_loss_backward(grads[0], saved[1], kNone);
      if (reduction == kNone) {
        out[0] = terms;
      } else {
        at::Tensor total = terms.sum();
        out[0] = reduction == kMean ? total / static_cast<double>(terms.numel()) : total;
      }
    }
    if (ctx->needs_input_grad(1)) out[1] = ops::mse_loss_backward(saved[0], grads[0], reduction);
    return out;
  }
};

struct MSELossFunction : public torch::autograd::Function<MSELossFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& target,
                               int64_t reduction) {
    ctx->saved_data["reduction"] = reduction;
    ctx->set_materialize_grads(false);
    at::Tensor loss, diff;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(loss, diff) = ops::mse_loss_forward(input, target, reduction);
    }
    ctx->save_for_backward({diff});
    return {loss, diff};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor grad;
    if (grads[0].defined()) {
      grad = ops::mse_loss_backward(grads[0], ctx->get_saved_variables()[0], ctx->saved_data["reduction"].toInt());
    }
    if (grads[1].defined()) grad = grad.defined() ? grad + grads[1] : grads[1];
    variable_list out(3);
    if (!grad.defined()) return out;
    if (ctx->needs_input_grad(0)) out[0] = grad;
    if (ctx->needs_input_grad(1)) out[1] = -grad;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> mse_loss_forward_autograd(const at::Tensor& input, const at::Tensor& target,
                                                             int64_t reduction) {
  if (nothing_to_record({&input, &target})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::mse_loss_forward(input, target, reduction);
  }
  auto out = MSELossFunction::apply(input, target, reduction);
  return {out[0], out[1]};
}

at::Tensor mse_loss_autograd(const at::Tensor& input, const at::Tensor& target, int64_t reduction) {
  if (nothing_to_record({&input, &target})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::mse_loss(input, target, reduction);
  }
  return MSELossFunction::apply(input, target, reduction)[0];
}

at::Tensor mse_loss_backward_autograd(const at::Tensor& grad_output, const at::Tensor& diff, int64_t reduction) {
  if (nothing_to_record({&grad_output, &diff})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::mse_loss_backward(grad_output, diff, reduction);
  }
  return MSELossBackwardFunction::apply(grad_output, diff, reduction);
}

}  // namespace
}  // namespace autograd
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, Autograd, m) {
  m.impl("mse_loss", &torchext::autograd::mse_loss_autograd);
  m.impl("mse_loss_forward", &torchext::autograd::mse_loss_forward_autograd);
  m.impl("mse_loss_backward", &torchext::autograd::mse_loss_backward_autograd);
}
