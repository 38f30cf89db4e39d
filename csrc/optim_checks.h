// Argument checks shared by the CPU and CUDA optimizer steps, and the helpers that follow from them.
// Every check runs before the first write, so a step that fails leaves all params and state
// untouched.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "checks.h"

namespace torchext {

// Optional device scalars of the GradScaler protocol; both float32 with one element.
inline void check_amp_scalar(const char* op, const char* name, const c10::optional<at::Tensor>& t,
                             const at::Device& device) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->numel() == 1 && t->scalar_type() == at::kFloat, "torchext.", op, ": expected '", name,
              "' to be a one-element float32 tensor, but got ", t->scalar_type(), " with ", t->numel(),
              " elements");
  TORCH_CHECK(t->device() == device, "torchext.", op, ": expected '", name, "' on ", device, ", but got ",
              t->device());
}

// The bytes a tensor's elements span, from its first element to just past its last (for a dense
// tensor, its nbytes; a view with gaps spans more than it holds).
inline uintptr_t span_bytes(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return static_cast<uintptr_t>(last + 1) * t.element_size();
}

// One launch updates its params concurrently (threads or blocks per chunk): memory shared by two
// params (one listed twice, or overlapping views of one storage) would be read and written by two
// workers at once. Each param covers [data_ptr, data_ptr + its span); sorted by start (a few
// microseconds for thousands of params), none may begin before the ones before it end. Two params
// with gaps (stepped through dense copies, see DenseParams) may interleave in one storage, as
// x[:, ::2] and x[:, 1::2] do: neither writes the other's elements.
inline void check_distinct_params(const char* op, const at::TensorList& params) {
  if (params.size() < 2) return;
  struct Span {
    uintptr_t begin, end;
    size_t index;
    bool gaps;
    bool operator<(const Span& other) const { return begin < other.begin; }
  };
  std::vector<Span> spans;
  spans.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    const auto begin = reinterpret_cast<uintptr_t>(params[i].const_data_ptr());
    spans.push_back({begin, begin + span_bytes(params[i]), i, !params[i].is_non_overlapping_and_dense()});
  }
  std::sort(spans.begin(), spans.end());
  size_t reach = 0;  // the span reaching furthest so far
  for (size_t k = 1; k < spans.size(); ++k) {
    if (spans[k].begin < spans[reach].end && !(spans[k].gaps && spans[reach].gaps)) {
      TORCH_CHECK(false, "torchext.", op, ": params[", std::min(spans[k].index, spans[reach].index),
                  "] and params[", std::max(spans[k].index, spans[reach].index),
                  "] share memory (the same tensor, or overlapping views of one); each param may appear once");
    }
    if (spans[k].end > spans[reach].end) reach = k;
  }
}

// Params with gaps in memory (views such as w[:, :5] or t[..., 0], which torch's optimizers step)
// are stepped through dense copies: gather() copies them into contiguous tensors that the kernels
// update in place of the params, and scatter() copies the results back. Dense params pass through
// untouched. A kernel that writes nothing (a skipped step) leaves the copies, and so the params,
// bit-for-bit unchanged. Their state tensors and master weights are contiguous (torch.zeros_like of
// such a param is), as the copies are.
class DenseParams {
 public:
  at::TensorList gather(const at::TensorList& params) {
    size_t i = 0;
    while (i < params.size() && params[i].is_non_overlapping_and_dense()) ++i;
    if (i == params.size()) return params;
    dense_.assign(params.begin(), params.end());
    for (; i < dense_.size(); ++i) {
      if (dense_[i].is_non_overlapping_and_dense()) continue;
      originals_.push_back(params[i]);
      dense_[i] = params[i].contiguous();
      copies_.push_back(dense_[i]);
    }
    return dense_;
  }
  void scatter() {
    for (size_t i = 0; i < originals_.size(); ++i) originals_[i].copy_(copies_[i]);
  }

 private:
  std::vector<at::Tensor> dense_, originals_, copies_;
};

// The checks every optimizer step makes before touching memory: if any fails, nothing was written.
// `lists` are the per-parameter state lists, each empty or holding one tensor per param.
struct StateList {
  const char* name;
  const at::TensorList* tensors;
  bool float32;  // stored in float32 (master weights, and the moments beside them), else in the param dtype
};

