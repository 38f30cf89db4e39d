// Tensor-core GEMM for Linear: 2*M*N*K FLOPs; each 64 x 64 output tile reads (64 + 64) * K inputs
// through shared memory (K/32 stages), so global traffic is M*N*K*(1/64 + 1/64) elements.
// half / bfloat16 use 16x16x16 wmma fragments with float accumulation; float uses 16x16x8 TF32
// fragments, only when torch.backends.cuda.matmul.allow_tf32 is set (else linear.cu's SIMT kernel).
// Four warps, each owning a 32 x 32 quarter of the tile (2 x 2 fragments). The accumulators go
// through shared memory to the epilogue, which adds the bias, applies ReLU and writes with bounds
// checks, so any M, N, K works.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/version.h>

#include <algorithm>
#include <mutex>
#include <type_traits>
#include <vector>

#include "cuda/linear.cuh"

namespace torchext {
namespace cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBM = 64, kBN = 64, kBK = 32, kThreadsTC = 128;

// Fragment element type (the wmma "precision") and its K depth for each storage type.
template <typename T>
struct TcTraits;
template <>
struct TcTraits<at::Half> {
  using Storage = __half;
  using Frag = __half;
  static constexpr int kFK = 16;
  static constexpr int kPad = 8;  // keeps rows 16-byte aligned and staggers banks
};
template <>
struct TcTraits<at::BFloat16> {
  using Storage = __nv_bfloat16;
  using Frag = __nv_bfloat16;
  static constexpr int kFK = 16;
  static constexpr int kPad = 8;
};
template <>
struct TcTraits<float> {
  using Storage = float;
  using Frag = wmma::precision::tf32;
  static constexpr int kFK = 8;
  static constexpr int kPad = 4;
};

template <typename T>
__global__ void __launch_bounds__(kThreadsTC) linear_tc_kernel(LinearProblem<T> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Tr = TcTraits<T>;
  using S = typename Tr::Storage;
  constexpr int LDS = kBK + Tr::kPad;
  constexpr int LDC = kBN + 4;
  // A and B tiles are dead by the time the accumulators are staged, so they share storage.
  static_assert(sizeof(S) == sizeof(T), "storage and fragment types must match");
  constexpr int kTileBytes = (kBM + kBN) * LDS * sizeof(S);
  constexpr int kOutBytes = kBM * LDC * sizeof(float);
  __shared__ __align__(32) unsigned char smem[kTileBytes > kOutBytes ? kTileBytes : kOutBytes];
  // Tiles are filled as T (c10's types convert from float) and read by wmma as the CUDA type.
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + kBM * LDS;
  const S* As_w = reinterpret_cast<const S*>(As);
  const S* Bs_w = reinterpret_cast<const S*>(Bs);
  float* Cs = reinterpret_cast<float*>(smem);

  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;  // row tiles on x: any batch fits
  const int warp = threadIdx.x / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  // Column tiles on y, which stops at 65535: a block takes every gridDim.y-th one.
  const int64_t n_step = static_cast<int64_t>(gridDim.y) * kBN;
  for (int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN; n0 < p.N; n0 += n_step) {
    wmma::fragment<wmma::accumulator, 16, 16, Tr::kFK, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    for (int64_t k0 = 0; k0 < p.K; k0 += kBK) {
      load_tile<T, kBM, kBK, LDS, kThreadsTC>(As, p.a, p.sam, p.sak, m0, p.M, k0, p.K);
      load_tile<T, kBN, kBK, LDS, kThreadsTC>(Bs, p.b, p.sbn, p.sbk, n0, p.N, k0, p.K);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kBK; kk += Tr::kFK) {
        wmma::fragment<wmma::matrix_a, 16, 16, Tr::kFK, typename Tr::Frag, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, Tr::kFK, typename Tr::Frag, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          wmma::load_matrix_sync(fa[i], As_w + (wm + 16 * i) * LDS + kk, LDS);
          // B(k, j) = weight[j, k]: a column-major K x N matrix with leading dimension LDS.
          wmma::load_matrix_sync(fb[i], Bs_w + (wn + 16 * i) * LDS + kk, LDS);
          if constexpr (std::is_same<S, float>::value) {
#pragma unroll
            for (int e = 0; e < fa[i].num_elements; ++e) fa[i].x[e] = wmma::__float_to_tf32(fa[i].x[e]);
#pragma unroll
            for (int e = 0; e < fb[i].num_elements; ++e) fb[i].x[e] = wmma::__float_to_tf32(fb[i].x[e]);
          }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(Cs + (wm + 16 * i) * LDC + wn + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
    __syncthreads();
    // Consecutive threads take consecutive columns so the output stores coalesce.
    for (int idx = threadIdx.x; idx < kBM * kBN; idx += kThreadsTC) {
      const int r = idx / kBN, c = idx % kBN;
      store_output<T, float>(p, m0 + r, n0 + c, Cs[r * LDC + c]);
    }
    __syncthreads();  // the next tile's loads overwrite Cs
  }
#else
  __trap();  // tensor-core path is only launched on sm_80+
#endif
}

template <typename T>
void launch_tc(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out,
               bool relu) {
  const LinearProblem<T> p = linear_problem<T>(input, weight, bias, out, relu);
  const dim3 grid(static_cast<unsigned>((p.M + kBM - 1) / kBM),
                  static_cast<unsigned>(std::min<int64_t>((p.N + kBN - 1) / kBN, kMaxGridY)));
  linear_tc_kernel<T><<<grid, kThreadsTC, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The kernel body exists only in code compiled for sm_80 or newer. A build whose code for this
// device comes from older PTX (say TORCH_CUDA_ARCH_LIST="7.5+PTX", JIT-compiled on an H100)
// carries only the trap stub, so such builds take the SIMT path instead. Cached per device.
bool tensor_core_code_loaded() {
  static std::mutex mutex;
  static std::vector<int> cache;  // -1: not asked yet
  const int device = c10::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() <= static_cast<size_t>(device)) cache.resize(device + 1, -1);
  if (cache[device] < 0) {
    cudaFuncAttributes attr;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, linear_tc_kernel<at::Half>));
    cache[device] = attr.ptxVersion >= 80 ? 1 : 0;
  }
  return cache[device] == 1;
}

// Whether float32 GEMMs may round their inputs to TF32, as torch decides it for cuBLAS. Since torch
// 2.9 the setting is torch.backends.cuda.matmul.fp32_precision, which allow_tf32 and
// set_float32_matmul_precision also set; the old getter, allowTF32CuBLAS(), throws once a program
// has set the new one alone. at::NoTF32Guard (torch's internal "no TF32 here") wins over both.
bool tf32_allowed() {
  if (at::NoTF32Guard::should_disable_tf32()) return false;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
         at::Float32Precision::TF32;
#else
  return at::globalContext().allowTF32CuBLAS();
#endif
}

}  // namespace

bool launch_linear_tensor_core(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                               at::Tensor& out, bool relu) {
  const auto* props = at::cuda::getCurrentDeviceProperties();
  if (props->major < 8 || !tensor_core_code_loaded()) return false;
  switch (input.scalar_type()) {
    case at::kHalf: launch_tc<at::Half>(input, weight, bias, out, relu); return true;
    case at::kBFloat16: launch_tc<at::BFloat16>(input, weight, bias, out, relu); return true;
    case at::kFloat:
      if (!tf32_allowed()) return false;
      launch_tc<float>(input, weight, bias, out, relu);
      return true;
    default: return false;
  }
}

}  // namespace cuda
}  // namespace torchext
