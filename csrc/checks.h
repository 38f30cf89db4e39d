// Argument checks shared by the CPU and CUDA kernels. Messages name the op and the argument, and
// the exception types follow torch: an unsupported dtype or layout is NotImplementedError (what
// torch's own kernels raise for a dtype they were not built for), dtype, shape or device
// disagreement between arguments is RuntimeError (as in "expected m1 and m2 to have the same dtype").
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace torchext {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_strided(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_NOT_IMPLEMENTED(t.layout() == at::kStrided, "torchext.", op, ": expected '", name,
              "' to be a dense (strided) tensor, but got layout ", t.layout());
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_NOT_IMPLEMENTED(is_supported_float(t.scalar_type()), "torchext.", op, ": expected '", name,
                   "' to be a float64, float32, float16 or bfloat16 tensor, but got ", t.scalar_type());
  check_strided(op, name, t);
}

// ReLU takes integer tensors too, on both devices, as torch's does.
inline void check_floating_or_integer(const char* op, const char* name, const at::Tensor& t) {
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(is_supported_float(type) || at::isIntegralType(type, /*includeBool=*/false),
                              "torchext.", op, ": expected '", name,
                              "' to be a float64, float32, float16, bfloat16 or integer tensor, but got ", type);
  check_strided(op, name, t);
}

// Linear takes integer tensors on the CPU only, as torch computes them there (torch's integer
// Linear is CPU-only too).
inline void check_floating_or_cpu_integer(const char* op, const char* name, const at::Tensor& t) {
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(is_supported_float(type) || (at::isIntegralType(type, /*includeBool=*/false) &&
                                                           t.device().is_cpu()),
                              "torchext.", op, ": expected '", name,
                              "' to be a float64, float32, float16 or bfloat16 tensor (or an integer tensor on the "
                              "CPU), but got ", type, " on ", t.device());
  check_strided(op, name, t);
}

inline void check_same_shape_dtype(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                                   const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "torchext.", op, ": expected '", name_b,
                   "' to have dtype ", a.scalar_type(), " like '", name_a, "', but got ", b.scalar_type());
  TORCH_CHECK(a.sizes() == b.sizes(), "torchext.", op, ": expected '", name_b, "' to have shape ", a.sizes(),
              " like '", name_a, "', but got ", b.sizes());
  TORCH_CHECK(a.device() == b.device(), "torchext.", op, ": expected '", name_b, "' on ", a.device(), " like '",
              name_a, "', but got ", b.device());
}

inline void check_no_internal_overlap(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, "torchext.", op,
              ": unsupported operation: more than one element of '", name,
              "' refers to the same memory location (e.g. an expanded tensor); clone it before an in-place op");
}

// Whether every element of t is the same memory (all strides 0 where the size is over 1): the
// gradient sum() and mean() send back, which kernels read as one value instead of copying it.
inline bool is_broadcast_scalar(const at::Tensor& t) {
  if (t.numel() <= 1) return false;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1 && t.stride(d) != 0) return false;
  }
  return true;
}

}  // namespace torchext
