// Linear on CUDA: host wrappers, the strided SIMT GEMM and the grad helpers.
//
// The GEMMs proper live in gemm_tc.cuh (tensor cores: half, bfloat16, TF32) and gemm_simt.cuh
// (float, double), dispatched from linear_gemm.cu. What is left here for the GEMM is the strided
// SIMT kernel for half types on GPUs older than sm_80: 2*M*N*K FLOPs; a 64 x 64 output tile per
// 256-thread block, 4 x 4 outputs per thread held in registers, K walked in slices of 16 through
// shared memory, reading the operands through any strides. Bias and ReLU are applied while storing.
//
// Grad helpers (memory bound): linear_bias_grad reads M*N elements and writes N; linear_relu_grad
// reads 2*M*N and writes M*N + N. Each column is reduced by one block in a fixed order, so the
// sums are deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/linear.cuh"
#include "linear_checks.h"
#include "math_type.h"

namespace torchext {
namespace cuda {
namespace {

constexpr int kTile = 64, kSlice = 16, kThreadsSimt = 256;

// Run only by GPUs older than sm_80 (on newer ones the tensor-core and SIMT GEMMs take every dtype),
// so code for sm_80 and newer carries a trap stub; the emulation compiles the body and runs it when
// asked (TORCHEXT_FORCE_STRIDED_GEMM).
template <typename T>
__global__ void __launch_bounds__(kThreadsSimt) linear_simt_kernel(LinearProblem<T> p) {
#if TORCHEXT_SM80_CODE && !defined(TORCHEXT_EMU)
  __trap();
#else
  using Acc = math_t<T>;
  constexpr int LD = kSlice + 1;  // odd stride: the 16 columns a warp reads fall in distinct banks
  __shared__ T As[kTile * LD];
  TORCHEXT_SHARED(As);
  __shared__ T Bs[kTile * LD];
  TORCHEXT_SHARED(Bs);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  // Row tiles on x (up to 2^31 - 1 blocks, so any batch fits); neighbouring blocks share a weight tile.
  // Column tiles on y, which stops at 65535: a block takes every gridDim.y-th one.
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t n_step = static_cast<int64_t>(gridDim.y) * kTile;
  for (int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile; n0 < p.N; n0 += n_step) {
    // Thread (ty, tx) owns rows ty + 16*i and columns tx + 16*j: strided so that stores coalesce.
    Acc acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = Acc(0);
    for (int64_t k0 = 0; k0 < p.K; k0 += kSlice) {
      load_tile<T, kTile, kSlice, LD, kThreadsSimt>(As, p.a, p.sam, p.sak, m0, p.M, k0, p.K);
      load_tile<T, kTile, kSlice, LD, kThreadsSimt>(Bs, p.b, p.sbn, p.sbk, n0, p.N, k0, p.K);
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kSlice; ++k) {
        Acc a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = static_cast<Acc>(As[(ty + 16 * i) * LD + k]);
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = static_cast<Acc>(Bs[(tx + 16 * j) * LD + k]);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) store_output<T, Acc>(p, m0 + ty + 16 * i, n0 + tx + 16 * j, acc[i][j]);
  }
#endif
}

constexpr int kSumCols = 32, kSumLanes = 16;

// Block (32 columns) x (16 row lanes) over one chunk of rows (blockIdx.y): lane l sums the chunk's
// rows l, l + 16, ...; the 16 partials are then added in lane order. With one chunk the column sum
// goes straight to `sums`, else to partials[chunk][col], which finish_column_sums adds in chunk
// order (no atomics: the result depends only on M and N). With `result`, the gradient is masked by
// result > 0 (threshold_backward) and the masked values are written out as well.
template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ g, const T* __restrict__ r, T* __restrict__ masked,
                                  T* __restrict__ sums, double* __restrict__ partials, int64_t M, int64_t N,
                                  int64_t rows_per_chunk) {
  using Acc = double;  // as the CPU twin sums (csrc/linear.cpp says why)
  __shared__ Acc part[kSumLanes][kSumCols];
  TORCHEXT_SHARED(part);
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kSumCols + threadIdx.x;
  const int64_t chunk_end = (static_cast<int64_t>(blockIdx.y) + 1) * rows_per_chunk;
  const int64_t row_end = chunk_end < M ? chunk_end : M;
  Acc s = Acc(0);
  if (col < N) {
    for (int64_t row = static_cast<int64_t>(blockIdx.y) * rows_per_chunk + threadIdx.y; row < row_end;
         row += kSumLanes) {
      const int64_t at = row * N + col;
      T v = g[at];
      if (r) {
        if (static_cast<math_t<T>>(r[at]) <= math_t<T>(0)) v = T(0);
        masked[at] = v;
      }
      s += static_cast<Acc>(v);
    }
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < N) {
    Acc total = Acc(0);
#pragma unroll
    for (int l = 0; l < kSumLanes; ++l) total += part[l][threadIdx.x];
    if (gridDim.y == 1) {
      sums[col] = static_cast<T>(total);
    } else {
      partials[static_cast<int64_t>(blockIdx.y) * N + col] = total;
    }
  }
}

template <typename T>
__global__ void finish_column_sums(const double* __restrict__ partials, T* __restrict__ sums, int64_t chunks,
                                   int64_t N) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= N) return;
  double total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += partials[c * N + col];
  sums[col] = static_cast<T>(total);
}

