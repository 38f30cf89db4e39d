// Autograd for linear, linear_relu, linear_batched and their grad helpers: graph nodes and tangents
// (see node.h for the pattern). z = X W^T + b:
//   dX = linear(dZ, W^T)     dW = linear(dZ^T, X^T)     db = linear_bias_grad(dZ)
//   tangent: linear(X', W, b') + linear(X, W', none), each term present when its tangent is
// and for linear_relu, (dZ, db) = linear_relu_grad(dY, result) first and the tangent masked by
// relu_backward. The transposes are views (the GEMM's packing reads any strides). Only the
// gradients autograd asks for are computed. linear_batched (vmap's rule for per-entry weights) is
// the same per entry, with the batched GEMM.
#include "autograd/node.h"

namespace torchext {
namespace autograd {
namespace {

// The gradients of z = input @ weight.T + bias, from dZ, for the edges asked for.
void linear_grads(const std::vector<bool>& needs, const at::Tensor& grad_z, const at::Tensor& input,
                  const at::Tensor& weight, bool with_bias, variable_list& out) {
  if (needs[0]) out[0] = ops::linear(grad_z, weight.t(), c10::nullopt);
  if (needs[1]) out[1] = ops::linear(grad_z.t(), input.t(), c10::nullopt);
  if (with_bias && needs[2]) out[2] = ops::linear_bias_grad(grad_z);
}

// What the nodes of linear / linear_relu and of linear_batched hold (edges: input, weight, bias).
template <typename Derived>
struct LinearNodeState : public NodeImpl<Derived> {
  SavedVariable input, weight;  // each only when the other's gradient is asked for
  SavedVariable result;         // with the ReLU only: the output, for its mask
  bool with_bias = false;
  bool relu = false;

  std::vector<SavedSlot> saved() { return {{&input, false}, {&weight, false}, {&result, true}}; }
  std::vector<int64_t> attributes() const { return {with_bias, relu}; }
};

// Backward of linear and linear_relu.
struct LinearBackwardNode : public LinearNodeState<LinearBackwardNode> {
  static constexpr const char* kName = "torchext::LinearBackward";

