// Shared pieces of the CUDA Linear kernels: the problem description, the strided tile loader and
// the fused bias/ReLU epilogue. The SIMT GEMM and the grad helpers live in linear.cu, the
// tensor-core GEMM in linear_tc.cu (its own file so nvcc builds the heavy templates separately).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace torchext {
namespace cuda {

// out[M, N] = A[M, K] @ B[N, K]^T (+ bias) (ReLU). A and B are read through their strides, so the
// transposed views the backward pass produces (W.t(), dY.t(), X.t()) need no copy; the tile
// loader picks, per operand, the thread order that walks the unit-stride dimension.
template <typename T>
struct LinearProblem {
  const T* a;
  int64_t sam, sak;
  const T* b;
  int64_t sbn, sbk;
  const T* bias;  // null when absent
  int64_t sbias;
  T* c;  // row-major, ld = N
  int64_t M, N, K;
  bool relu;
};

// Fills a ROWS x COLS tile (rows index M or N, cols index K) of a strided operand with zero
// padding outside [0, nrows) x [0, K); stored as smem[r * LD + k]. Global reads coalesce along k
// when that stride is 1 and along rows otherwise.
template <typename T, int ROWS, int COLS, int LD, int THREADS>
__device__ __forceinline__ void load_tile(T* smem, const T* base, int64_t s_row, int64_t s_k, int64_t row0,
                                          int64_t nrows, int64_t k0, int64_t K) {
  const bool k_fast = s_k == 1;
#pragma unroll 4
  for (int idx = threadIdx.x; idx < ROWS * COLS; idx += THREADS) {
    const int r = k_fast ? idx / COLS : idx % ROWS;
    const int k = k_fast ? idx % COLS : idx / ROWS;
    const int64_t gr = row0 + r, gk = k0 + k;
    T v = T(0);
    if (gr < nrows && gk < K) v = base[gr * s_row + gk * s_k];
    smem[r * LD + k] = v;
  }
}

template <typename T, typename Acc>
__device__ __forceinline__ void store_output(const LinearProblem<T>& p, int64_t i, int64_t j, Acc v) {
  if (i < p.M && j < p.N) {
    if (p.bias) v += static_cast<Acc>(p.bias[j * p.sbias]);
    if (p.relu) v = v < Acc(0) ? Acc(0) : v;  // NaN passes through, as in torch.relu
    p.c[i * p.N + j] = static_cast<T>(v);
  }
}

// Tensor-core GEMM (linear_tc.cu): half/bfloat16 with float accumulation, and float through TF32.
// Returns false when the dtype has no tensor-core path (the caller then uses the SIMT kernel).
bool launch_linear_tensor_core(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                               at::Tensor& out, bool relu);

}  // namespace cuda
}  // namespace torchext
