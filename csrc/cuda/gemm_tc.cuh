// Tensor-core GEMM for sm_80 and newer (Hopper runs it too): C[M, N] = A[M, K] * B[N, K]^T with
// float accumulators, the epilogue (bias, ReLU, the output cast) in registers. See gemm.h for the
// operands and the tile table; gemm_tc_{f16,bf16,tf32}.cu instantiate it.
//
// Per CTA (tile BM x BN, K slices of KC 16-byte chunks per row, i.e. BK = 32 elements of a 16-bit
// type or 16 floats):
//   - a STAGES-deep ring of slices in shared memory, filled by cp.async.cg (16-byte copies straight
//     from global memory, zero-filling rows and columns past M, N and K), so the copies of slice
//     k + STAGES - 1 are in flight while the warps multiply slice k;
//   - each slice is stored as it lies in memory (K-major rows, or M/N-major rows of the transposed
//     operands), its 16-byte chunks XOR-swizzled within each group of eight 16-byte bank slots so
//     that the eight rows one ldmatrix phase reads fall in eight different slots;
//   - warps read their fragments with ldmatrix.x4 (K-major) or ldmatrix.x4.trans (M/N-major) and
//     multiply with mma.sync m16n8k16 (f16, bf16) or m16n8k8 (tf32, rounded with cvt.rna once per
//     fragment load: cp.async moves the bits untouched, so there is no earlier point to round);
//   - neighbouring CTAs take neighbouring N tiles of a group of 8 M tiles, so the weight tiles they
//     share stay in L2.
// Per CTA and slice: (BM + BN) * BK elements in, 2 * BM * BN * BK FLOPs; per warp tile of 64 x 64,
// 16 KiB of fragments per 256 KFLOP read from shared memory (32 FLOP per byte).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/gemm.h"
#include "cuda/hooks.cuh"
#include "cuda/ptx.cuh"

namespace torchext {
namespace cuda {
namespace tc {

// The register form of an element type: how its fragments are multiplied.
template <typename T>
struct Mma;
template <>
struct Mma<at::Half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ptx::mma_m16n8k16_f16(d, a, b);
  }
  static __device__ __forceinline__ void round(uint32_t (&)[4]) {}
  static __device__ __forceinline__ void round(uint32_t (&)[2]) {}
};
template <>
struct Mma<at::BFloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ptx::mma_m16n8k16_bf16(d, a, b);
  }
  static __device__ __forceinline__ void round(uint32_t (&)[4]) {}
  static __device__ __forceinline__ void round(uint32_t (&)[2]) {}
};
template <>
struct Mma<float> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ptx::mma_m16n8k8_tf32(d, a, b);
  }
  template <int N>
  static __device__ __forceinline__ void round(uint32_t (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) r[i] = ptx::cvt_tf32(__uint_as_float(r[i]));
  }
};

// A slice of one operand in shared memory: ROWS rows of CPR 16-byte chunks, chunk c of row r at
// r * CPR + (c ^ swizzle(r)). The eight rows one ldmatrix phase reads (same logical chunk) land in
// eight different 16-byte bank slots: rows of 64 bytes pair up within a 128-byte line, so the XOR
// takes (r / 2) % 4; rows of 128 bytes or more take r % 8; rows of 32 bytes (r / 4) % 2.
template <int CPR>
struct Swizzle {
  static constexpr int kRowsPerLine = CPR >= 8 ? 1 : 8 / CPR;
  static constexpr int kSpan = CPR >= 8 ? 8 : CPR;
  static __device__ __forceinline__ int at(int r, int c) { return r * CPR + (c ^ ((r / kRowsPerLine) % kSpan)); }
};

