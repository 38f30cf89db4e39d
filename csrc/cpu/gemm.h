// The CPU GEMM behind Linear: out[M, N] = A[M, K] @ B[N, K]^T (+ bias) (ReLU) for one
// LinearProblem, and the integer Linear. linear.cpp calls these; the building blocks sit beside
// this header, one concept per file:
//   gemm_tile.h        packing operands into panels, storing a register tile (the packed kernels')
//   gemm.cpp           the blocked, packed GEMM: blocking, buffers, per-SIMD-level kernels
//   gemm_bf16.cpp      bfloat16 through VDPBF16PS pairs (AVX512_BF16)
//   gemm_few_rows.cpp  a few rows without packing (dot products, row updates)
//   gemm_int.cpp       integer types, wrapping around as torch's do
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "cpu/dispatch.h"
#include "linear_problem.h"

namespace torchext {
namespace cpu {

// The register tile of the packed GEMM per SIMD level: VB bytes per vector, MR rows x 2 vectors of
// accumulators, so NR = 2 * VB / sizeof(accumulator) output columns. The one table that both the
// kernel instantiations (gemm.cpp) and the blocking sizing the packing buffers read: the tile
// depends on the register file, AVX-512 having 32 64-byte registers (12 x 2 accumulators), AVX2 and
// SSE/NEON 16 (6 x 2 accumulators). Indexed by Level.
struct Tile {
  int vb, mr;
};
constexpr Tile kTiles[] = {
    /* Level::Default */ {16, 6},
    /* Level::AVX2 */ {32, 6},
    /* Level::AVX512 */ {64, 12},
};
constexpr Tile tile_of(Level l) { return kTiles[static_cast<int>(l)]; }
inline Tile tile_for_level() { return tile_of(level()); }

// Runs g: the few-rows kernels when they suit it, else the packed GEMM. T: float, double,
// c10::Half, c10::BFloat16.
template <typename T>
void run_gemm(const LinearProblem<T>& g);

// g through the few-rows kernels (gemm_few_rows.cpp); false, doing nothing, when its shape or
// layout does not suit them.
template <typename T>
bool run_small_rows(const LinearProblem<T>& g);

// out ([M, N], unit column stride) = input [M, K] @ weight [N, K]^T (+ bias) (ReLU) for an integer
// T (the types of AT_DISPATCH_INTEGRAL_TYPES), wrapping around in T.
template <typename T>
void integer_linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out,
                    bool relu);

}  // namespace cpu
}  // namespace torchext
