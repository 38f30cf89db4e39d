// Argument checks and operand layout of the MSE loss ops, shared by the CPU and CUDA kernels so
// both raise the same errors.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

#include "checks.h"

namespace torchext {

inline void check_reduction(const char* op, int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2, "torchext.", op,
                    ": expected 'reduction' to be 0 (none), 1 (mean) or 2 (sum), but got ", reduction);
}

inline void check_mse_args(const char* op, const at::Tensor& input, const at::Tensor& target, int64_t reduction) {
  check_floating(op, "input", input);
  check_floating(op, "target", target);
  check_same_shape_dtype(op, "input", input, "target", target);
  check_reduction(op, reduction);
}

// grad_output has diff's shape for reduction none, and is 0-dim for mean/sum.
inline void check_mse_backward_args(const char* op, const at::Tensor& grad_output, const at::Tensor& diff,
                                    int64_t reduction) {
  check_reduction(op, reduction);
  check_floating(op, "diff", diff);
  check_floating(op, "grad_output", grad_output);
  if (reduction == 0) {
    check_same_shape_dtype(op, "diff", diff, "grad_output", grad_output);
    return;
  }
  TORCH_CHECK(grad_output.scalar_type() == diff.scalar_type(), "torchext.", op,
              ": expected 'grad_output' to have dtype ", diff.scalar_type(), " like 'diff', but got ",
              grad_output.scalar_type());
  TORCH_CHECK(grad_output.dim() == 0, "torchext.", op,
              ": expected 'grad_output' to be 0-dimensional for reduction mean/sum, but got shape ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.device() == diff.device(), "torchext.", op, ": expected 'grad_output' on ",
              diff.device(), " like 'diff', but got ", grad_output.device());
}

// Both operands in one shared dense layout: kept as they are when they already are (so a
// reduction='none' output keeps e.g. a transposed input's strides, like torch), else contiguous.
inline std::pair<at::Tensor, at::Tensor> common_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.is_non_overlapping_and_dense() && b.is_non_overlapping_and_dense() && a.strides() == b.strides()) {
    return {a, b};
  }
  return {a.contiguous(), b.contiguous()};
}

}  // namespace torchext
