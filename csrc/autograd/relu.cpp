// Autograd for relu, relu_ and relu_backward: graph nodes and tangents (see node.h for the pattern).
//   relu, relu_:   grad_input = relu_backward(grad_output, result); tangent the same on the input's
//                  tangent.
//   relu_backward: linear in grad_output with a mask that is piecewise constant in result, so its
//                  own backward and its tangent are relu_backward again, and result's gradient is
//                  zero.
#include "autograd/node.h"

namespace torchext {
namespace autograd {
namespace {

// Backward of relu and relu_ (one edge) and of relu_backward (two edges: grad_output, result).
struct ReLUBackwardNode : public NodeImpl<ReLUBackwardNode> {
  static constexpr const char* kName = "torchext::ReluBackward";
  SavedVariable result;  // the output of relu, or the result argument of relu_backward

  std::vector<SavedSlot> saved() { return {{&result, /*is_output=*/num_outputs() == 1}}; }
  std::vector<int64_t> attributes() const { return {}; }

  static variable_list backward(variable_list&& grads, const std::vector<at::Tensor>& saved,
                                const std::vector<int64_t>&, const std::vector<bool>& needs) {
    variable_list out(needs.size());
    if (!grads[0].defined()) return out;
    if (needs[0]) out[0] = ops::relu_backward(grads[0], saved[0]);
    // relu_backward's result: a zero gradient, as torch's threshold_backward gives its input
    // (compiled autograd expects a tensor for every gradient asked for).
    if (needs.size() > 1 && needs[1]) out[1] = at::zeros_like(saved[0]);
    return out;
  }
};

at::Tensor relu_autograd(const at::Tensor& self) {
  const bool record = records(self);
  const at::Tensor self_t = tangent_of(self);
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    result = ops::relu(self);
  }
  decltype(make_node<ReLUBackwardNode>()) node;
  if (record) {
    node = record_node<ReLUBackwardNode>(self);
    torch::autograd::set_history(result, node);
  }
  if (self_t.defined()) set_tangent(result, ops::relu_backward(self_t, primal_of(result)));
  if (record) node->result = SavedVariable(result, /*is_output=*/true);
  return result;
}

// relu_ overwrites its input, which other nodes of the graph may have saved: every call bumps the
// input's version counter (the ADInplaceOrView kernel below), so their backward refuses the
// modified value instead of using it. A leaf (or a view of one) that requires grad is refused
// before anything is written, as torch refuses it.
void relu_inplace_autograd(at::Tensor& self) {
  const bool record = records(self);
  torch::autograd::check_inplace(self, record);
  const at::Tensor self_t = tangent_of(self);
  // The edges are taken before the write, as torch's in-place kernels take them: on a view they
  // come from the view's grad_fn at its current version, and the version bump below then makes
  // the view regenerate its grad_fn after rebase_history, so that it leads to the CopySlices node.
  // (Taken after the bump, the view kept a grad_fn that skipped this node: gradients flowing back
  // from the view itself lost the ReLU mask.)
  decltype(make_node<ReLUBackwardNode>()) node;
  if (record) node = record_node<ReLUBackwardNode>(self);
  {
    at::AutoDispatchBelowAutograd below;  // through the ADInplaceOrView kernel
    ops::relu_(self);
  }
  if (record) torch::autograd::rebase_history(self, node);  // through a view: torch's CopySlices
  if (self_t.defined()) {
    // The tangent is updated in place too, as torch does for its in-place ops.
    self_t.copy_(ops::relu_backward(self_t, primal_of(self)));
    self._set_fw_grad(self_t, /*level=*/0, /*is_inplace_op=*/true);
  }
  // On a view, self's history is now the CopySlices node that wraps this one: saved as such.
  if (record) node->result = SavedVariable(self, /*is_output=*/true, /*is_inplace_on_view=*/self.is_view());
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
  const bool record = records(grad_output, result);
  const at::Tensor grad_output_t = tangent_of(grad_output);
  at::Tensor grad_input;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    grad_input = ops::relu_backward(grad_output, result);
  }
  if (record) {
    auto node = record_node<ReLUBackwardNode>(grad_output, result);
    torch::autograd::set_history(grad_input, node);
    node->result = SavedVariable(result, /*is_output=*/false);
  }
  if (grad_output_t.defined()) set_tangent(grad_input, ops::relu_backward(grad_output_t, primal_of(result)));
  return grad_input;
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
