// The GEMMs behind Linear on CUDA: C[M, N] = A[M, K] * B[N, K]^T (+ bias) (ReLU), A the input and B
// the weight, each read with either its K or its M/N dimension contiguous, so that the three GEMMs
// of a Linear (Y = X W^T, dX = dY W, dW = dY^T X) all read their operands as they lie in memory.
//
// This header is host code: the tile tables (one place that both the kernel instantiations and
// the dispatch read), the operand description a launch takes, and the launchers, which the
// instantiation files (gemm_tc_*.cu, gemm_simt.cu, gemm_wgmma.cu) define and linear_gemm.cu calls.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace at {
class Tensor;
}

namespace torchext {
namespace cuda {

// Which dimension of an operand is contiguous (stride 1): K (row-major input, row-major weight), or
// M for A / N for B (the transposed views the backward pass hands over: dY^T, W^T, X^T).
enum class Major : int { kK = 0, kMN = 1 };

// Tensor-core (mma.sync) tiles: BM x BN outputs per CTA, K walked in slices of KC 16-byte chunks
// per row (32 elements of a 16-bit type, 16 of float), STAGES slices in flight, WARPS_M x WARPS_N
// warps each owning a (BM / WARPS_M) x (BN / WARPS_N) warp tile, MIN_CTAS the occupancy the
// register budget is set for (__launch_bounds__). X(index, BM, BN, KC, WARPS_M, WARPS_N, STAGES, MIN_CTAS).
//  0: large problems; 64 x 64 warp tiles (32 FLOP per shared-memory byte), 72 KiB of shared memory.
//  1: the same warp tiles, half the CTA, for problems that 0 would leave short of a wave.
//  2: narrow problems (32 x 32 warp tiles), many CTAs per SM.
//  3: M <= 16 (inference on a few rows): the weight streams through once, 16 rows of A beside it.
#define TORCHEXT_TC_TILES(X)        \
  X(0, 128, 256, 4, 2, 4, 3, 1)     \
  X(1, 128, 128, 4, 2, 2, 4, 2)     \
  X(2, 64, 64, 4, 2, 2, 4, 4)       \
  X(3, 16, 128, 4, 1, 4, 6, 4)

struct TcTile {
  int bm, bn, kc, warps_m, warps_n, stages, min_ctas;
  constexpr int threads() const { return 32 * warps_m * warps_n; }
  // Bytes of dynamic shared memory: the ring of A and B slices (the epilogue reuses it).
  constexpr int smem_bytes() const { return stages * (bm + bn) * kc * 16; }
};

#define TORCHEXT_TC_TILE_ENTRY(i, bm, bn, kc, wm, wn, st, occ) TcTile{bm, bn, kc, wm, wn, st, occ},
constexpr TcTile kTcTiles[] = {TORCHEXT_TC_TILES(TORCHEXT_TC_TILE_ENTRY)};
#undef TORCHEXT_TC_TILE_ENTRY
constexpr int kNumTcTiles = sizeof(kTcTiles) / sizeof(kTcTiles[0]);

// Every tile must fit sm_80's opt-in shared memory per block (163 KiB); the Hopper GEMM
// (gemm_wgmma.cuh) is the only kernel sized for sm_90's 227 KiB.
constexpr bool tc_tiles_fit_sm80() {
  for (const TcTile& t : kTcTiles) {
    if (t.smem_bytes() > 166912) return false;
  }
  return true;
}
static_assert(tc_tiles_fit_sm80(), "a tensor-core tile needs more shared memory than sm_80 has");

// One GEMM launch. a, b: the operands, 16-byte aligned, with lda / ldb (elements, multiples of 16
// bytes) the stride of their non-contiguous dimension. c: the row-major [M, N] output; with
// splits > 1, `partial` ([splits, M, N] float) takes each K-slice's sums instead, and bias / ReLU
// wait for the reduction (gemm_reduce_splits).
struct GemmArgs {
  const void* a;
  const void* b;
  void* c;
  float* partial;
  const void* bias;  // [N] with stride sbias, of the operand type, or null
  int64_t lda, ldb, sbias;
  int64_t M, N, K;
  int64_t k_per_split;  // a multiple of the tile's K slice
  int splits;
  bool relu;
};

// dtype of the 16-bit and float operands, for the launchers below.
enum class TcType : int { kHalf = 0, kBFloat16 = 1, kTf32 = 2 };

// One launcher per operand type, each in its own instantiation file (gemm_tc_f16.cu, gemm_tc_bf16.cu,
// gemm_tc_tf32.cu) so that nvcc compiles them in parallel; linear_gemm.cu picks one.
// TF32 takes K-major operands only (ldmatrix .trans moves 16-bit elements); the 16-bit types take
// (K, K), (K, MN) and (MN, MN). linear_gemm.cu copies operands in other layouts.
void launch_gemm_tc_f16(int tile, Major a_major, Major b_major, const GemmArgs& args, cudaStream_t stream);
void launch_gemm_tc_bf16(int tile, Major a_major, Major b_major, const GemmArgs& args, cudaStream_t stream);
void launch_gemm_tc_tf32(int tile, Major a_major, Major b_major, const GemmArgs& args, cudaStream_t stream);

// The SIMT GEMM's CTA tile (outputs per side), K slice and threads (gemm_simt.cuh).
constexpr int kSimtTile = 128, kSimtSlice = 8, kSimtThreads = 256;

// The SIMT GEMM (gemm_simt.cu) for float (is_double false; splits allowed) and double (one split),
// any operand layout; operands must be 16-byte aligned with lda / ldb whole 16-byte vectors.
void launch_gemm_simt(bool is_double, Major a_major, Major b_major, const GemmArgs& args, cudaStream_t stream);

// The Hopper GEMM (gemm_wgmma.cu, sm_90a: TMA + wgmma, warp-specialized, persistent) for float16 and
// bfloat16, any of the four layouts; CTA tiles of kWgmmaTileM x kWgmmaTileN, K steps of kWgmmaSlice.
// wgmma_code_loaded: whether the code this build has for the current device is sm_90a (asked once
// per device, by a launch and a sync, with a flag allocated like `like`, a tensor on that device).
constexpr int kWgmmaTileM = 128, kWgmmaTileN = 256, kWgmmaSlice = 64;
void launch_gemm_wgmma(TcType type, Major a_major, Major b_major, const GemmArgs& args, cudaStream_t stream);
bool wgmma_code_loaded(const at::Tensor& like);

// The split-K reduction: C = sum over splits of partial (in split order), then bias and ReLU.
void launch_gemm_reduce_splits(TcType type, const GemmArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace torchext