template <typename T, int BM, int BN, int KC, int WARPS_M, int WARPS_N, int STAGES, Major AM, Major BMJ>
struct Kernel {
  static constexpr int kE = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  static constexpr int kBK = KC * kE;                           // K elements per slice
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kWM = BM / WARPS_M, kWN = BN / WARPS_N;  // warp tile
  static constexpr int kMI = kWM / 16, kNI = kWN / 8;           // mma tiles per warp tile
  static constexpr int kChunksA = BM * KC, kChunksB = BN * KC;  // per slice
  static constexpr int kStageChunks = kChunksA + kChunksB;
  // A slice as stored: K-major: BM rows of KC chunks; M-major: BK rows (k) of BM / kE chunks.
  static constexpr int kCprA = AM == Major::kK ? KC : BM / kE;
  static constexpr int kCprB = BMJ == Major::kK ? KC : BN / kE;
  using SwA = Swizzle<kCprA>;
  using SwB = Swizzle<kCprB>;
  static_assert(kWM % 16 == 0 && kWN % 16 == 0 && KC % 2 == 0, "warp tiles of whole x4 fragment loads");
  static_assert(AM == Major::kK || BM % (8 * kE) == 0 || BM / kE == 2, "M-major slices of whole swizzle groups");
  static_assert(sizeof(T) == 2 || (AM == Major::kK && BMJ == Major::kK), "tf32 takes K-major operands only");

  // The 16-byte chunks of one operand this thread copies per slice, set up once per CTA: where each
  // comes from (advanced one slice per copy), where it goes in a ring slot, and what bounds it has.
  // A K-major chunk lies in a fixed row (valid or not) and moves along K; an M/N-major one lies in
  // fixed columns (partly past M or N at the edge) and moves down K's rows. Per slice that leaves a
  // pointer bump and one comparison per chunk, next to the slice's 64 mma per warp.
  template <Major MJ, int ROWS, int CPR>
  struct Loader {
    static constexpr int kChunks = ROWS * CPR;
    static constexpr int kPerThread = (kChunks + kThreads - 1) / kThreads;
    const T* src[kPerThread];
    int dst[kPerThread];   // chunk index within the operand's part of a slot
    int64_t pos[kPerThread];  // K-major: the chunk's K column; M/N-major: its k row
    int bytes[kPerThread];    // K-major: 16 or 0 (row past the edge); M/N-major: bytes before the edge
    int64_t step;             // elements a slice advances the source by

    __device__ __forceinline__ void init(const T* base, int64_t ld, int64_t outer0, int64_t outer_size, int64_t k0) {
      step = MJ == Major::kK ? kBK : kBK * ld;
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int q = threadIdx.x + i * kThreads;
        const int r = q / CPR, c = q % CPR;
        dst[i] = Swizzle<CPR>::at(r, c);
        if (MJ == Major::kK) {
          const bool in = q < kChunks && outer0 + r < outer_size;
          pos[i] = k0 + c * kE;
          bytes[i] = in ? 16 : 0;
          src[i] = in ? base + (outer0 + r) * ld + pos[i] : base;
        } else {
          const int64_t left = (outer_size - (outer0 + c * kE)) * static_cast<int64_t>(sizeof(T));
          pos[i] = k0 + r;
          bytes[i] = q >= kChunks || left <= 0 ? 0 : (left >= 16 ? 16 : static_cast<int>(left));
          src[i] = bytes[i] ? base + pos[i] * ld + outer0 + c * kE : base;
        }
      }
    }

