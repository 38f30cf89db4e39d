// SIMT GEMM for float (the default: torch leaves TF32 off) and double: C[M, N] = A[M, K] * B[N, K]^T
// (+ bias) (ReLU), operands K-major or M/N-major as in gemm.h; gemm_simt.cu instantiates it.
//
// A 128 x 128 tile per 256-thread CTA, K in slices of 8. Each thread owns an 8 x 8 block of outputs
// (rows ty*4 + {0..3} and 64 + ty*4 + {0..3}, columns likewise from tx), so per k it reads four
// 16-byte vectors of shared memory (two of A, two of B: LDS.128 for float) for 64 FMAs. Both
// operands are stored k-major in shared memory (As[k][m], Bs[k][n]): an M/N-major operand is copied
// as it lies (16-byte stores), a K-major one is transposed on the way in (its 16-byte global load
// spread over four rows; the rows are padded by one 16-byte vector so those stores spread over the
// banks). Slices are double-buffered: the global loads of slice k + 1 are in registers while slice
// k is multiplied, and one barrier per slice orders the buffers.
// Per CTA and slice: 2 * 128 * 8 elements in, 2 * 128 * 128 * 8 FLOPs (64 FLOP per element loaded
// from global memory, 16 FMA per shared-memory vector load).
#pragma once

#include <cstdint>

#include "cuda/gemm.h"
#include "cuda/hooks.cuh"
#include "cuda/vectorized.cuh"

namespace torchext {
namespace cuda {
namespace simt {

constexpr int kTile = kSimtTile, kSlice = kSimtSlice, kThreads = kSimtThreads;

// Split-K sums, like the tensor-core GEMM's: float partials, added in split order by
// launch_gemm_reduce_splits. Float only (double keeps one split).
template <typename T, Major AM, Major BMJ>
struct Kernel {
  static constexpr int kV = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte vector
  static constexpr int kLd = kTile + kV;                        // padded row of a k-major slice
  using Vec = Vec16<T>;                                          // one 16-byte access

  // One operand's part of a slice: the vectors this thread loads, set up once per CTA (source
  // pointer, advanced a slice per fetch; the bound that stays fixed; the K position that moves).
  // K-major: 128 rows x 8 k; M/N-major: 8 k rows x 128. float: one vector per thread, double two.
  template <Major MJ>
  struct Loader {
    static constexpr int kVectors = kTile * kSlice / kV;
    static constexpr int kPerThread = kVectors / kThreads;
    static_assert(kVectors % kThreads == 0, "whole vectors per thread");
    const T* src[kPerThread];
    int k[kPerThread];  // the vector's (first) k (K fits in 31 bits: the host checks)
    int fixed[kPerThread];  // K-major: kV when its row is inside M / N, else 0; M/N-major: elements inside
    int64_t step;
    Vec reg[kPerThread];

    __device__ __forceinline__ void init(const T* base, int64_t ld, int64_t outer0, int64_t outer_size, int64_t k0) {
      step = MJ == Major::kK ? kSlice : kSlice * ld;
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int q = threadIdx.x + i * kThreads;
        if (MJ == Major::kK) {
          const int64_t outer = outer0 + q / (kSlice / kV);
          k[i] = static_cast<int>(k0) + (q % (kSlice / kV)) * kV;
          fixed[i] = outer < outer_size ? kV : 0;
          src[i] = base + (fixed[i] ? outer * ld + k[i] : 0);
        } else {
          const int64_t outer = outer0 + (q % (kTile / kV)) * kV;
          k[i] = static_cast<int>(k0) + q / (kTile / kV);
          const int64_t inside = outer_size - outer;
          fixed[i] = inside <= 0 ? 0 : (inside >= kV ? kV : static_cast<int>(inside));
          src[i] = base + (fixed[i] ? k[i] * ld + outer : 0);
        }
      }
    }

    // This thread's vectors of the next slice into registers; k_end: the end of the split's K.
    __device__ __forceinline__ void fetch(int k_end) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        int count;
        if (MJ == Major::kK) {
          const int left = k_end - k[i];
          count = left <= 0 ? 0 : (left >= fixed[i] ? fixed[i] : left);
        } else {
          count = k[i] < k_end ? fixed[i] : 0;
        }
        if (count == kV) {
          reg[i] = *reinterpret_cast<const Vec*>(src[i]);
        } else {
#pragma unroll
          for (int e = 0; e < kV; ++e) reg[i].v[e] = e < count ? src[i][e] : T(0);
        }
        src[i] += step;
        k[i] += kSlice;
      }
    }

