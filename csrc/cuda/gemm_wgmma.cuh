// Hopper GEMM (sm_90a): C[M, N] = A[M, K] * B[N, K]^T (+ bias) (ReLU) for 16-bit operands, with the
// tensor memory accelerator loading tiles and wgmma multiplying them. gemm_wgmma.cu instantiates
// it; linear_gemm.cu chooses it (see gemm.h for the operands and layouts).
//
// One CTA per SM (persistent), three warpgroups:
//   - warpgroup 0, the producer, gives most of its registers up (setmaxnreg) and from one thread
//     issues the bulk tensor copies of each K slice (64 elements: one 128-byte swizzled row per
//     tile row) into a ring of kStages slots, each slot completing as bytes on its "full" mbarrier;
//   - warpgroups 1 and 2, the consumers, each own 64 rows of the 128 x 256 tile: they wait on a
//     slot's full barrier, issue four wgmma.m64n256k16 from shared-memory descriptors (the operands
//     stay in shared memory; M/N-major operands through the transpose bits), keep one group in
//     flight, and give the previous slot back on its "empty" barrier;
//   - tiles are taken in a grouped order (8 M tiles wide) that keeps the B tiles neighbours share in
//     L2; the consumers' epilogue (float bias, ReLU, cast, stores) runs while the producer already
//     loads the next tile's slices.
// Per CTA and slice: (128 + 256) x 64 x 2 = 48 KiB in, 2 x 128 x 256 x 64 = 4.2 MFLOP; the
// operands are read by the tensor cores from shared memory once per wgmma (no register copies).
// M/N-major operands (the backward pass's W^T, dY^T, X^T) are read as 64-wide boxes of their
// contiguous dimension, one box per 64 rows of the tile.
#pragma once

#include <cstdint>

#include "cuda/gemm.h"
#include "cuda/hooks.cuh"
#include "cuda/ptx_sm90.cuh"
#include "cuda/tma.h"

namespace torchext {
namespace cuda {
namespace wg {

constexpr int kBM = kWgmmaTileM, kBN = kWgmmaTileN, kBK = kWgmmaSlice, kStages = 4;
constexpr int kThreads = 384;                       // producer + 2 consumer warpgroups
constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2;
constexpr int kStageBytes = kABytes + kBBytes;      // 48 KiB
constexpr int kSmemBytes = kStages * kStageBytes + 1024 /* barriers, and 1024-byte alignment */;
constexpr int kBox = 64;                            // elements of a box's contiguous dimension (128 B)
static_assert(kBBytes % 1024 == 0 && kABytes % 1024 == 0, "slots of whole 1024-byte swizzle atoms");
static_assert(kSmemBytes <= 232448, "over sm_90's 227 KiB of shared memory per block");

// Where the operands of one launch come from: two tensor maps (by value, __grid_constant__) and
// the layout of each, plus the GemmArgs of gemm.h for the sizes, the output and the epilogue.
struct WgmmaArgs {
  GemmArgs g;
  Major a_major, b_major;
  int64_t tiles_m, tiles_n;
};

// The operand of one slot as the producer fills it and the consumers read it.
//  K-major (rows of the tile along M or N): one box of kBox K elements x ROWS rows: row r's 128
//    bytes at r * 128, 16-byte chunks XOR-swizzled by r % 8, 8-row atoms of 1024 bytes.
//  M/N-major: ROWS / 64 boxes of 64 M/N elements x kBK K rows, each 8 KiB: k row r of box b at
//    b * 8192 + r * 128, the same swizzle.
template <Major MJ, int ROWS>
struct Operand {
  static constexpr int kBoxes = MJ == Major::kK ? 1 : ROWS / kBox;
  static constexpr uint32_t kBoxBytes = MJ == Major::kK ? ROWS * 128 : kBK * 128;

  // Issues this slot's copies of the tile rows [row0, row0 + ROWS) and K [k0, k0 + kBK).
  static __device__ __forceinline__ void load(unsigned char* slot, const TmaMap* map, int64_t row0, int64_t k0,
                                              uint64_t* bar) {
#pragma unroll
    for (int b = 0; b < kBoxes; ++b) {
      // Coordinates: (contiguous dimension, the other).
      if (MJ == Major::kK) {
        ptx::tma_load_2d(slot, map, static_cast<int>(k0), static_cast<int>(row0), bar);
      } else {
        ptx::tma_load_2d(slot + b * kBoxBytes, map, static_cast<int>(row0 + b * kBox), static_cast<int>(k0), bar);
      }
    }
  }