    // Issues this thread's copies of the current slice into `slot` (the operand's part of a ring
    // slot), then moves on to the next slice. k_end: the end of this split's K range.
    __device__ __forceinline__ void issue(uint4* slot, int64_t k_end) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        if (kChunks % kThreads != 0 && threadIdx.x + i * kThreads >= kChunks) break;
        int n;
        if (MJ == Major::kK) {  // the chunk's K columns [pos, pos + kE) against k_end
          const int64_t left = (k_end - pos[i]) * static_cast<int64_t>(sizeof(T));
          n = left <= 0 ? 0 : (left >= bytes[i] ? bytes[i] : static_cast<int>(left));
        } else {
          n = pos[i] < k_end ? bytes[i] : 0;
        }
        ptx::cp_async_16(slot + dst[i], src[i], n);
        src[i] += step;
        pos[i] += kBK;
      }
    }
  };
  using LoaderA = Loader<AM, AM == Major::kK ? BM : kBK, kCprA>;
  using LoaderB = Loader<BMJ, BMJ == Major::kK ? BN : kBK, kCprB>;

  // The fragments of k-step ks (two chunks of K) of one slice, for this warp's tile.
  static __device__ __forceinline__ void load_fragments(const uint4* sa, const uint4* sb, int ks, int wm0, int wn0,
                                                        uint32_t (&af)[kMI][4], uint32_t (&bf)[kNI][2]) {
    const int lane = threadIdx.x % 32, j = lane / 8, i = lane % 8;
#pragma unroll
    for (int mi = 0; mi < kMI; ++mi) {
      // Matrices j = 0..3 of the x4 load are a0..a3: (rows 0-7, k 0-7), (rows 8-15, k 0-7),
      // (rows 0-7, k 8-15), (rows 8-15, k 8-15) of the 16 x 16 A fragment (k counted in 16-bit
      // elements; in floats for tf32, whose k8 fragment spans the same two chunks).
      if (AM == Major::kK) {
        ptx::ldmatrix_x4(af[mi], sa + SwA::at(wm0 + mi * 16 + i + 8 * (j & 1), 2 * ks + (j >> 1)));
      } else {  // rows are k; .trans turns each 8 x 8 block back into the row-major fragment
        ptx::ldmatrix_x4_trans(af[mi], sa + SwA::at(2 * ks * kE + i + 8 * (j >> 1), (wm0 + mi * 16) / kE + (j & 1)));
      }
      Mma<T>::round(af[mi]);
    }
#pragma unroll
    for (int nj = 0; nj < kNI / 2; ++nj) {
      // Two n8 tiles per x4 load: matrices 0, 1 are b0, b1 of tile 2 nj (k 0-7, k 8-15), 2, 3 those
      // of tile 2 nj + 1.
      uint32_t r[4];
      if (BMJ == Major::kK) {
        ptx::ldmatrix_x4(r, sb + SwB::at(wn0 + nj * 16 + i + 8 * (j >> 1), 2 * ks + (j & 1)));
      } else {
        ptx::ldmatrix_x4_trans(r, sb + SwB::at(2 * ks * kE + i + 8 * (j & 1), (wn0 + nj * 16) / kE + (j >> 1)));
      }
      Mma<T>::round(r);
      bf[2 * nj][0] = r[0];
      bf[2 * nj][1] = r[1];
      bf[2 * nj + 1][0] = r[2];
      bf[2 * nj + 1][1] = r[3];
    }
  }

  static __device__ __forceinline__ void run(const GemmArgs& p) {
    TORCHEXT_DYNAMIC_SMEM(smem_raw);
    uint4* ring = reinterpret_cast<uint4*>(smem_raw);
    // Grouped rasterization: blockIdx.x walks N tiles within groups of 8 M tiles.
    constexpr int kGroup = 8;
    const int64_t tiles_m = (p.M + BM - 1) / BM, tiles_n = (p.N + BN - 1) / BN;
    const int64_t id = blockIdx.x;
    const int64_t group = id / (kGroup * tiles_n);
    const int64_t first_m = group * kGroup;
    const int64_t group_m = tiles_m - first_m < kGroup ? tiles_m - first_m : kGroup;
    const int64_t m0 = (first_m + (id % (kGroup * tiles_n)) % group_m) * BM;
    const int64_t n0 = ((id % (kGroup * tiles_n)) / group_m) * BN;
    const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * p.k_per_split;
    const int64_t k_end = k_begin + p.k_per_split < p.K ? k_begin + p.k_per_split : p.K;
    const int slices = static_cast<int>((k_end - k_begin + kBK - 1) / kBK);

    const int warp = threadIdx.x / 32;
    const int wm0 = (warp / WARPS_N) * kWM, wn0 = (warp % WARPS_N) * kWN;
    float acc[kMI][kNI][4];
#pragma unroll
    for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

    // Prologue: slices 0 .. STAGES - 2 in flight, one commit group each (empty past the end, so
    // that the group count the waits rely on stays the same).
    LoaderA la;
    LoaderB lb;
    la.init(static_cast<const T*>(p.a), p.lda, m0, p.M, k_begin);
    lb.init(static_cast<const T*>(p.b), p.ldb, n0, p.N, k_begin);
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < slices) {
        la.issue(ring + s * kStageChunks, k_end);
        lb.issue(ring + s * kStageChunks + kChunksA, k_end);
      }
      ptx::cp_async_commit();
    }
    for (int kt = 0; kt < slices; ++kt) {
      // Slice kt has landed for this thread's copies; the barrier makes every thread's visible and
      // also tells that all warps are done with slice kt - 1, whose slot the next copies refill.
      ptx::cp_async_wait<STAGES - 2>();
      __syncthreads();
      const int next = kt + STAGES - 1;
      if (next < slices) {
        uint4* slot = ring + (next % STAGES) * kStageChunks;
        la.issue(slot, k_end);
        lb.issue(slot + kChunksA, k_end);
      }
      ptx::cp_async_commit();
      const uint4* sa = ring + (kt % STAGES) * kStageChunks;
      const uint4* sb = sa + kChunksA;
#pragma unroll
      for (int ks = 0; ks < KC / 2; ++ks) {
        uint32_t af[kMI][4], bf[kNI][2];
        load_fragments(sa, sb, ks, wm0, wn0, af, bf);
#pragma unroll
        for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
          for (int ni = 0; ni < kNI; ++ni) Mma<T>::run(acc[mi][ni], af[mi], bf[ni]);
      }
    }
    ptx::cp_async_wait<0>();
    __syncthreads();  // the ring is free for the epilogue
    epilogue(p, acc, smem_raw, m0 + wm0, n0 + wn0, warp);
  }

  // acc[mi][ni][e] is the output (row0 + 16 mi + g + 8 (e / 2), col0 + 8 ni + 2 t + e % 2), with
  // g = lane / 4, t = lane % 4 (the mma accumulator layout).
  static __device__ __forceinline__ void epilogue(const GemmArgs& p, float (&acc)[kMI][kNI][4],
                                                  unsigned char* smem, int64_t row0, int64_t col0, int warp) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    if (p.splits > 1) {  // this K slice's sums, reduced (with bias and ReLU) by gemm_reduce_splits
      float* out = p.partial + static_cast<int64_t>(blockIdx.y) * p.M * p.N;
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t r = row0 + mi * 16 + g + 8 * h, c = col0 + ni * 8 + 2 * t;
            if (r < p.M && c < p.N) out[r * p.N + c] = acc[mi][ni][2 * h];
            if (r < p.M && c + 1 < p.N) out[r * p.N + c + 1] = acc[mi][ni][2 * h + 1];
          }
      return;
    }
    // Bias of this thread's columns, in float.
    float bias[kNI][2];
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t c = col0 + ni * 8 + 2 * t + e;
        bias[ni][e] = p.bias && c < p.N ? static_cast<float>(static_cast<const T*>(p.bias)[c * p.sbias]) : 0.f;
      }
    T* out = static_cast<T*>(p.c);
    if constexpr (sizeof(T) == 4) {
      // float outputs: each thread's two adjacent columns are one 8-byte store.
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t r = row0 + mi * 16 + g + 8 * h, c = col0 + ni * 8 + 2 * t;
            float v0 = acc[mi][ni][2 * h] + bias[ni][0], v1 = acc[mi][ni][2 * h + 1] + bias[ni][1];
            if (p.relu) {
              v0 = v0 < 0.f ? 0.f : v0;  // NaN passes through, as in torch.relu
              v1 = v1 < 0.f ? 0.f : v1;
            }
            if (r < p.M && c < p.N) out[r * p.N + c] = v0;
            if (r < p.M && c + 1 < p.N) out[r * p.N + c + 1] = v1;
          }
    } else {
      // 16-bit outputs go through shared memory (this warp's tile, rows padded by one chunk so the
      // fragment writes spread over the banks) and leave as 16-byte row chunks.
      constexpr int kLd = kWN + kE;
      T* stage = reinterpret_cast<T*>(smem) + warp * kWM * kLd;
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float v0 = acc[mi][ni][2 * h] + bias[ni][0], v1 = acc[mi][ni][2 * h + 1] + bias[ni][1];
            if (p.relu) {
              v0 = v0 < 0.f ? 0.f : v0;
              v1 = v1 < 0.f ? 0.f : v1;
            }
            T* at = stage + (mi * 16 + g + 8 * h) * kLd + ni * 8 + 2 * t;
            at[0] = static_cast<T>(v0);
            at[1] = static_cast<T>(v1);
          }
      __syncwarp();
      const bool rows_aligned = p.N % kE == 0;  // out is a fresh [M, N]: its rows start 16-byte aligned then
      constexpr int kRowChunks = kWN / kE;
      for (int q = lane; q < kWM * kRowChunks; q += 32) {
        const int r = q / kRowChunks, c = (q % kRowChunks) * kE;
        const int64_t gr = row0 + r, gc = col0 + c;
        if (gr >= p.M || gc >= p.N) continue;
        const T* src = stage + r * kLd + c;
        if (rows_aligned && gc + kE <= p.N) {
          *reinterpret_cast<uint4*>(out + gr * p.N + gc) = *reinterpret_cast<const uint4*>(src);
        } else {
          for (int e = 0; e < kE && gc + e < p.N; ++e) out[gr * p.N + gc + e] = src[e];
        }
      }
    }
  }
};

