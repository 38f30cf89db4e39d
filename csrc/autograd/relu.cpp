// Autograd for relu, relu_ and relu_backward, in C++: an autograd.Function written in Python costs
// about 10 us per forward+backward on top of the kernels, as much as the whole of torch's relu at
// the tutorial's sizes. The Python Functions (torchext/_ops/relu.py) remain for forward-mode AD and
// the torch.func transforms, which need a jvp.
//   relu, relu_:   grad_input = relu_backward(grad_output, result)
//   relu_backward: linear in grad_output with a mask that is piecewise constant in result, so its
//                  own backward is relu_backward again and result gets no gradient.
#include "autograd/calls.h"

#include <torch/csrc/autograd/VariableTypeUtils.h>

namespace torchext {
namespace autograd {
namespace {

struct ReLUBackwardFunction : public torch::autograd::Function<ReLUBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& result) {
    ctx->save_for_backward({result});
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::relu_backward(grad_output, result);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor result = ctx->get_saved_variables()[0];
    return {ops::relu_backward(grads[0], result), at::Tensor()};
  }
};

struct ReLUFunction : public torch::autograd::Function<ReLUFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& self) {
    at::Tensor result;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      result = ops::relu(self);
    }
    ctx->save_for_backward({result});  // an output: saved without a reference cycle
    return result;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ops::relu_backward(grads[0], ctx->get_saved_variables()[0])};
  }
};

// relu_ overwrites its input, which other nodes of the graph may have saved: every call bumps the
// input's version counter, so their backward refuses the modified value instead of using it. With
// a graph to record, mark_dirty bumps it and makes this node the input's grad_fn (a leaf that
// requires grad is refused first, as torch refuses it); otherwise the ADInplaceOrView kernel below
// does.
struct ReLUInplaceFunction : public torch::autograd::Function<ReLUInplaceFunction> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor self) {
    {
      at::AutoDispatchBelowADInplaceOrView below;
      ops::relu_(self);
    }
    ctx->mark_dirty({self});
    ctx->save_for_backward({self});  // now the result, and an output of this node
    return self;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ops::relu_backward(grads[0], ctx->get_saved_variables()[0])};
  }
};

at::Tensor relu_autograd(const at::Tensor& self) {
  if (nothing_to_record({&self})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::relu(self);
  }
  return ReLUFunction::apply(self);
}

void relu_inplace_autograd(at::Tensor& self) {
  if (nothing_to_record({&self})) {
    at::AutoDispatchBelowAutograd below;
    ops::relu_(self);
    return;
  }
  // Before anything is written: a leaf (or a view of one) that requires grad is refused as torch
  // refuses it, with the input left as it was.
  torch::autograd::check_inplace(self, /*requires_grad=*/at::GradMode::is_enabled() && self.requires_grad());
  ReLUInplaceFunction::apply(self);
}

void relu_inplace_ad_inplace_or_view(c10::DispatchKeySet keys, at::Tensor& self) {
  static const auto op = ops::op_handle<void(at::Tensor&)>("torchext::relu_");
  {
    at::AutoDispatchBelowADInplaceOrView below;
    op.redispatch(keys & c10::after_ADInplaceOrView_keyset, self);
  }
  torch::autograd::impl::bump_version(self);
}

at::Tensor relu_backward_autograd(const at::Tensor& grad_output, const at::Tensor& result) {
  if (nothing_to_record({&grad_output, &result})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::relu_backward(grad_output, result);
  }
  return ReLUBackwardFunction::apply(grad_output, result);
}

}  // namespace
}  // namespace autograd
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, Autograd, m) {
  m.impl("relu", &torchext::autograd::relu_autograd);
  m.impl("relu_", &torchext::autograd::relu_inplace_autograd);
  m.impl("relu_backward", &torchext::autograd::relu_backward_autograd);
}

TORCH_LIBRARY_IMPL(torchext, ADInplaceOrView, m) {
  m.impl("relu_", &torchext::autograd::relu_inplace_ad_inplace_or_view);
}
