// Helpers shared by the CPU optimizer kernels (csrc/sgd.cpp, csrc/adam.cpp).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "checks.h"

namespace torchext {
namespace cpu {

// Half types are updated in float; float and double in their own precision.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};

// Calls fn(tensor_index, begin, end) over the concatenation of all tensors' elements with a single
// parallel_for, so a list of many small tensors keeps every thread as busy as one big tensor.
// Empty tensors occupy no index range and are never visited.
template <typename F>
void parallel_over_tensors(const std::vector<int64_t>& numels, int64_t grain, const F& fn) {
  std::vector<int64_t> offsets(numels.size() + 1, 0);
  for (size_t i = 0; i < numels.size(); ++i) offsets[i + 1] = offsets[i] + numels[i];
  const int64_t total = offsets.back();
  if (total == 0) return;
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    while (begin < end) {
      const int64_t stop = std::min(end, offsets[t + 1]);
      if (stop > begin) fn(t, begin - offsets[t], stop - offsets[t]);
      begin = stop;
      ++t;
    }
  });
}

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

// The checks every optimizer step makes before touching memory: if any fails, nothing was written.
// `lists` are the per-parameter state lists in the order (name, tensors, may_be_empty).
struct StateList {
  const char* name;
  const at::TensorList* tensors;
  bool dtype_of_param;  // false: float32 (master weights)
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
    TORCH_CHECK(p.is_non_overlapping_and_dense(), "torchext.", op, ": params[", i,
                "] must be dense and non-overlapping");
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.layout() == at::kStrided, "torchext.", op, ": grads[", i, "] is sparse; sparse gradients are not supported");
    TORCH_CHECK(g.scalar_type() == p.scalar_type() && g.sizes() == p.sizes() && g.strides() == p.strides() &&
                    g.device() == p.device(),
                "torchext.", op, ": grads[", i, "] must match params[", i, "] in dtype, shape, strides and device (",
                p.scalar_type(), " ", p.sizes(), " on ", p.device(), "), but got ", g.scalar_type(), " ", g.sizes(),
                " on ", g.device());
    for (const auto& l : lists) {
      if (l.tensors->empty()) continue;
      const at::Tensor& s = (*l.tensors)[i];
      const auto dtype = l.dtype_of_param ? p.scalar_type() : at::kFloat;
      TORCH_CHECK(s.scalar_type() == dtype && s.sizes() == p.sizes() && s.strides() == p.strides() &&
                      s.device() == p.device(),
                  "torchext.", op, ": ", l.name, "[", i, "] must be ", dtype, " with the shape, strides and device of params[",
                  i, "] (", p.sizes(), " on ", p.device(), "), but got ", s.scalar_type(), " ", s.sizes(), " on ",
                  s.device());
    }
  }
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

}  // namespace cpu
}  // namespace torchext