template <typename T, int TILE, Major AM, Major BMJ>
struct TileKernel {
  static constexpr TcTile kT = kTcTiles[TILE];
  using K = Kernel<T, kT.bm, kT.bn, kT.kc, kT.warps_m, kT.warps_n, kT.stages, AM, BMJ>;
};

template <typename T, int TILE, Major AM, Major BMJ>
__global__ void __launch_bounds__(kTcTiles[TILE].threads(), kTcTiles[TILE].min_ctas) gemm_tc_kernel(GemmArgs p) {
#if TORCHEXT_SM80_CODE
  TileKernel<T, TILE, AM, BMJ>::K::run(p);
#else
  __trap();  // launched only on sm_80 and newer
#endif
}

template <typename T, int TILE, Major AM, Major BMJ>
void launch(const GemmArgs& p, cudaStream_t stream) {
  constexpr TcTile t = kTcTiles[TILE];
  constexpr int smem = t.smem_bytes();
  auto* kernel = gemm_tc_kernel<T, TILE, AM, BMJ>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  const int64_t tiles = ((p.M + t.bm - 1) / t.bm) * ((p.N + t.bn - 1) / t.bn);
  TORCHEXT_LAUNCH(kernel, dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(p.splits)), dim3(t.threads()),
                  smem, stream, p);
}

// Every (tile, layout) a type is used with. TF32: K-major operands only.
template <typename T>
void launch_typed(int tile, Major am, Major bm, const GemmArgs& p, cudaStream_t stream) {
  const int layout = static_cast<int>(am) * 2 + static_cast<int>(bm);
#define TORCHEXT_TC_CASE(i, ...)                                                                   \
  case i:                                                                                          \
    if (layout == 0) return launch<T, i, Major::kK, Major::kK>(p, stream);                         \
    if constexpr (sizeof(T) == 2) {                                                                \
      if (layout == 1) return launch<T, i, Major::kK, Major::kMN>(p, stream);                      \
      if (layout == 3) return launch<T, i, Major::kMN, Major::kMN>(p, stream);                     \
    }                                                                                              \
    break;
  switch (tile) { TORCHEXT_TC_TILES(TORCHEXT_TC_CASE) }
#undef TORCHEXT_TC_CASE
  TORCH_CHECK(false, "torchext: no tensor-core GEMM for tile ", tile, " and operand layout ", layout);
}

}  // namespace tc
}  // namespace cuda
}  // namespace torchext
