// MSE loss on CUDA. Memory bound, 3 FLOPs per element. Elements moved per element of input:
// mse_loss reads 2 and writes 0 (mean/sum) or 1 (none); mse_loss_forward also writes diff (3 or
// 4); mse_loss_backward reads diff (and grad_output for none) and writes grad_input (2 or 3).
// 16-byte vector accesses with a scalar tail, grid-stride loops with 64-bit indices.
//
// Reductions: each block folds its grid-stride share (per-thread sums, then warp shuffles) into
// one partial; a one-block kernel adds the partials in a fixed order and applies the mean. No
// float atomics, so the same call on the same GPU gives the same bits. The split into blocks
// depends on the SM count and on whether the operands are 16-byte aligned (vector or scalar
// loop), so another GPU model, or the same values at an offset, may round differently (unlike the
// CPU kernel, whose chunks depend on n alone). Sums accumulate in double for float64 and float32
// (the squared float32 diffs are exact there) and in float for half types.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <type_traits>

#include "checks.h"
#include "math_type.h"
#include "mse_loss_checks.h"
#include "cuda/vectorized.cuh"

namespace torchext {
namespace cuda {
namespace {


template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0. blockDim.x must be a multiple of 32.
template <typename A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A warp_sums[32];
  TORCHEXT_SHARED(warp_sums);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = threadIdx.x < warps ? warp_sums[threadIdx.x] : A(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

// partial[blockIdx.x] = sum of (x - t)^2 over this block's share; diff = x - t when kSaveDiff.
template <typename T, bool kSaveDiff>
__global__ void sq_diff_partial_kernel(const T* __restrict__ x, const T* __restrict__ t, T* __restrict__ diff,
                                       int64_t n, bool vectorized, sum_t<T>* __restrict__ partial) {
  using C = math_t<T>;
  using A = sum_t<T>;
  constexpr int V = Vec16<T>::kSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  A acc = A(0);
  int64_t done = 0;
  if (vectorized) {
    const int64_t nvec = n / V;
    for (int64_t i = tid; i < nvec; i += stride) {
      const Vec16<T> xv = load16(x + i * V);
      const Vec16<T> tv = load16(t + i * V);
      Vec16<T> dv;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const C d = static_cast<C>(xv.v[k]) - static_cast<C>(tv.v[k]);
        if (kSaveDiff) dv.v[k] = static_cast<T>(d);
        acc += static_cast<A>(d) * static_cast<A>(d);
      }
      if (kSaveDiff) store16(diff + i * V, dv);
    }
    done = nvec * V;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    const C d = static_cast<C>(x[i]) - static_cast<C>(t[i]);
    if (kSaveDiff) diff[i] = static_cast<T>(d);
    acc += static_cast<A>(d) * static_cast<A>(d);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// loss = sum(partial) (/ n for mean), in a fixed order; one block.
template <typename T>
__global__ void finish_sum_kernel(const sum_t<T>* __restrict__ partial, int parts, int64_t n, bool mean,
                                  T* __restrict__ loss) {
  using A = sum_t<T>;
  A acc = A(0);
  for (int i = threadIdx.x; i < parts; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  // mean of an empty tensor is 0/0 = nan, as in torch.
  if (threadIdx.x == 0) *loss = static_cast<T>(mean ? acc / static_cast<A>(n) : acc);
}

// loss = (x - t)^2 elementwise; diff = x - t when kSaveDiff.
template <typename T, bool kSaveDiff>
__global__ void sq_diff_kernel(const T* __restrict__ x, const T* __restrict__ t, T* __restrict__ loss,
                               T* __restrict__ diff, int64_t n, bool vectorized) {
  using C = math_t<T>;
  constexpr int V = Vec16<T>::kSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vectorized) {
    const int64_t nvec = n / V;
    for (int64_t i = tid; i < nvec; i += stride) {
      const Vec16<T> xv = load16(x + i * V);
      const Vec16<T> tv = load16(t + i * V);
      Vec16<T> lv, dv;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const C d = static_cast<C>(xv.v[k]) - static_cast<C>(tv.v[k]);
        if (kSaveDiff) dv.v[k] = static_cast<T>(d);
        lv.v[k] = static_cast<T>(d * d);
      }
      store16(loss + i * V, lv);
      if (kSaveDiff) store16(diff + i * V, dv);
    }
    done = nvec * V;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    const C d = static_cast<C>(x[i]) - static_cast<C>(t[i]);
    if (kSaveDiff) diff[i] = static_cast<T>(d);
    loss[i] = static_cast<T>(d * d);
  }
}

// grad_input = norm * diff * g, with g one scalar on the device (mean/sum: read once per thread,
// no host sync) or elementwise (none, g_elementwise).
template <typename T>
__global__ void backward_kernel(const T* __restrict__ g, bool g_elementwise, const T* __restrict__ diff,
                                T* __restrict__ out, int64_t n, double norm_d, bool vectorized) {
  using C = math_t<T>;
  constexpr int V = Vec16<T>::kSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (!g_elementwise) {
    // Formed in double and rounded once, as the CPU kernel does (2/n rounded to float first
    // would put a second rounding into every element).
    const C scale = static_cast<C>(norm_d * static_cast<double>(g[0]));
    if (vectorized) {
      const int64_t nvec = n / V;
      for (int64_t i = tid; i < nvec; i += stride) {
        Vec16<T> dv = load16(diff + i * V);
#pragma unroll
        for (int k = 0; k < V; ++k) dv.v[k] = static_cast<T>(scale * static_cast<C>(dv.v[k]));
        store16(out + i * V, dv);
      }
      done = nvec * V;
    }
    for (int64_t i = done + tid; i < n; i += stride) out[i] = static_cast<T>(scale * static_cast<C>(diff[i]));
    return;
  }
  const C norm = static_cast<C>(norm_d);  // 2 for reduction='none': exact in every type
  if (vectorized) {
    const int64_t nvec = n / V;
    for (int64_t i = tid; i < nvec; i += stride) {
      Vec16<T> dv = load16(diff + i * V);
      const Vec16<T> gv = load16(g + i * V);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        dv.v[k] = static_cast<T>(norm * static_cast<C>(dv.v[k]) * static_cast<C>(gv.v[k]));
      }
      store16(out + i * V, dv);
    }
    done = nvec * V;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    out[i] = static_cast<T>(norm * static_cast<C>(diff[i]) * static_cast<C>(g[i]));
  }
}

at::Tensor mse_impl(const char* op, const at::Tensor& input, const at::Tensor& target, int64_t reduction,
                    at::Tensor* diff_out) {
  check_mse_args(op, input, target, reduction);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto xt = common_layout(input, target);
  const at::Tensor& x = xt.first;
  const at::Tensor& t = xt.second;
  const int64_t n = x.numel();
  const bool save = diff_out != nullptr;
  at::Tensor diff;
  if (save) {
    diff = at::empty_like(x);
    *diff_out = diff;
  }
  at::Tensor loss = reduction == 0 ? at::empty_like(x) : at::empty({}, x.options());
  if (reduction == 0 && n == 0) return loss;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "torchext::mse_loss_cuda", [&] {
    using A = sum_t<scalar_t>;
    constexpr int V = Vec16<scalar_t>::kSize;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    scalar_t* dp = save ? diff.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* lp = loss.mutable_data_ptr<scalar_t>();
    const bool vec = aligned16(xp) && aligned16(tp) && (!save || aligned16(dp)) && (reduction != 0 || aligned16(lp));
    const int64_t items = vec ? n / V + 1 : n;
    if (reduction == 0) {
      auto* kernel = save ? sq_diff_kernel<scalar_t, true> : sq_diff_kernel<scalar_t, false>;
      TORCHEXT_LAUNCH(kernel, grid_for(kernel, items), kThreads, 0, stream, xp, tp, lp, dp, n, vec);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    auto* kernel = save ? sq_diff_partial_kernel<scalar_t, true> : sq_diff_partial_kernel<scalar_t, false>;
    const unsigned int grid = grid_for(kernel, items);
    at::Tensor partial = at::empty({static_cast<int64_t>(grid)},
                                   x.options().dtype(c10::CppTypeToScalarType<A>::value));
    A* pp = partial.mutable_data_ptr<A>();
    TORCHEXT_LAUNCH(kernel, grid, kThreads, 0, stream, xp, tp, dp, n, vec, pp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    TORCHEXT_LAUNCH(finish_sum_kernel<scalar_t>, 1, kThreads, 0, stream, pp, static_cast<int>(grid), n, reduction == 1,
                    lp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return loss;
}

at::Tensor mse_loss_cuda(const at::Tensor& input, const at::Tensor& target, int64_t reduction) {
  return mse_impl("mse_loss", input, target, reduction, nullptr);
}

std::tuple<at::Tensor, at::Tensor> mse_loss_forward_cuda(const at::Tensor& input, const at::Tensor& target,
                                                         int64_t reduction) {
  at::Tensor diff;
  at::Tensor loss = mse_impl("mse_loss_forward", input, target, reduction, &diff);
  return {loss, diff};
}

at::Tensor mse_loss_backward_cuda(const at::Tensor& grad_output, const at::Tensor& diff, int64_t reduction) {
  const char* op = "mse_loss_backward";
  check_mse_backward_args(op, grad_output, diff, reduction);
  const c10::cuda::CUDAGuard guard(diff.device());
  at::Tensor g, d;
  if (reduction == 0) {
    std::tie(g, d) = common_layout(grad_output, diff);
  } else {
    g = grad_output;
    d = diff.is_non_overlapping_and_dense() ? diff : diff.contiguous();
  }
  at::Tensor out = at::empty_like(d);
  const int64_t n = d.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "torchext::mse_loss_backward_cuda", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const bool elementwise = reduction == 0;
    const bool vec = aligned16(dp) && aligned16(op_) && (!elementwise || aligned16(gp));
    const double norm = reduction == 1 ? 2.0 / static_cast<double>(n) : 2.0;
    auto* kernel = backward_kernel<scalar_t>;
    const unsigned int grid = grid_for(kernel, vec ? n / Vec16<scalar_t>::kSize + 1 : n);
    TORCHEXT_LAUNCH(kernel, grid, kThreads, 0, at::cuda::getCurrentCUDAStream(), gp, elementwise, dp, op_, n, norm, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, TORCHEXT_DEVICE_KEY, m) {
  m.impl("mse_loss", &torchext::cuda::mse_loss_cuda);
  m.impl("mse_loss_forward", &torchext::cuda::mse_loss_forward_cuda);
  m.impl("mse_loss_backward", &torchext::cuda::mse_loss_backward_cuda);
}