  // The descriptor of rows [row0, row0 + rows_used) (row0 a multiple of 64) at k step ks (16
  // elements). K-major: 8-row atoms 1024 bytes apart (the stride byte offset); a k step is 32
  // bytes further along the swizzled rows; the leading byte offset is unused (the 16 K elements lie
  // within one swizzled row). M/N-major: 64-element chunks of the contiguous dimension one box
  // (8 KiB) apart (the leading byte offset), 8-k-row atoms 1024 bytes apart (the stride byte
  // offset); a k step is two atoms further.
  static __device__ __forceinline__ uint64_t desc(const unsigned char* slot, int row0, int ks) {
    if (MJ == Major::kK) {
      return ptx::smem_desc(slot + row0 * 128 + ks * 32, 16, 1024, ptx::Swizzle::k128B);
    }
    return ptx::smem_desc(slot + (row0 / kBox) * kBoxBytes + ks * 2048, kBoxBytes, 1024, ptx::Swizzle::k128B);
  }
};

template <typename T, Major AM, Major BMJ>
struct Kernel {
  using OpA = Operand<AM, kBM>;
  using OpB = Operand<BMJ, kBN>;

  static __device__ __forceinline__ void mma(float (&d)[128], uint64_t da, uint64_t db, int accumulate) {
    constexpr int ta = AM == Major::kK ? 0 : 1, tb = BMJ == Major::kK ? 0 : 1;
    if constexpr (sizeof(T) == 2 && std::is_same<T, at::BFloat16>::value) {
      ptx::wgmma_m64n256k16_bf16<ta, tb>(d, da, db, accumulate);
    } else {
      ptx::wgmma_m64n256k16_f16<ta, tb>(d, da, db, accumulate);
    }
  }

  // Tile t of this split (blockIdx.y) in the grouped order.
  static __device__ __forceinline__ void tile_origin(const WgmmaArgs& p, int64_t t, int64_t& m0, int64_t& n0) {
    constexpr int64_t kGroup = 8;
    const int64_t group = t / (kGroup * p.tiles_n);
    const int64_t first_m = group * kGroup;
    const int64_t group_m = p.tiles_m - first_m < kGroup ? p.tiles_m - first_m : kGroup;
    m0 = (first_m + (t % (kGroup * p.tiles_n)) % group_m) * kBM;
    n0 = ((t % (kGroup * p.tiles_n)) / group_m) * kBN;
  }

  static __device__ __forceinline__ void run(const WgmmaArgs& p, const TmaMap* map_a, const TmaMap* map_b) {
    TORCHEXT_DYNAMIC_SMEM(smem_raw);
    // The slots start on a 1024-byte boundary (the 128-byte swizzle's atom), the barriers after them.
    unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
    uint64_t* empty = full + kStages;
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
    if (threadIdx.x == 0) {
      for (int s = 0; s < kStages; ++s) {
        ptx::mbarrier_init(&full[s], 1);   // the producer's arrive.expect_tx, then the copies' bytes
        ptx::mbarrier_init(&empty[s], 2);  // one arrival per consumer warpgroup
      }
      ptx::fence_barrier_init();
    }
    __syncthreads();

    const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * p.g.k_per_split;
    const int64_t k_end = k_begin + p.g.k_per_split < p.g.K ? k_begin + p.g.k_per_split : p.g.K;
    const int slices = static_cast<int>((k_end - k_begin + kBK - 1) / kBK);
    const int64_t tiles = p.tiles_m * p.tiles_n;

    if (wg == 0) {  // ---------------------------------------------------------------- producer
      ptx::setmaxnreg_dec<40>();
      if (t == 0) {
        int it = 0;  // slices issued so far, over all tiles: slot it % kStages, its use it / kStages
        for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
          int64_t m0, n0;
          tile_origin(p, tile, m0, n0);
          for (int kt = 0; kt < slices; ++kt, ++it) {
            const int s = it % kStages;
            // The slot's previous use must be given back; a fresh barrier's "previous phase"
            // (parity 1) counts as complete, so the first kStages waits pass at once.
            ptx::mbarrier_wait_parity(&empty[s], ((it / kStages) & 1) ^ 1);
            unsigned char* slot = smem + s * kStageBytes;
            ptx::mbarrier_arrive_expect_tx(&full[s], kStageBytes);
            const int64_t k0 = k_begin + static_cast<int64_t>(kt) * kBK;
            OpA::load(slot, map_a, m0, k0, &full[s]);
            OpB::load(slot + kABytes, map_b, n0, k0, &full[s]);
          }
        }
      }
      return;
    }
    // ------------------------------------------------------------------------------ consumers
    ptx::setmaxnreg_inc<232>();
    const int row0 = (wg - 1) * 64;  // this warpgroup's rows of the tile
    int it = 0;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      int64_t m0, n0;
      tile_origin(p, tile, m0, n0);
      float d[128];
#pragma unroll
      for (int i = 0; i < 128; ++i) d[i] = 0.f;
      for (int kt = 0; kt < slices; ++kt, ++it) {
        const int s = it % kStages;
        ptx::mbarrier_wait_parity(&full[s], (it / kStages) & 1);
        const unsigned char* slot = smem + s * kStageBytes;
        ptx::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kBK / 16; ++ks) {
          mma(d, OpA::desc(slot, row0, ks), OpB::desc(slot + kABytes, 0, ks), kt > 0 || ks > 0);
        }
        ptx::wgmma_commit();
        // One group stays in flight: the previous slice's is done, so its slot goes back.
        ptx::wgmma_wait<1>();
        if (kt > 0 && t == 0) ptx::mbarrier_arrive(&empty[(it - 1) % kStages]);
      }
      ptx::wgmma_wait<0>();
      if (slices > 0 && t == 0) ptx::mbarrier_arrive(&empty[(it - 1) % kStages]);
      epilogue(p.g, d, m0 + row0, n0, t);
    }
  }

