// Helpers shared by the CPU optimizer kernels (csrc/sgd.cpp, csrc/adam.cpp).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "optim_checks.h"

namespace torchext {
namespace cpu {

// Step counters are one-element float32 tensors on the CPU (check_counters): read and bumped through
// their data pointers, since item() and add_() cost a dispatcher round trip each, per tensor.
inline float counter_value(const at::Tensor& counter) { return *counter.const_data_ptr<float>(); }
inline void bump_counters(const at::TensorList& counters) {
  for (const auto& c : counters) *c.mutable_data_ptr<float>() += 1.f;
}

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

}  // namespace cpu
}  // namespace torchext