    __device__ __forceinline__ void store(T* slice) const {  // slice: [kSlice][kLd]
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int q = threadIdx.x + i * kThreads;
        if (MJ == Major::kK) {
          const int r = q / (kSlice / kV), kk = (q % (kSlice / kV)) * kV;
#pragma unroll
          for (int e = 0; e < kV; ++e) slice[(kk + e) * kLd + r] = reg[i].v[e];
        } else {
          const int kk = q / (kTile / kV), c = (q % (kTile / kV)) * kV;
          *reinterpret_cast<Vec*>(slice + kk * kLd + c) = reg[i];
        }
      }
    }
  };

  static __device__ __forceinline__ void run(const GemmArgs& p) {
    __shared__ __align__(16) T As[2][kSlice * kLd];
    TORCHEXT_SHARED(As);
    __shared__ __align__(16) T Bs[2][kSlice * kLd];
    TORCHEXT_SHARED(Bs);
    const int64_t tiles_n = (p.N + kTile - 1) / kTile;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) / tiles_n * kTile;  // row-major over tiles:
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) % tiles_n * kTile;  // neighbours share A
    const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * p.k_per_split;
    const int64_t k_end = k_begin + p.k_per_split < p.K ? k_begin + p.k_per_split : p.K;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

    Loader<AM> la;
    Loader<BMJ> lb;
    la.init(static_cast<const T*>(p.a), p.lda, m0, p.M, k_begin);
    lb.init(static_cast<const T*>(p.b), p.ldb, n0, p.N, k_begin);
    T acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = T(0);

    int buf = 0;
    if (k_begin < k_end) {
      la.fetch(static_cast<int>(k_end));
      lb.fetch(static_cast<int>(k_end));
      la.store(As[0]);
      lb.store(Bs[0]);
    }
    __syncthreads();
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kSlice) {
      const bool more = k0 + kSlice < k_end;
      if (more) {  // the next slice's loads, in flight while this one is multiplied
        la.fetch(static_cast<int>(k_end));
        lb.fetch(static_cast<int>(k_end));
      }
      const T* as = As[buf];
      const T* bs = Bs[buf];
#pragma unroll
      for (int k = 0; k < kSlice; ++k) {
        T a[8], b[8];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int v = 0; v < 4 / kV + (kV > 4 ? 1 : 0); ++v) {
            // 4 consecutive elements per half: one 16-byte load for float, two for double.
            const Vec va = *reinterpret_cast<const Vec*>(as + k * kLd + h * 64 + ty * 4 + v * kV);
            const Vec vb = *reinterpret_cast<const Vec*>(bs + k * kLd + h * 64 + tx * 4 + v * kV);
#pragma unroll
            for (int e = 0; e < kV && e < 4; ++e) {
              a[h * 4 + v * kV + e] = va.v[e];
              b[h * 4 + v * kV + e] = vb.v[e];
            }
          }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
      }
      if (more) {
        la.store(As[buf ^ 1]);
        lb.store(Bs[buf ^ 1]);
      }
      __syncthreads();  // the other buffer is filled, and everyone is done with this one
      buf ^= 1;
    }
    epilogue(p, acc, m0, n0, tx, ty);
  }

  static __device__ __forceinline__ void epilogue(const GemmArgs& p, T (&acc)[8][8], int64_t m0, int64_t n0, int tx,
                                                  int ty) {
    const bool split = p.splits > 1;
    const T* bias = static_cast<const T*>(p.bias);
    T bv[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t c = n0 + (j / 4) * 64 + tx * 4 + j % 4;
      bv[j] = !split && bias && c < p.N ? bias[c * p.sbias] : T(0);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t r = m0 + (i / 4) * 64 + ty * 4 + i % 4;
      if (r >= p.M) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t c = n0 + h * 64 + tx * 4;
        T v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          v[e] = acc[i][h * 4 + e] + bv[h * 4 + e];
          if (!split && p.relu) v[e] = v[e] < T(0) ? T(0) : v[e];  // NaN passes through, as in torch.relu
        }
        if (split) {
          float* out = p.partial + static_cast<int64_t>(blockIdx.y) * p.M * p.N + r * p.N;
          for (int e = 0; e < 4 && c + e < p.N; ++e) out[c + e] = static_cast<float>(v[e]);
        } else {
          T* out = static_cast<T*>(p.c) + r * p.N;
          if (kV == 4 && p.N % 4 == 0 && c + 4 <= p.N) {  // float: one 16-byte store
            Vec w;
#pragma unroll
            for (int e = 0; e < kV; ++e) w.v[e] = v[e];
            *reinterpret_cast<Vec*>(out + c) = w;
          } else {
            for (int e = 0; e < 4 && c + e < p.N; ++e) out[c + e] = v[e];
          }
        }
      }
    }
  }
};

template <typename T, Major AM, Major BMJ>
__global__ void __launch_bounds__(kThreads) gemm_simt_kernel(GemmArgs p) {
  Kernel<T, AM, BMJ>::run(p);
}

}  // namespace simt
}  // namespace cuda
}  // namespace torchext