// Row chunks per column block: enough blocks to fill a large GPU (~1024 in all) when N is small and
// M large (a bias grad of Linear(..., 1) over a big batch), with at least 256 rows per chunk.
// Depends on M and N only, so the summation order is the same on every GPU.
int64_t column_sum_chunks(int64_t M, int64_t N) {
  const int64_t col_blocks = (N + kSumCols - 1) / kSumCols;
  const int64_t by_rows = std::max<int64_t>(1, M / 256);
  const int64_t by_blocks = std::max<int64_t>(1, 1024 / col_blocks);
  return std::min(by_rows, by_blocks);  // <= 1024, under the grid.y limit
}

void launch_column_sums(const at::Tensor& g, const at::Tensor* result, at::Tensor* masked, at::Tensor& sums) {
  const int64_t M = g.size(0), N = g.size(1);
  if (N == 0) return;
  int64_t chunks = column_sum_chunks(M, N);
  const int64_t rows_per_chunk = std::max<int64_t>(1, (M + chunks - 1) / chunks);
  chunks = std::max<int64_t>(1, (M + rows_per_chunk - 1) / rows_per_chunk);
  const dim3 block(kSumCols, kSumLanes);
  const dim3 grid(static_cast<unsigned>((N + kSumCols - 1) / kSumCols), static_cast<unsigned>(chunks));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "torchext::linear_grad_cuda", [&] {
    using Acc = double;
    at::Tensor partials;
    if (chunks > 1) partials = at::empty({chunks, N}, g.options().dtype(at::kDouble));
    TORCHEXT_LAUNCH(column_sum_kernel<scalar_t>, grid, block, 0, stream, g.const_data_ptr<scalar_t>(), result ? result->const_data_ptr<scalar_t>() : nullptr,
        masked ? masked->mutable_data_ptr<scalar_t>() : nullptr, sums.mutable_data_ptr<scalar_t>(),
                    chunks > 1 ? partials.mutable_data_ptr<Acc>() : nullptr, M, N, rows_per_chunk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (chunks > 1) {
      constexpr int kThreads = 256;
      TORCHEXT_LAUNCH(finish_column_sums<scalar_t>, static_cast<unsigned>((N + kThreads - 1) / kThreads), kThreads, 0,
                      stream, partials.const_data_ptr<Acc>(), sums.mutable_data_ptr<scalar_t>(), chunks, N);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// out (a contiguous [M, N]) = input @ weight.T + bias [then ReLU], for checked arguments, on the
// current stream; the caller guards the device.
void linear_cuda_into(const char* op, const at::Tensor& input, const at::Tensor& weight,
                      const c10::optional<at::Tensor>& bias_opt, at::Tensor out, bool relu) {
  const int64_t M = input.size(0), N = weight.size(0);
  const at::Tensor* bias = bias_opt.has_value() && bias_opt->defined() ? &*bias_opt : nullptr;
  if (linear_without_gemm(input, bias, out, relu)) return;
  if (!TORCHEXT_FORCE_STRIDED_GEMM()) {
    if (launch_linear_tensor_core(input, weight, bias, out, relu)) return;
    if (launch_linear_simt(input, weight, bias, out, relu)) return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "torchext::linear_cuda", [&] {
    const LinearProblem<scalar_t> p = linear_problem<scalar_t>(input, weight, bias, out, relu);
    const dim3 grid(static_cast<unsigned>((M + kTile - 1) / kTile),
                    static_cast<unsigned>(std::min<int64_t>((N + kTile - 1) / kTile, kMaxGridY)));
    TORCHEXT_LAUNCH(linear_simt_kernel<scalar_t>, grid, kThreadsSimt, 0, at::cuda::getCurrentCUDAStream(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor linear_cuda_impl(const char* op, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias_opt, bool relu) {
  check_linear_args(op, input, weight, bias_opt);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty({input.size(0), weight.size(0)}, input.options());
  linear_cuda_into(op, input, weight, bias_opt, out, relu);
  return out;
}

at::Tensor linear_batched_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, bool relu) {
  check_linear_batched_args("linear_batched", input, weight, bias);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t entries = input.size(0);
  at::Tensor out = at::empty({entries, input.size(1), weight.size(1)}, input.options());
  if (entries == 0) return out;
  // Every entry has entry 0's shapes, dtypes and device.
  check_linear_args("linear_batched", input.select(0, 0), weight.select(0, 0), batched_bias_entry(bias, 0));
  for (int64_t e = 0; e < entries; ++e)  // one GEMM launch per entry, all on the current stream
    linear_cuda_into("linear_batched", input.select(0, e), weight.select(0, e), batched_bias_entry(bias, e),
                     out.select(0, e), relu);
  return out;
}

at::Tensor linear_cuda(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  return linear_cuda_impl("linear", input, weight, bias, false);
}

at::Tensor linear_relu_cuda(const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias) {
  return linear_cuda_impl("linear_relu", input, weight, bias, true);
}

at::Tensor linear_bias_grad_cuda(const at::Tensor& grad_output) {
  check_grad_args("linear_bias_grad", grad_output, nullptr);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor g = grad_output.contiguous();
  at::Tensor sums = at::empty({g.size(1)}, g.options());
  launch_column_sums(g, nullptr, nullptr, sums);
  return sums;
}

std::tuple<at::Tensor, at::Tensor> linear_relu_grad_cuda(const at::Tensor& grad_output, const at::Tensor& result) {
  check_grad_args("linear_relu_grad", grad_output, &result);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor r = result.contiguous();
  at::Tensor masked = at::empty_like(g, at::MemoryFormat::Contiguous);
  at::Tensor sums = at::empty({g.size(1)}, g.options());
  launch_column_sums(g, &r, &masked, sums);
  return {masked, sums};
}

}  // namespace
}  // namespace cuda
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, TORCHEXT_DEVICE_KEY, m) {
  m.impl("linear", &torchext::cuda::linear_cuda);
  m.impl("linear_relu", &torchext::cuda::linear_relu_cuda);
  m.impl("linear_bias_grad", &torchext::cuda::linear_bias_grad_cuda);
  m.impl("linear_relu_grad", &torchext::cuda::linear_relu_grad_cuda);
  m.impl("linear_batched", &torchext::cuda::linear_batched_cuda);
}
