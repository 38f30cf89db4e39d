#pragma once
// The pieces every autograd kernel in this folder is built from. Each kernel records its own node of
// the autograd graph (a torch::autograd::Node, as torch's generated kernels do) and carries
// forward-mode tangents itself. torch::autograd::Function would be shorter, but torch.func refuses
// C++ Functions and they have no forward mode; hand-written nodes work under every transform (grad,
// vjp, jvp, vmap, hessian, ...) and with torch.autograd.forward_ad, with the ops' own vmap rules.
//
// A kernel:
//   1. decides whether to record (grad mode on and an input requires grad) and whether any input
//      carries a tangent (forward mode, level 0 as in torch's kernels; torch.func maps its levels);
//   2. runs the op below the autograd keys;
//   3. if recording, makes the node with edges to the inputs, attaches the outputs to it and saves
//      the inputs the backward needs;
//   4. sets the outputs' tangents, computed with torchext's ops (on the inputs' primals) so that
//      higher derivatives work;
//   5. saves the outputs the backward needs, as outputs (which keeps the graph free of cycles) and
//      after step 4, so that they are saved with their tangents (forward-over-reverse needs them).
#include "autograd/calls.h"

#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/dynamo/compiled_autograd.h>

#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchext {
namespace autograd {

using torch::autograd::Node;
using torch::autograd::SavedVariable;

// How torch holds nodes: std::shared_ptr in older releases (2.11 among them), c10::intrusive_ptr in
// newer ones (2.14).
using NodePtr = decltype(std::declval<torch::autograd::Edge&>().function);

// A new node of type T, held the way torch holds nodes.
template <typename T>
auto make_node() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<Node>>) {
    // torch's deleter frees long chains of nodes without deep recursion. (Found by argument-dependent
    // lookup at instantiation: newer torch has no such function, and this branch is discarded there.)
    return std::shared_ptr<T>(new T(), [](T* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<T>();
  }
}

// A node of type T for a call that records, with edges to its inputs (tensors or optional tensors;
// an absent or undefined one gets an empty edge, and the node returns no gradient for it).
template <typename T, typename... Inputs>
auto record_node(const Inputs&... inputs) {
  auto node = make_node<T>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

// Whether the call records a node: grad mode on and an input requires grad.
template <typename... Inputs>
bool records(const Inputs&... inputs) {
  return torch::autograd::compute_requires_grad(inputs...);
}

// t's forward-mode tangent, or an undefined tensor.
inline at::Tensor tangent_of(const at::Tensor& t) {
  return t.defined() ? t._fw_grad(/*level=*/0) : at::Tensor();
}
inline at::Tensor tangent_of(const OptTensor& t) {
  return t.has_value() ? tangent_of(*t) : at::Tensor();
}

// t without its tangent (a view sharing its data), for tangent formulas: their results must not
// carry tangents of their own.
inline at::Tensor primal_of(const at::Tensor& t) {
  return t.defined() ? t._fw_primal(/*level=*/0) : t;
}

// Whether an input carries a tangent.
template <typename... Inputs>
bool has_tangent(const Inputs&... inputs) {
  return (tangent_of(inputs).defined() || ...);
}

// Gives an out-of-place result its tangent (if one was computed).
inline void set_tangent(const at::Tensor& result, const at::Tensor& tangent) {
  if (tangent.defined()) result._set_fw_grad(tangent, /*level=*/0, /*is_inplace_op=*/false);
}

// a + b where either may be undefined (an absent term).
inline at::Tensor add_terms(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

// One saved tensor of a node: where the node holds it, and whether it is an output of the node.
struct SavedSlot {
  SavedVariable* variable;
  bool is_output;
};

// The base of every node here, written for a Derived node that provides
//   static constexpr const char* kName;
//   std::vector<SavedSlot> saved();                 its saved tensors (slots in a fixed order)
//   std::vector<int64_t> attributes() const;        its other attributes (flags, sizes, reduction)
//   static variable_list backward(variable_list&& grads, const std::vector<at::Tensor>& saved,
//                                 const std::vector<int64_t>& attributes,
//                                 const std::vector<bool>& needs);   one entry per edge
// The backward is a pure function of those, so that compiled autograd
// (torch._dynamo.compiled_autograd) can call it from its graph: it keys its cache on the saved
// tensors and attributes (compiled_args), and apply_with_saved puts a call of the function into
// the graph with proxies for the saved tensors. The lock guards the saved tensors, which
// release_variables frees (a graph may be run from several threads).
template <typename Derived>
struct NodeImpl : public Node {
  std::string name() const override { return Derived::kName; }

  variable_list apply(variable_list&& grads) override {
    std::vector<at::Tensor> tensors;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      for (const SavedSlot& slot : self().saved()) tensors.push_back(unpack(slot));
    }
    return Derived::backward(std::move(grads), tensors, self().attributes(), needed_gradients());
  }

  void release_variables() override {
    std::lock_guard<std::mutex> guard(mutex_);
    for (const SavedSlot& slot : self().saved()) slot.variable->reset_data();
  }

  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    args.collect(std::string(Derived::kName));
    for (const SavedSlot& slot : const_cast<NodeImpl*>(this)->self().saved()) {
      args.collect(*slot.variable, slot.is_output);
    }
    for (int64_t value : self().attributes()) args.collect(value);
  }

  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& swap) override {
    namespace ca = torch::dynamo::autograd;
    const std::vector<SavedSlot> slots = self().saved();
    for (const SavedSlot& slot : slots) swap.before(*slot.variable);
    ca::PackedArgs packed;
    std::vector<at::TypePtr> schema;
    packed.pack(static_cast<int64_t>(slots.size()));
    schema.push_back(ca::IValuePacker<int64_t>::packed_type());
    for (const SavedSlot& slot : slots) {
      const at::Tensor t = unpack(slot);
      packed.pack(t.defined() ? std::optional<at::Tensor>(t) : std::nullopt);
      schema.push_back(ca::IValuePacker<std::optional<at::Tensor>>::packed_type());
    }
    packed.pack(self().attributes());
    schema.push_back(ca::IValuePacker<std::vector<int64_t>>::packed_type());
    packed.pack(needed_gradients());
    schema.push_back(ca::IValuePacker<std::vector<bool>>::packed_type());
    const auto& compiler = ca::getPyCompilerInterface();
    // As a custom function: a name of its own per binding, and scalars kept where they are.
    const std::string fn = compiler->bind_function(swap.get_py_compiler(), Derived::kName, &functional, schema,
                                                   /*is_custom_function=*/true, /*is_traceable=*/true);
    const auto output_metadata =
        ca::IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
            ca::get_input_metadata(next_edges()));
    variable_list out = compiler->call_function(swap.get_py_compiler(), "apply_functional", fn, grads,
                                                packed.vec(), output_metadata);
    for (const SavedSlot& slot : slots) swap.after(*slot.variable);
    return out;
  }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  at::Tensor unpack(const SavedSlot& slot) {
    return slot.is_output ? slot.variable->unpack(getptr()) : slot.variable->unpack();
  }

  // Which inputs of the forward this backward is asked to give gradients for.
  std::vector<bool> needed_gradients() const {
    std::vector<bool> needs(num_outputs());
    for (size_t i = 0; i < needs.size(); ++i) needs[i] = task_should_compute_output(i);
    return needs;
  }

  // The backward as compiled autograd's graph calls it.
  static variable_list functional(const variable_list& grads, const std::vector<c10::IValue>& args) {
    torch::dynamo::autograd::PackedArgs packed(args);
    const int64_t count = packed.unpack<int64_t>();
    std::vector<at::Tensor> tensors;
    for (int64_t i = 0; i < count; ++i) {
      const auto t = packed.unpack<std::optional<at::Tensor>>();
      tensors.push_back(t.has_value() ? *t : at::Tensor());
    }
    const auto attributes = packed.unpack<std::vector<int64_t>>();
    const auto needs = packed.unpack<std::vector<bool>>();
    return Derived::backward(variable_list(grads), tensors, attributes, needs);
  }
};

}  // namespace autograd
}  // namespace torchext
