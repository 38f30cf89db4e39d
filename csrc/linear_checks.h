// Argument checks of the Linear ops, shared by the CPU and CUDA kernels. A dtype outside the four
// float types (and, on the CPU, the integer types) is a NotImplementedError (as for every torchext
// op); a dtype *mismatch* between input, weight and bias is a RuntimeError, as
// torch.nn.functional.linear raises.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "checks.h"

namespace torchext {

inline void check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.dim() == 2, "torchext.", op, ": expected 'input' to be 2-D [batch, in_features], but got ",
              input.dim(), "-D shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 2, "torchext.", op,
              ": expected 'weight' to be 2-D [out_features, in_features], but got ", weight.dim(), "-D shape ",
              weight.sizes());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "torchext.", op,
              ": expected 'input' and 'weight' to have the same dtype, but got ", input.scalar_type(), " and ",
              weight.scalar_type());
  check_floating_or_cpu_integer(op, "input", input);
  TORCH_CHECK(input.size(1) == weight.size(1), "torchext.", op, ": 'input' ", input.sizes(), " and 'weight' ",
              weight.sizes(), " shapes cannot be multiplied: in_features ", input.size(1), " != ", weight.size(1));
  TORCH_CHECK(input.device() == weight.device(), "torchext.", op, ": expected 'weight' on ", input.device(),
              " like 'input', but got ", weight.device());
  TORCH_CHECK(weight.layout() == at::kStrided, "torchext.", op, ": expected 'weight' to be a dense tensor");
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == weight.size(0), "torchext.", op, ": expected 'bias' of shape [",
                weight.size(0), "] (out_features), but got ", b.sizes());
    TORCH_CHECK(b.scalar_type() == input.scalar_type(), "torchext.", op,
                ": expected 'input' and 'bias' to have the same dtype, but got ", input.scalar_type(), " and ",
                b.scalar_type());
    TORCH_CHECK(b.device() == input.device(), "torchext.", op, ": expected 'bias' on ", input.device(),
                " like 'input', but got ", b.device());
    TORCH_CHECK(b.layout() == at::kStrided, "torchext.", op, ": expected 'bias' to be a dense tensor");
  }
}

// linear_batched: what holds for the whole batch (dims, entry counts, dtypes and devices, also for
// an empty batch). The kernels then run check_linear_args on entry 0, whose shapes every entry has.
inline void check_linear_batched_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.dim() == 3, "torchext.", op, ": expected 'input' to be 3-D [entries, batch, in_features], but got ",
              input.dim(), "-D shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 3, "torchext.", op,
              ": expected 'weight' to be 3-D [entries, out_features, in_features], but got ", weight.dim(),
              "-D shape ", weight.sizes());
  TORCH_CHECK(input.size(0) == weight.size(0), "torchext.", op, ": 'input' has ", input.size(0),
              " entries but 'weight' has ", weight.size(0));
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "torchext.", op,
              ": expected 'input' and 'weight' to have the same dtype, but got ", input.scalar_type(), " and ",
              weight.scalar_type());
  check_floating_or_cpu_integer(op, "input", input);
  TORCH_CHECK(input.size(2) == weight.size(2), "torchext.", op, ": 'input' ", input.sizes(), " and 'weight' ",
              weight.sizes(), " shapes cannot be multiplied: in_features ", input.size(2), " != ", weight.size(2));
  TORCH_CHECK(input.device() == weight.device(), "torchext.", op, ": expected 'weight' on ", input.device(),
              " like 'input', but got ", weight.device());
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 2 && b.size(0) == weight.size(0) && b.size(1) == weight.size(1), "torchext.", op,
                ": expected 'bias' of shape [", weight.size(0), ", ", weight.size(1), "], but got ", b.sizes());
    TORCH_CHECK(b.scalar_type() == input.scalar_type(), "torchext.", op,
                ": expected 'input' and 'bias' to have the same dtype, but got ", input.scalar_type(), " and ",
                b.scalar_type());
    TORCH_CHECK(b.device() == input.device(), "torchext.", op, ": expected 'bias' on ", input.device(),
                " like 'input', but got ", b.device());
  }
}

// The entry e of a linear_batched bias, or none.
inline c10::optional<at::Tensor> batched_bias_entry(const c10::optional<at::Tensor>& bias, int64_t e) {
  if (bias.has_value() && bias->defined()) return bias->select(0, e);
  return c10::nullopt;
}

inline void check_grad_args(const char* op, const at::Tensor& grad_output, const at::Tensor* result) {
  check_floating(op, "grad_output", grad_output);
  TORCH_CHECK(grad_output.dim() == 2, "torchext.", op, ": expected 'grad_output' to be 2-D, but got shape ",
              grad_output.sizes());
  if (result) check_same_shape_dtype(op, "grad_output", grad_output, "result", *result);
}

}  // namespace torchext
