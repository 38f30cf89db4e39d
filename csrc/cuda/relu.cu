// ReLU on CUDA. Memory bound: forward moves 2 elements, backward 3 (2 when the gradient is one
// broadcast value); 16-byte vector accesses. The forward takes integer tensors too, as torch's
// does (they have no gradient, so the backward is floating-point only).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <type_traits>

#include "checks.h"
#include "cuda/vectorized.cuh"

namespace torchext {
namespace cuda {
namespace {

template <typename T>
__device__ __forceinline__ T relu_value(T x) {
  if constexpr (std::is_unsigned_v<T>) {
    return x;  // uint8: nothing is negative
  } else if constexpr (std::is_integral_v<T> || std::is_same_v<T, double>) {
    return x < T(0) ? T(0) : x;  // compared in the type itself (int64 and tiny doubles are not floats)
  } else {
    const float v = static_cast<float>(x);  // half types widen exactly
    return v < 0.f ? T(0.f) : x;  // NaN passes through, as in torch.relu
  }
}

// x and y may be the same pointer (in-place).
template <typename T>
__global__ void relu_kernel(const T* x, T* y, int64_t n, bool vectorized) {
  constexpr int V = Vec16<T>::kSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vectorized) {
    const int64_t nvec = n / V;
    for (int64_t i = tid; i < nvec; i += stride) {
      Vec16<T> v = load16(x + i * V);
#pragma unroll
      for (int k = 0; k < V; ++k) v.v[k] = relu_value(v.v[k]);
      store16(y + i * V, v);
    }
    done = nvec * V;
  }
  for (int64_t i = done + tid; i < n; i += stride) y[i] = relu_value(x[i]);
}

// Compared in the element's own precision for double (a tiny positive double is 0 as a float);
// half types widen to float exactly.
template <typename T>
__device__ __forceinline__ bool not_positive(T r) { return static_cast<float>(r) <= 0.f; }
__device__ __forceinline__ bool not_positive(double r) { return r <= 0.0; }

// kScalarGrad: the gradient is one value broadcast over the tensor (g points at it), read once
// instead of being made contiguous first.
template <typename T, bool kScalarGrad>
__global__ void relu_backward_kernel(const T* __restrict__ g, const T* __restrict__ r, T* __restrict__ out,
                                     int64_t n, bool vectorized) {
  constexpr int V = Vec16<T>::kSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const T g0 = kScalarGrad ? g[0] : T(0.f);
  int64_t done = 0;
  if (vectorized) {
    const int64_t nvec = n / V;
    for (int64_t i = tid; i < nvec; i += stride) {
      Vec16<T> gv;
      if constexpr (kScalarGrad) {
#pragma unroll
        for (int k = 0; k < V; ++k) gv.v[k] = g0;
      } else {
        gv = load16(g + i * V);
      }
      const Vec16<T> rv = load16(r + i * V);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        if (not_positive(rv.v[k])) gv.v[k] = T(0.f);
      }
      store16(out + i * V, gv);
    }
    done = nvec * V;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    out[i] = not_positive(r[i]) ? T(0.f) : (kScalarGrad ? g0 : g[i]);
  }
}

void launch_relu(const at::Tensor& x, const at::Tensor& y) {
  const int64_t n = x.numel();
  if (n == 0) return;
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "torchext::relu_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = static_cast<scalar_t*>(y.data_ptr());
    const bool vec = aligned16(xp) && aligned16(yp);
    const int64_t items = vec ? n / Vec16<scalar_t>::kSize + 1 : n;
    auto* kernel = relu_kernel<scalar_t>;
    TORCHEXT_LAUNCH(kernel, grid_for(kernel, items), kThreads, 0, at::cuda::getCurrentCUDAStream(), xp, yp, n, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor relu_cuda(const at::Tensor& self) {
  check_floating_or_integer("relu", "self", self);
  const c10::cuda::CUDAGuard guard(self.device());
  const at::Tensor x = self.is_non_overlapping_and_dense() ? self : self.contiguous();
  at::Tensor y = at::empty_like(x);
  launch_relu(x, y);
  return y;
}

void relu_inplace_cuda(at::Tensor& self) {
  check_floating_or_integer("relu_", "self", self);
  check_no_internal_overlap("relu_", "self", self);
  const c10::cuda::CUDAGuard guard(self.device());
  at::Tensor x = self.is_non_overlapping_and_dense() ? self : self.contiguous();
  launch_relu(x, x);
  if (!x.is_same(self)) self.copy_(x);
}

at::Tensor relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& result) {
  check_floating("relu_backward", "grad_output", grad_output);
  check_same_shape_dtype("relu_backward", "grad_output", grad_output, "result", result);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const bool scalar_grad = is_broadcast_scalar(grad_output);
  const at::Tensor g = scalar_grad ? grad_output : grad_output.contiguous();
  const at::Tensor r = result.contiguous();
  at::Tensor out = at::empty_like(r, at::MemoryFormat::Contiguous);
  const int64_t n = r.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "torchext::relu_backward_cuda", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const bool vec = (scalar_grad || aligned16(gp)) && aligned16(rp) && aligned16(op);
    const int64_t items = vec ? n / Vec16<scalar_t>::kSize + 1 : n;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    auto* kernel = scalar_grad ? relu_backward_kernel<scalar_t, true> : relu_backward_kernel<scalar_t, false>;
    TORCHEXT_LAUNCH(kernel, grid_for(kernel, items), kThreads, 0, stream, gp, rp, op, n, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, TORCHEXT_DEVICE_KEY, m) {
  m.impl("relu", &torchext::cuda::relu_cuda);
  m.impl("relu_", &torchext::cuda::relu_inplace_cuda);
  m.impl("relu_backward", &torchext::cuda::relu_backward_cuda);
}