inline void check_optimizer_lists(const char* op, const at::TensorList& params, const at::TensorList& grads,
                                  const std::vector<StateList>& lists) {
  TORCH_CHECK(grads.size() == params.size(), "torchext.", op, ": expected as many 'grads' as 'params' (",
              params.size(), "), but got ", grads.size());
  for (const auto& l : lists) {
    TORCH_CHECK(l.tensors->empty() || l.tensors->size() == params.size(), "torchext.", op, ": expected '", l.name,
                "' to be empty or hold one tensor per param (", params.size(), "), but got ", l.tensors->size());
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    check_floating(op, "params", p);
    TORCH_CHECK(p.device() == params[0].device() && p.scalar_type() == params[0].scalar_type(), "torchext.", op,
                ": all 'params' must share one device and dtype; params[", i, "] is ", p.scalar_type(), " on ",
                p.device(), " but params[0] is ", params[0].scalar_type(), " on ", params[0].device());
    TORCH_CHECK(p.is_non_overlapping_and_dense() || at::has_internal_overlap(p) != at::MemOverlap::Yes, "torchext.",
                op, ": params[", i, "] has elements that share memory (an expanded view); it cannot be updated in place");
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.layout() == at::kStrided, "torchext.", op, ": grads[", i, "] is sparse; sparse gradients are not supported");
    TORCH_CHECK(g.scalar_type() == p.scalar_type() && g.sizes() == p.sizes() && g.device() == p.device(),
                "torchext.", op, ": grads[", i, "] must match params[", i, "] in dtype, shape and device (",
                p.scalar_type(), " ", p.sizes(), " on ", p.device(), "), but got ", g.scalar_type(), " ", g.sizes(),
                " on ", g.device());
    const bool dense = p.is_non_overlapping_and_dense();
    for (const auto& l : lists) {
      if (l.tensors->empty()) continue;
      const at::Tensor& s = (*l.tensors)[i];
      const auto dtype = l.float32 ? at::kFloat : p.scalar_type();
      TORCH_CHECK(s.scalar_type() == dtype && s.sizes() == p.sizes() &&
                      (dense ? s.strides() == p.strides() : s.is_contiguous()) && s.device() == p.device(),
                  "torchext.", op, ": ", l.name, "[", i, "] must be ", dtype, " with the shape and device of params[",
                  i, "] (", p.sizes(), " on ", p.device(), ") and ", dense ? "its strides" : "contiguous",
                  ", but got ", s.scalar_type(), " ", s.sizes(), " with strides ", s.strides(), " on ", s.device());
    }
  }
  check_distinct_params(op, params);
}

// The storage type S of an optimizer's buffers (moments, momentum buffer) for params of type T is
// float beside fp32 master weights (which the checks allow for half types only), else T; a kernel
// instantiated with S != T updates the master weights.
template <typename T, typename S>
constexpr bool kHasMaster = !std::is_same<S, T>::value;

// Calls f(S()) with that buffer type S.
template <typename T, typename F>
void with_buffer_type(bool has_master, const F& f) {
  if constexpr (sizeof(T) == 2) {
    if (has_master) return f(float());
  }
  f(T());
}

// The kernels walk a grad in its param's memory order: grads laid out differently (strides) are
// copied into the param's layout, after the checks. `params` are the dense ones the kernels update
// (DenseParams::gather). `owned` keeps the copies alive.
inline at::TensorList grads_in_param_layout(const at::TensorList& params, const at::TensorList& grads,
                                            std::vector<at::Tensor>& owned) {
  size_t i = 0;
  while (i < grads.size() && (grads[i].strides() == params[i].strides() || params[i].numel() <= 1)) ++i;
  if (i == grads.size()) return grads;
  owned.assign(grads.begin(), grads.end());
  for (; i < owned.size(); ++i) {
    if (owned[i].strides() != params[i].strides() && params[i].numel() > 1) {
      owned[i] = at::empty_like(params[i]).copy_(grads[i]);
    }
  }
  return owned;
}

// Step counters (Adam's `step`, SGD's momentum-initialised count): one-element float32 tensors.
inline void check_counters(const char* op, const char* name, const at::TensorList& counters,
                           const at::TensorList& params, const at::Device& device) {
  TORCH_CHECK(counters.empty() || counters.size() == params.size(), "torchext.", op, ": expected '", name,
              "' to be empty or hold one tensor per param (", params.size(), "), but got ", counters.size());
  for (size_t i = 0; i < counters.size(); ++i) {
    TORCH_CHECK(counters[i].numel() == 1 && counters[i].scalar_type() == at::kFloat &&
                    counters[i].device() == device,
                "torchext.", op, ": ", name, "[", i, "] must be a one-element float32 tensor on ", device,
                ", but got ", counters[i].scalar_type(), " with ", counters[i].numel(), " elements on ",
                counters[i].device());
  }
}

inline void check_lr_tensor(const char* op, const c10::optional<at::Tensor>& lr_tensor) {
  if (!lr_tensor.has_value()) return;
  TORCH_CHECK(lr_tensor->numel() == 1 && is_supported_float(lr_tensor->scalar_type()), "torchext.", op,
              ": expected 'lr_tensor' to be a one-element floating tensor, but got ", lr_tensor->scalar_type(),
              " with ", lr_tensor->numel(), " elements");
}

