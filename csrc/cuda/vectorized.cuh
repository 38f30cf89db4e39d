// What the memory-bound CUDA kernels share: the one 16-byte alignment test, the one vector type
// (K values moved with 16-byte accesses), global-memory loads and stores, and grid sizing from
// each kernel's occupancy.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "cuda/hooks.cuh"

namespace torchext {
namespace cuda {

// Whether 16-byte vector accesses at p are legal (host and device).
__host__ __device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// K values of T in 16-byte aligned storage, loaded and stored with 16-byte accesses (K * sizeof(T)
// a multiple of 16). Vec16<T> holds exactly one 16-byte access.
template <typename T, int K>
struct alignas(16) Vec {
  static constexpr int kSize = K;
  T v[K];
};
template <typename T>
using Vec16 = Vec<T, 16 / sizeof(T)>;

// p points at global memory. Pointers the kernels read from a metadata table are generic to the
// compiler, which then emits generic loads (LD); saying so gives global ones (LDG / STG).
template <typename T>
__device__ __forceinline__ T* global(T* p) {
  __builtin_assume(__isGlobal(p));
  return p;
}

template <typename T, int K = 16 / sizeof(T)>
__device__ __forceinline__ Vec<T, K> load_vec(const T* p) {
  static_assert(K * sizeof(T) % 16 == 0, "whole 16-byte accesses");
  return *reinterpret_cast<const Vec<T, K>*>(global(p));
}
template <typename T, int K>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, K>& v) {
  static_assert(K * sizeof(T) % 16 == 0, "whole 16-byte accesses");
  *reinterpret_cast<Vec<T, K>*>(global(p)) = v;
}
template <typename T>
__device__ __forceinline__ Vec16<T> load16(const T* p) {
  return load_vec<T>(p);
}
template <typename T>
__device__ __forceinline__ void store16(T* p, const Vec16<T>& v) {
  store_vec(p, v);
}

constexpr int kThreads = 256;

// How many blocks of `threads` threads (no dynamic shared memory) of `kernel` one SM of the current
// device holds, asked once per kernel and device.
inline int blocks_per_sm(const void* kernel, int threads) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int>, int> cache;
  const int device = c10::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  int& n = cache[std::make_tuple(kernel, threads, device)];
  if (n == 0) {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, 0));
    n = std::max(1, n);
  }
  return n;
}

// Blocks for a grid-stride kernel over `work_items`: one full wave of the device at the kernel's
// occupancy (a wave and a third, as a fixed 8 blocks per SM gave kernels whose registers allow 6,
// leaves the last third of the time to a third of the SMs), fewer when there is less work. Any
// element count, > 2^31 included, is covered by the kernels' 64-bit grid-stride loops.
template <typename Kernel>
unsigned int grid_for(Kernel* kernel, int64_t work_items, int threads = kThreads) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (work_items + threads - 1) / threads;
  const int64_t wave = sms * blocks_per_sm(reinterpret_cast<const void*>(kernel), threads);
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(wanted, wave)));
}

}  // namespace cuda
}  // namespace torchext
