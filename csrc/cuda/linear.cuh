// Pieces of the strided CUDA Linear kernel in linear.cu (the problem itself is linear_problem.h): the
// strided tile loader and the fused bias/ReLU epilogue; and the GEMM launchers of linear_gemm.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "cuda/hooks.cuh"
#include "cuda/vectorized.cuh"
#include "linear_problem.h"

namespace torchext {
namespace cuda {

// CUDA's limit on gridDim.y, where the strided GEMM puts its column tiles (a block then takes
// several); a hook, so that the emulation can shrink it and run that loop at test sizes.
constexpr int64_t kMaxGridY = TORCHEXT_MAX_GRID_Y;

// Fills a ROWS x COLS tile (rows index M or N, cols index K) of a strided operand with zero
// padding outside [0, nrows) x [0, K); stored as smem[r * LD + k]. Global reads coalesce along k
// when that stride is 1 (16-byte vector loads when rows are 16-byte aligned) and along rows
// otherwise.
template <typename T, int ROWS, int COLS, int LD, int THREADS>
__device__ __forceinline__ void load_tile(T* smem, const T* base, int64_t s_row, int64_t s_k, int64_t row0,
                                          int64_t nrows, int64_t k0, int64_t K) {
  constexpr int V = Vec16<T>::kSize;
  static_assert(COLS % V == 0, "a tile row must hold whole 16-byte vectors");
  const bool k_fast = s_k == 1;
  if (k_fast && aligned16(base) && s_row % V == 0) {
    // k0 is a multiple of COLS, so every vector starts 16-byte aligned.
#pragma unroll 2
    for (int idx = threadIdx.x; idx < ROWS * COLS / V; idx += THREADS) {
      const int r = idx / (COLS / V);
      const int k = (idx % (COLS / V)) * V;
      const int64_t gr = row0 + r, gk = k0 + k;
      T* dst = smem + r * LD + k;
      if (gr < nrows && gk + V <= K) {
        const Vec16<T> v = load16(base + gr * s_row + gk);
#pragma unroll
        for (int e = 0; e < V; ++e) dst[e] = v.v[e];
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) dst[e] = (gr < nrows && gk + e < K) ? base[gr * s_row + gk + e] : T(0);
      }
    }
    return;
  }
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

// The GEMMs of linear_gemm.cu. Tensor cores (sm_80+): half/bfloat16 with float accumulation, and
// float through TF32 when allowed; the SIMT GEMM: float and double. Each returns false when the
// dtype (or device) is not its own, and the caller tries the next.
bool launch_linear_tensor_core(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                               at::Tensor& out, bool relu);
bool launch_linear_simt(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out,
                        bool relu);

}  // namespace cuda
}  // namespace torchext