  // d[4 j + i] of thread t (of its warpgroup) is the output (row0 + 16 (t / 32) + (t % 32) / 4 +
  // 8 (i / 2), col0 + 8 j + 2 (t % 4) + i % 2).
  static __device__ __forceinline__ void epilogue(const GemmArgs& p, const float (&d)[128], int64_t row0,
                                                  int64_t col0, int t) {
    const int lane = t % 32;
    const int64_t r_lo = row0 + 16 * (t / 32) + lane / 4;
    if (p.splits > 1) {
      float* out = p.partial + static_cast<int64_t>(blockIdx.y) * p.M * p.N;
#pragma unroll
      for (int j = 0; j < 32; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t r = r_lo + 8 * (i / 2), c = col0 + 8 * j + 2 * (lane % 4) + i % 2;
          if (r < p.M && c < p.N) out[r * p.N + c] = d[4 * j + i];
        }
      return;
    }
    T* out = static_cast<T*>(p.c);
    const T* bias = static_cast<const T*>(p.bias);
    const bool pairs = p.N % 2 == 0;  // two adjacent outputs as one 4-byte store
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int64_t c = col0 + 8 * j + 2 * (lane % 4);
      const float b0 = bias && c < p.N ? static_cast<float>(bias[c * p.sbias]) : 0.f;
      const float b1 = bias && c + 1 < p.N ? static_cast<float>(bias[(c + 1) * p.sbias]) : 0.f;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = r_lo + 8 * h;
        if (r >= p.M || c >= p.N) continue;
        float v0 = d[4 * j + 2 * h] + b0, v1 = d[4 * j + 2 * h + 1] + b1;
        if (p.relu) {
          v0 = v0 < 0.f ? 0.f : v0;  // NaN passes through, as in torch.relu
          v1 = v1 < 0.f ? 0.f : v1;
        }
        T* at = out + r * p.N + c;
        if (pairs && c + 1 < p.N) {
          const T two[2] = {static_cast<T>(v0), static_cast<T>(v1)};
          *reinterpret_cast<uint32_t*>(at) = *reinterpret_cast<const uint32_t*>(two);
        } else {
          at[0] = static_cast<T>(v0);
          if (c + 1 < p.N) at[1] = static_cast<T>(v1);
        }
      }
    }
  }
};

template <typename T, Major AM, Major BMJ>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_wgmma_kernel(const __grid_constant__ WgmmaArgs p, const __grid_constant__ TmaMap map_a,
                      const __grid_constant__ TmaMap map_b) {
#if TORCHEXT_SM90A_CODE
  Kernel<T, AM, BMJ>::run(p, &map_a, &map_b);
#else
  __trap();  // launched only where sm_90a code was loaded (linear_gemm.cu probes it)
#endif
}

// 1 where this build's code for the current device is sm_90a (wgmma, setmaxnreg).
__global__ void sm90a_probe_kernel(int* out) { *out = TORCHEXT_SM90A_CODE; }

}  // namespace wg
}  // namespace cuda
}  // namespace torchext
