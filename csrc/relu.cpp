// ReLU on CPU. Memory bound: forward reads 1 and writes 1 element, backward reads 2 and writes 1.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/dispatch.h"
#include "checks.h"

namespace torchext {
namespace {

// NaN must propagate like torch.relu (clamp_min), so test `x < 0` rather than `x > 0`.
template <typename T>
TORCHEXT_INLINE void relu_impl(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    y[i] = static_cast<T>(v < 0.f ? 0.f : v);
  }
}
template <>
TORCHEXT_INLINE void relu_impl<double>(const double* __restrict__ x, double* __restrict__ y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < 0.0 ? 0.0 : x[i];
}
TORCHEXT_CPU_DISPATCH(relu_kernel, relu_impl)

// The in-place variant may alias: no __restrict__.
template <typename T>
TORCHEXT_INLINE void relu_inplace_impl(T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    x[i] = static_cast<T>(v < 0.f ? 0.f : v);
  }
}
template <>
TORCHEXT_INLINE void relu_inplace_impl<double>(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] < 0.0 ? 0.0 : x[i];
}
TORCHEXT_CPU_DISPATCH(relu_inplace_kernel, relu_inplace_impl)

// threshold_backward semantics: the gradient passes where result > 0 (and where result is NaN).
template <typename T>
TORCHEXT_INLINE void relu_backward_impl(const T* __restrict__ g, const T* __restrict__ r, T* __restrict__ out,
                                        int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<float>(r[i]) <= 0.f ? static_cast<T>(0) : g[i];
  }
}
TORCHEXT_CPU_DISPATCH(relu_backward_kernel, relu_backward_impl)

constexpr int64_t kGrain = 1 << 15;

at::Tensor relu_cpu(const at::Tensor& self) {
  check_floating("relu", "self", self);
  // A dense input (contiguous, transposed, ...) is processed in storage order and the output keeps
  // its strides, as torch does; anything else is made contiguous first.
  const at::Tensor x = self.is_non_overlapping_and_dense() ? self : self.contiguous();
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "torchext::relu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      relu_kernel<scalar_t>(xp + begin, yp + begin, end - begin);
    });
  });
  return y;
}

void relu_inplace_cpu(at::Tensor& self) {
  check_floating("relu_", "self", self);
  check_no_internal_overlap("relu_", "self", self);
  at::Tensor x = self.is_non_overlapping_and_dense() ? self : self.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "torchext::relu_", [&] {
    scalar_t* xp = x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      relu_inplace_kernel<scalar_t>(xp + begin, end - begin);
    });
  });
  if (!x.is_same(self)) self.copy_(x);
}

at::Tensor relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& result) {
  check_floating("relu_backward", "grad_output", grad_output);
  check_same_shape_dtype("relu_backward", "grad_output", grad_output, "result", result);
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor r = result.contiguous();
  at::Tensor out = at::empty_like(g, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "torchext::relu_backward", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
      relu_backward_kernel<scalar_t>(gp + begin, rp + begin, op + begin, end - begin);
    });
  });
  return out;
}

}  // namespace
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("relu", &torchext::relu_cpu);
  m.impl("relu_", &torchext::relu_inplace_cpu);
  m.impl("relu_backward", &torchext::relu_backward_cpu);
}