  static variable_list backward(variable_list&& grads, const std::vector<at::Tensor>& saved,
                                const std::vector<int64_t>& attributes, const std::vector<bool>& needs) {
    const bool with_bias = attributes[0], relu = attributes[1];
    variable_list out(3);
    if (!grads[0].defined()) return out;
    if (!relu) {
      linear_grads(needs, grads[0], saved[0], saved[1], with_bias, out);
      return out;
    }
    const bool bias_grad = with_bias && needs[2];
    if (!needs[0] && !needs[1] && !bias_grad) return out;
    at::Tensor grad_z, grad_bias;
    std::tie(grad_z, grad_bias) = ops::linear_relu_grad(grads[0], saved[2]);
    linear_grads(needs, grad_z, saved[0], saved[1], /*with_bias=*/false, out);
    if (bias_grad) out[2] = grad_bias;
    return out;
  }
};

// The tangent of gemm(input, weight, bias) = input @ weight.T + bias (per entry for linear_batched)
// from the inputs' tangents (undefined: no tangent): gemm(input', weight, bias') +
// gemm(input, weight', none), the bias's tangent alone broadcast over the rows of an output of
// out_sizes.
template <typename Gemm>
at::Tensor linear_tangent(const Gemm& gemm, const at::Tensor& input, const at::Tensor& weight,
                          const at::Tensor& input_t, const at::Tensor& weight_t, at::Tensor bias_t,
                          c10::IntArrayRef out_sizes) {
  at::Tensor tangent;
  if (input_t.defined()) {
    tangent = gemm(input_t, weight, bias_t.defined() ? OptTensor(bias_t) : c10::nullopt);
    bias_t = at::Tensor();
  }
  if (weight_t.defined()) {
    tangent = add_terms(tangent, gemm(input, weight_t, bias_t.defined() ? OptTensor(bias_t) : c10::nullopt));
    bias_t = at::Tensor();
  }
  if (bias_t.defined()) tangent = bias_t.unsqueeze(-2).expand(out_sizes).contiguous();
  return tangent;
}

// The autograd kernel of linear / linear_relu (gemm: ops::linear or ops::linear_relu chosen by
// relu) and of linear_batched (gemm: ops::linear_batched), recording a node of type NodeT.
template <typename NodeT, typename Gemm>
at::Tensor linear_kernel(const Gemm& gemm, const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias,
                         bool relu) {
  const bool record = records(input, weight, bias);
  const bool tangents = has_tangent(input, weight, bias);
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    result = gemm(input, weight, bias, relu);
  }
  decltype(make_node<NodeT>()) node;
  if (record) {
    node = record_node<NodeT>(input, weight, bias);
    torch::autograd::set_history(result, node);
    // Only what the asked-for gradients read: dX reads W, dW reads X.
    if (node->should_compute_output(1)) node->input = SavedVariable(input, /*is_output=*/false);
    if (node->should_compute_output(0)) node->weight = SavedVariable(weight, /*is_output=*/false);
    node->with_bias = bias.has_value() && bias->defined();
    node->relu = relu;
  }
  if (tangents) {
    const auto plain = [&gemm](const at::Tensor& x, const at::Tensor& w, const OptTensor& b) {
      return gemm(x, w, b, /*relu=*/false);
    };
    at::Tensor tangent = linear_tangent(plain, primal_of(input), primal_of(weight), tangent_of(input),
                                        tangent_of(weight), tangent_of(bias), result.sizes());
    set_tangent(result, relu ? ops::relu_backward(tangent, primal_of(result)) : tangent);
  }
  if (record && relu) node->result = SavedVariable(result, /*is_output=*/true);  // with its tangent, if any
  return result;
}

at::Tensor linear_gemm(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias, bool relu) {
  return relu ? ops::linear_relu(input, weight, bias) : ops::linear(input, weight, bias);
}

template <bool Relu>
at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias) {
  return linear_kernel<LinearBackwardNode>(linear_gemm, input, weight, bias, Relu);
}

// db = dY.sum(0): linear in dY, so its backward spreads the incoming gradient over the rows and
// its tangent is itself on dY's tangent.
struct BiasGradBackwardNode : public NodeImpl<BiasGradBackwardNode> {
  static constexpr const char* kName = "torchext::LinearBiasGradBackward";
  int64_t rows = 0;

  std::vector<SavedSlot> saved() { return {}; }
  std::vector<int64_t> attributes() const { return {rows}; }

  static variable_list backward(variable_list&& grads, const std::vector<at::Tensor>&,
                                const std::vector<int64_t>& attributes, const std::vector<bool>& needs) {
    variable_list out(1);
    if (grads[0].defined() && needs[0]) out[0] = grads[0].unsqueeze(0).expand({attributes[0], grads[0].size(0)});
    return out;
  }
};

at::Tensor linear_bias_grad_autograd(const at::Tensor& grad_output) {
  const bool record = records(grad_output);
  const at::Tensor grad_output_t = tangent_of(grad_output);
  at::Tensor sums;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    sums = ops::linear_bias_grad(grad_output);
  }
  if (record) {
    auto node = record_node<BiasGradBackwardNode>(grad_output);
    torch::autograd::set_history(sums, node);
    node->rows = grad_output.size(0);
  }
  if (grad_output_t.defined()) set_tangent(sums, ops::linear_bias_grad(grad_output_t));
  return sums;
}

// (dZ, db) = (dY * (result > 0), dZ.sum(0)): linear in dY; the mask is piecewise constant in
// result, whose gradient is zero (as in torch's threshold_backward). Edges: grad_output, result.
struct ReLUGradBackwardNode : public NodeImpl<ReLUGradBackwardNode> {
  static constexpr const char* kName = "torchext::LinearReluGradBackward";
  SavedVariable result;

