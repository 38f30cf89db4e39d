// ReLU on CPU. Memory bound: forward reads 1 and writes 1 element, backward reads 2 and writes 1;
// no FLOPs beyond one compare and select per element. The forward also takes the integer types, as
// torch.relu does (the backward is for gradients, which are floating).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/dispatch.h"
#include "checks.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace torchext {
namespace {

// NaN must propagate like torch.relu (clamp_min), so test `x < 0` rather than `x > 0`.
//
// float16 and bfloat16 work on the raw bits: x < 0 exactly when the sign bit is set, the magnitude
// is not zero (-0 stays) and not above infinity (NaN stays). Integer compares vectorise at every
// SIMD level, where a round trip through float would cost two conversions per element.
template <typename T>
struct HalfBits;  // infinity's magnitude bits; defined for the 16-bit types only
template <>
struct HalfBits<c10::Half> {
  static constexpr uint16_t kInf = 0x7c00;
};
template <>
struct HalfBits<c10::BFloat16> {
  static constexpr uint16_t kInf = 0x7f80;
};
typedef uint16_t bits16 __attribute__((may_alias));

template <typename T>
TORCHEXT_INLINE bool bits_negative(uint16_t u) {
  const uint16_t mag = u & 0x7fff;
  return (u & 0x8000) != 0 && mag != 0 && mag <= HalfBits<T>::kInf;
}
template <typename T>
TORCHEXT_INLINE bool bits_not_positive(uint16_t u) {  // x <= 0, false for NaN
  const uint16_t mag = u & 0x7fff;
  return mag == 0 || ((u & 0x8000) != 0 && mag <= HalfBits<T>::kInf);
}

template <typename T>
constexpr bool kIsHalf = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

// float, double and the integer types compare directly; the half types compare bits.
template <typename T>
TORCHEXT_INLINE void relu_impl(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  if constexpr (kIsHalf<T>) {
    const bits16* xb = reinterpret_cast<const bits16*>(x);
    bits16* yb = reinterpret_cast<bits16*>(y);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t u = xb[i];
      yb[i] = bits_negative<T>(u) ? uint16_t(0) : u;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
  }
}
TORCHEXT_CPU_DISPATCH(relu_kernel, relu_impl)

// The in-place variant may alias: no __restrict__.
template <typename T>
TORCHEXT_INLINE void relu_inplace_impl(T* x, int64_t n) {
  if constexpr (kIsHalf<T>) {
    bits16* xb = reinterpret_cast<bits16*>(x);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t u = xb[i];
      xb[i] = bits_negative<T>(u) ? uint16_t(0) : u;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] < T(0) ? T(0) : x[i];
  }
}
TORCHEXT_CPU_DISPATCH(relu_inplace_kernel, relu_inplace_impl)

// threshold_backward semantics: the gradient passes where result > 0 (and where result is NaN).
template <typename T>
TORCHEXT_INLINE void relu_backward_impl(const T* __restrict__ g, const T* __restrict__ r, T* __restrict__ out,
                                        int64_t n) {
  const bits16* gb = reinterpret_cast<const bits16*>(g);
  const bits16* rb = reinterpret_cast<const bits16*>(r);
  bits16* ob = reinterpret_cast<bits16*>(out);
  for (int64_t i = 0; i < n; ++i) ob[i] = bits_not_positive<T>(rb[i]) ? uint16_t(0) : gb[i];
}
template <>
TORCHEXT_INLINE void relu_backward_impl<float>(const float* __restrict__ g, const float* __restrict__ r,
                                               float* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = r[i] <= 0.f ? 0.f : g[i];
}
template <>
TORCHEXT_INLINE void relu_backward_impl<double>(const double* __restrict__ g, const double* __restrict__ r,
                                                double* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = r[i] <= 0.0 ? 0.0 : g[i];
}
TORCHEXT_CPU_DISPATCH(relu_backward_kernel, relu_backward_impl)

// The same with the incoming gradient one value broadcast over the tensor (an expanded scalar, as
// sum().backward() sends it): no copy of the gradient is made.
template <typename T>
TORCHEXT_INLINE void relu_backward_fill_impl(T v, const T* __restrict__ r, T* __restrict__ out, int64_t n) {
  if constexpr (kIsHalf<T>) {
    bits16 vb;
    std::memcpy(&vb, &v, sizeof(vb));
    const bits16* rb = reinterpret_cast<const bits16*>(r);
    bits16* ob = reinterpret_cast<bits16*>(out);
    for (int64_t i = 0; i < n; ++i) ob[i] = bits_not_positive<T>(rb[i]) ? uint16_t(0) : vb;
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = r[i] <= T(0) ? T(0) : v;
  }
}
TORCHEXT_CPU_DISPATCH(relu_backward_fill_kernel, relu_backward_fill_impl)

constexpr int64_t kGrain = 1 << 15;

at::Tensor relu_cpu(const at::Tensor& self) {
  check_floating_or_integer("relu", "self", self);
  // A dense input (contiguous, transposed, ...) is processed in storage order and the output keeps
  // its strides, as torch does; anything else is made contiguous first.
  const at::Tensor x = self.is_non_overlapping_and_dense() ? self : self.contiguous();
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "torchext::relu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      relu_kernel<scalar_t>(xp + begin, yp + begin, end - begin);
    });
  });
  return y;
}

void relu_inplace_cpu(at::Tensor& self) {
  check_floating_or_integer("relu_", "self", self);
  check_no_internal_overlap("relu_", "self", self);
  at::Tensor x = self.is_non_overlapping_and_dense() ? self : self.contiguous();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "torchext::relu_", [&] {
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
  const bool broadcast = is_broadcast_scalar(grad_output);
  const at::Tensor g = broadcast ? grad_output : grad_output.contiguous();
  const at::Tensor r = result.contiguous();
  at::Tensor out = at::empty_like(r, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "torchext::relu_backward", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, r.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if (broadcast) {
        relu_backward_fill_kernel<scalar_t>(*gp, rp + begin, op + begin, end - begin);
      } else {
        relu_backward_kernel<scalar_t>(gp + begin, rp + begin, op + begin, end - begin);
      }
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
