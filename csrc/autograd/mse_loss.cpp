// Autograd for the MSE loss ops: graph nodes and tangents (see node.h for the pattern).
//   mse_loss_forward: (loss, diff) from one pass, diff = input - target; diff is a differentiable
//     output, saved as an output (no reference cycle), and the double backward goes through it.
//     grad_input = mse_loss_backward(grad_loss, diff) (+ grad_diff), grad_target = -grad_input.
//     Tangents: diff' = input' - target', loss' = 2 diff diff' reduced as the loss is.
//   mse_loss: with something to record or a tangent to carry it runs as mse_loss_forward and returns
//     the loss; otherwise the loss-only kernel.
//   mse_loss_backward: bilinear in (grad_output, diff), so both of its gradients and its tangent are
//     mse_loss_backward calls again (plus a reduction for the scalar grad_output of mean/sum).
#include "autograd/node.h"

namespace torchext {
namespace autograd {
namespace {

constexpr int64_t kNone = 0, kMean = 1;

// The elementwise terms of a loss reduced as `reduction` reduces the loss.
at::Tensor reduce_like_loss(const at::Tensor& terms, int64_t reduction) {
  if (reduction == kNone) return terms;
  at::Tensor total = terms.sum();
  return reduction == kMean ? total / static_cast<double>(terms.numel()) : total;
}

// Backward of mse_loss_backward (edges: grad_output, diff).
struct MSELossBackwardBackwardNode : public NodeImpl<MSELossBackwardBackwardNode> {
  static constexpr const char* kName = "torchext::MseLossBackwardBackward";
  SavedVariable grad_output, diff;
  int64_t reduction = kMean;

  std::vector<SavedSlot> saved() { return {{&grad_output, false}, {&diff, false}}; }
  std::vector<int64_t> attributes() const { return {reduction}; }

  static variable_list backward(variable_list&& grads, const std::vector<at::Tensor>& saved,
                                const std::vector<int64_t>& attributes, const std::vector<bool>& needs) {
    const int64_t reduction = attributes[0];
    variable_list out(2);
    if (!grads[0].defined()) return out;
    // 2 * diff * grad_grad elementwise, reduced as the loss was.
    if (needs[0]) out[0] = reduce_like_loss(ops::mse_loss_backward(grads[0], saved[1], kNone), reduction);
    if (needs[1]) out[1] = ops::mse_loss_backward(saved[0], grads[0], reduction);
    return out;
  }
};

at::Tensor mse_loss_backward_autograd(const at::Tensor& grad_output, const at::Tensor& diff, int64_t reduction) {
  const bool record = records(grad_output, diff);
  const at::Tensor grad_output_t = tangent_of(grad_output), diff_t = tangent_of(diff);
  at::Tensor grad_input;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    grad_input = ops::mse_loss_backward(grad_output, diff, reduction);
  }
  if (record) {
    auto node = record_node<MSELossBackwardBackwardNode>(grad_output, diff);
    torch::autograd::set_history(grad_input, node);
    if (node->should_compute_output(1)) node->grad_output = SavedVariable(grad_output, /*is_output=*/false);
    if (node->should_compute_output(0)) node->diff = SavedVariable(diff, /*is_output=*/false);
    node->reduction = reduction;
  }
  if (grad_output_t.defined() || diff_t.defined()) {
    at::Tensor tangent;
    if (grad_output_t.defined()) tangent = ops::mse_loss_backward(grad_output_t, primal_of(diff), reduction);
    if (diff_t.defined()) {
      tangent = add_terms(tangent, ops::mse_loss_backward(primal_of(grad_output), diff_t, reduction));
    }
    set_tangent(grad_input, tangent);
  }
  return grad_input;
}

// Backward of mse_loss_forward and mse_loss (edges: input, target; outputs: loss, diff).
struct MSELossBackwardNode : public NodeImpl<MSELossBackwardNode> {
  static constexpr const char* kName = "torchext::MseLossBackward";
  SavedVariable diff;
  int64_t reduction = kMean;

  std::vector<SavedSlot> saved() { return {{&diff, true}}; }
  std::vector<int64_t> attributes() const { return {reduction}; }

  static variable_list backward(variable_list&& grads, const std::vector<at::Tensor>& saved,
                                const std::vector<int64_t>& attributes, const std::vector<bool>& needs) {
    variable_list out(2);
    at::Tensor grad;
    if (grads[0].defined()) grad = ops::mse_loss_backward(grads[0], saved[0], attributes[0]);
    if (grads[1].defined()) grad = add_terms(grad, grads[1]);
    if (!grad.defined()) return out;
    if (needs[0]) out[0] = grad;
    if (needs[1]) out[1] = -grad;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> mse_loss_forward_autograd(const at::Tensor& input, const at::Tensor& target,
                                                             int64_t reduction) {
  const bool record = records(input, target);
  const at::Tensor input_t = tangent_of(input), target_t = tangent_of(target);
  at::Tensor loss, diff;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    std::tie(loss, diff) = ops::mse_loss_forward(input, target, reduction);
  }
  decltype(make_node<MSELossBackwardNode>()) node;
  if (record) {
    node = record_node<MSELossBackwardNode>(input, target);
    torch::autograd::set_history(std::vector<at::Tensor>{loss, diff}, node);
    node->reduction = reduction;
  }
  if (input_t.defined() || target_t.defined()) {
    at::Tensor diff_t;
    if (!input_t.defined()) {
      diff_t = -target_t;
    } else {
      diff_t = target_t.defined() ? input_t - target_t : input_t;
    }
    // d((x - t)^2) = 2 (x - t) d(x - t), reduced as the loss is.
    set_tangent(loss, reduce_like_loss(ops::mse_loss_backward(diff_t, primal_of(diff), kNone), reduction));
    set_tangent(diff, diff_t);
  }
  if (record) node->diff = SavedVariable(diff, /*is_output=*/true);  // with its tangent, if any
  return {loss, diff};
}

at::Tensor mse_loss_autograd(const at::Tensor& input, const at::Tensor& target, int64_t reduction) {
  if (!records(input, target) && !has_tangent(input, target)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return ops::mse_loss(input, target, reduction);
  }
  return std::get<0>(mse_loss_forward_autograd(input, target, reduction));
}

}  // namespace
}  // namespace autograd
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, Autograd, m) {
  m.impl("mse_loss", &torchext::autograd::mse_loss_autograd);
  m.impl("mse_loss_forward", &torchext::autograd::mse_loss_forward_autograd);
  m.impl("mse_loss_backward", &torchext::autograd::mse_loss_backward_autograd);
}