  std::vector<SavedSlot> saved() { return {{&result, false}}; }
  std::vector<int64_t> attributes() const { return {}; }

  static variable_list backward(variable_list&& grads, const std::vector<at::Tensor>& saved,
                                const std::vector<int64_t>&, const std::vector<bool>& needs) {
    variable_list out(2);
    at::Tensor total = grads[0];
    if (grads[1].defined()) total = add_terms(total, grads[1].unsqueeze(0).expand_as(saved[0]));
    if (!total.defined()) return out;
    if (needs[0]) out[0] = ops::relu_backward(total, saved[0]);
    if (needs[1]) out[1] = at::zeros_like(saved[0]);  // as for relu_backward's result
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> linear_relu_grad_autograd(const at::Tensor& grad_output, const at::Tensor& result) {
  const bool record = records(grad_output, result);
  const at::Tensor grad_output_t = tangent_of(grad_output);
  at::Tensor masked, sums;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    std::tie(masked, sums) = ops::linear_relu_grad(grad_output, result);
  }
  if (record) {
    auto node = record_node<ReLUGradBackwardNode>(grad_output, result);
    torch::autograd::set_history(std::vector<at::Tensor>{masked, sums}, node);
    node->result = SavedVariable(result, /*is_output=*/false);
  }
  if (grad_output_t.defined()) {
    at::Tensor masked_t, sums_t;
    std::tie(masked_t, sums_t) = ops::linear_relu_grad(grad_output_t, primal_of(result));
    set_tangent(masked, masked_t);
    set_tangent(sums, sums_t);
  }
  return {masked, sums};
}

// linear_batched: out[e] = input[e] @ weight[e].T + bias[e] (ReLU'd when relu), entries [E, ...].
// Per-entry column sums of dZ [E, M, N] are the column sums of the entries side by side, [M, E * N].
at::Tensor batched_column_sums(const at::Tensor& grad_z) {
  const int64_t entries = grad_z.size(0), rows = grad_z.size(1), cols = grad_z.size(2);
  return ops::linear_bias_grad(grad_z.transpose(0, 1).reshape({rows, entries * cols})).reshape({entries, cols});
}

struct LinearBatchedBackwardNode : public LinearNodeState<LinearBatchedBackwardNode> {
  static constexpr const char* kName = "torchext::LinearBatchedBackward";

  static variable_list backward(variable_list&& grads, const std::vector<at::Tensor>& saved,
                                const std::vector<int64_t>& attributes, const std::vector<bool>& needs) {
    const bool with_bias = attributes[0], relu = attributes[1];
    variable_list out(3);
    if (!grads[0].defined()) return out;
    const at::Tensor grad_z = relu ? ops::relu_backward(grads[0], saved[2]) : grads[0];
    if (needs[0]) out[0] = ops::linear_batched(grad_z, saved[1].transpose(1, 2), c10::nullopt, false);
    if (needs[1]) out[1] = ops::linear_batched(grad_z.transpose(1, 2), saved[0].transpose(1, 2), c10::nullopt, false);
    if (with_bias && needs[2]) out[2] = batched_column_sums(grad_z);
    return out;
  }
};

at::Tensor linear_batched_autograd(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias,
                                   bool relu) {
  return linear_kernel<LinearBatchedBackwardNode>(ops::linear_batched, input, weight, bias, relu);
}

}  // namespace
}  // namespace autograd
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, Autograd, m) {
  m.impl("linear", &torchext::autograd::linear_autograd<false>);
  m.impl("linear_relu", &torchext::autograd::linear_autograd<true>);
  m.impl("linear_bias_grad", &torchext::autograd::linear_bias_grad_autograd);
  m.impl("linear_relu_grad", &torchext::autograd::linear_relu_grad_autograd);
  m.impl("linear_batched", &torchext::autograd::linear_batched_autograd);
}