// The checks of SGD's momentum state and master weights, shared by sgd_step_ and sgd_lowmem_step_
// (their buffers' dtypes are checked by each).
inline void check_sgd_state(const char* op, const at::TensorList& params, const at::TensorList& momentum_buffers,
                            const at::TensorList& momentum_counts, const at::TensorList& master_params,
                            bool use_momentum) {
  TORCH_CHECK(momentum_buffers.empty() || momentum_buffers.size() == params.size(), "torchext.", op,
              ": expected 'momentum_buffers' to be empty or hold one tensor per param");
  TORCH_CHECK(!use_momentum || momentum_buffers.size() == params.size(), "torchext.", op,
              ": momentum != 0 needs one momentum buffer per param");
  check_counters(op, "momentum_counts", momentum_counts, params, params[0].device());
  TORCH_CHECK(!use_momentum || momentum_counts.size() == params.size(), "torchext.", op,
              ": momentum != 0 needs one momentum count per param");
  TORCH_CHECK(master_params.empty() || params[0].scalar_type() == at::kHalf || params[0].scalar_type() == at::kBFloat16,
              "torchext.", op, ": master_params are only supported for float16 and bfloat16 params");
}

// The same for Adam's moments, step counters and master weights (adam_step_, adam_lowmem_step_).
inline void check_adam_state(const char* op, const at::TensorList& params, const at::TensorList& exp_avgs,
                             const at::TensorList& exp_avg_sqs, const at::TensorList& max_exp_avg_sqs,
                             const at::TensorList& state_steps, const at::TensorList& master_params, bool amsgrad) {
  TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size(), "torchext.", op,
              ": expected one exp_avg and one exp_avg_sq per param");
  TORCH_CHECK(!amsgrad || max_exp_avg_sqs.size() == params.size(), "torchext.", op,
              ": amsgrad needs one max_exp_avg_sq per param");
  check_counters(op, "state_steps", state_steps, params, params[0].device());
  TORCH_CHECK(state_steps.size() == params.size(), "torchext.", op, ": expected one state step per param");
  TORCH_CHECK(master_params.empty() || params[0].scalar_type() == at::kHalf || params[0].scalar_type() == at::kBFloat16,
              "torchext.", op, ": master_params are only supported for float16 and bfloat16 params");
}

// grad_scale, found_inf and lr_tensor, as every step takes them.
inline void check_step_scalars(const char* op, const at::Device& device, const c10::optional<at::Tensor>& grad_scale,
                               const c10::optional<at::Tensor>& found_inf,
                               const c10::optional<at::Tensor>& lr_tensor) {
  check_amp_scalar(op, "grad_scale", grad_scale, device);
  check_amp_scalar(op, "found_inf", found_inf, device);
  check_lr_tensor(op, lr_tensor);
}

inline void check_sgd_step(const at::TensorList& params, const at::TensorList& grads,
                           const at::TensorList& momentum_buffers, const at::TensorList& momentum_counts,
                           const at::TensorList& master_params, bool use_momentum,
                           const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                           const c10::optional<at::Tensor>& lr_tensor) {
  const char* op = "sgd_step_";
  // With master weights the momentum buffers are float32 too.
  const bool fp32_state = !master_params.empty();
  check_optimizer_lists(op, params, grads,
                        {{"momentum_buffers", &momentum_buffers, fp32_state}, {"master_params", &master_params, true}});
  check_sgd_state(op, params, momentum_buffers, momentum_counts, master_params, use_momentum);
  check_step_scalars(op, params[0].device(), grad_scale, found_inf, lr_tensor);
}

inline void check_adam_step(const at::TensorList& params, const at::TensorList& grads, const at::TensorList& exp_avgs,
                            const at::TensorList& exp_avg_sqs, const at::TensorList& max_exp_avg_sqs,
                            const at::TensorList& state_steps, const at::TensorList& master_params, bool amsgrad,
                            const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                            const c10::optional<at::Tensor>& lr_tensor) {
  const char* op = "adam_step_";
  // With master weights the moments are float32 too: a float16 second moment, (1 - beta2) g^2 at the
  // first step, rounds to zero for |g| below about 5e-3 with the default betas, and that element's
  // update then becomes lr * m / eps.
  const bool fp32_state = !master_params.empty();
  check_optimizer_lists(op, params, grads,
                        {{"exp_avgs", &exp_avgs, fp32_state},
                         {"exp_avg_sqs", &exp_avg_sqs, fp32_state},
                         {"max_exp_avg_sqs", &max_exp_avg_sqs, fp32_state},
                         {"master_params", &master_params, true}});
  check_adam_state(op, params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params, amsgrad);
  check_step_scalars(op, params[0].device(), grad_scale, found_inf, lr_tensor);
}

}  // namespace torchext
