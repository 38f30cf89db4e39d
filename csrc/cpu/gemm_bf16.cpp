// bfloat16 GEMM tasks through AVX512_BF16 (VDPBF16PS) on packed k pairs; x86-64 only.
//
// Work as the packed GEMM's (gemm.cpp): 2*M*N*K FLOPs, each operand element packed once per task,
// at twice the multiply rate of converting to float first, and half the packed bytes.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/convert.h"
#include "cpu/dispatch.h"
#include "cpu/gemm.h"
#include "cpu/gemm_tile.h"
#include "linear_problem.h"

#if TORCHEXT_X86_SIMD
namespace torchext {
namespace cpu {
namespace {

// bfloat16 on CPUs with AVX512_BF16: VDPBF16PS multiplies pairs of bf16 values and adds both
// products to a float32 lane, twice the multiply rate of converting to float first. Both operands
// are packed as k pairs: for each pair, MR (A) or NR (B) 32-bit words, each holding the values at
// k and k + 1 (the low half is k); an odd K is padded with a zero pair half. The products are
// exact in float32, so this differs from the float path only in the order of the additions and in
// flushing float32 subnormals to zero, which the instruction does (oneDNN, behind torch's bf16
// matmul on such CPUs, uses the same instruction).
//
// The kernel uses the AVX-512 row of the tile table (12 rows, 32 float columns), which run_gemm's
// blocking then sizes the buffers with.
constexpr int kBf16MR = tile_of(Level::AVX512).mr;
constexpr int kBf16NR = 2 * tile_of(Level::AVX512).vb / static_cast<int>(sizeof(float));
static_assert(kBf16NR == 32, "micro_kernel_bf16 reads the 32 columns of a B pair panel as two 16-float vectors");

TORCHEXT_INLINE uint32_t bf16_bits(const c10::BFloat16* p, int64_t i) {
  return reinterpret_cast<const cpu::u16_alias*>(p)[i];
}

// Words [pairs) x [lanes) of a panel: lane l of pair q holds X(l, 2q) | X(l, 2q + 1) << 16, where
// X(l, k) = src[l * s_lane + k * s_k] for l < valid and k < kc, else 0.
TORCHEXT_INLINE void pack_bf16_pairs(const c10::BFloat16* src, int64_t s_lane, int64_t s_k, int64_t valid, int lanes,
                                     int64_t kc, uint32_t* __restrict__ dst) {
  const int64_t pairs = (kc + 1) / 2;
  if (s_k == 1) {  // each lane's values are contiguous in k: copy whole pairs
    // The pairs are 32-bit words, so with an even row stride this is a word transpose: 8 x 8
    // blocks through transpose8x8 (bit moves only), the ragged lanes and pairs one by one.
    const int64_t full = kc / 2;
    const int64_t full_q = s_lane % 2 == 0 ? full / 8 * 8 : 0;
    const int64_t full_lanes = s_lane % 2 == 0 ? valid / 8 * 8 : 0;
    for (int64_t qb = 0; qb < full_q; qb += 8) {
      for (int64_t l = 0; l < full_lanes; l += 8) {
        transpose8x8(reinterpret_cast<const float*>(src + l * s_lane + 2 * qb), s_lane / 2,
                     reinterpret_cast<float*>(dst + qb * lanes + l), lanes);
      }
    }
    for (int64_t qb = 0; qb < full; qb += kPackBlock) {
      const int64_t qe = std::min(full, qb + kPackBlock);
      for (int64_t l = 0; l < lanes; ++l) {
        const int64_t q0 = l < full_lanes ? std::max(qb, std::min(qe, full_q)) : qb;  // skip the transposed part
        if (l < valid) {
          const c10::BFloat16* row = src + l * s_lane;
          for (int64_t q = q0; q < qe; ++q) std::memcpy(dst + q * lanes + l, row + 2 * q, sizeof(uint32_t));
        } else {
          for (int64_t q = q0; q < qe; ++q) dst[q * lanes + l] = 0;
        }
      }
    }
    if (kc % 2) {
      uint32_t* d = dst + full * lanes;
      for (int64_t l = 0; l < lanes; ++l) d[l] = l < valid ? bf16_bits(src + l * s_lane, kc - 1) : 0;
    }
    return;
  }
  for (int64_t q = 0; q < pairs; ++q) {  // lanes adjacent in memory (transposed views): walk k outside
    const int64_t k = 2 * q;
    const c10::BFloat16* lo = src + k * s_k;
    for (int64_t l = 0; l < lanes; ++l) {
      uint32_t w = 0;
      if (l < valid) {
        w = bf16_bits(lo, l * s_lane);
        if (k + 1 < kc) w |= bf16_bits(lo + s_k, l * s_lane) << 16;
      }
      dst[q * lanes + l] = w;
    }
  }
}

// MR x NV vectors of one kBf16MR-row packed panel (MR < kBf16MR for a zero-padded edge panel; NV = 1
// for an edge of at most 16 columns), as micro_kernel.
template <int MR, int NV>
TORCHEXT_TARGET_AVX512_BF16 inline void micro_kernel_bf16(int64_t pairs, const uint32_t* __restrict__ ap,
                                                           const uint32_t* __restrict__ bp, float* __restrict__ partial,
                                                           int64_t ldp, bool first, bool last,
                                                           const LinearProblem<c10::BFloat16>& g, int64_t i0,
                                                           int64_t j0, int64_t rows, int64_t cols) {
  using V = VecOf<float, 64>::type;
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    acc0[r] = _mm512_setzero_ps();
    acc1[r] = _mm512_setzero_ps();
  }
  for (int64_t q = 0; q < pairs; ++q) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + q * kBf16NR);
    __m512bh b1;
    if constexpr (NV == 2) b1 = (__m512bh)_mm512_loadu_si512(bp + q * kBf16NR + 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(ap[q * kBf16MR + r]));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], a, b0);
      if constexpr (NV == 2) acc1[r] = _mm512_dpbf16_ps(acc1[r], a, b1);
    }
  }
  V c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    c0[r] = (V)acc0[r];
    c1[r] = (V)acc1[r];
  }
  finish_tile<c10::BFloat16, float, 64, MR>(c0, c1, partial, ldp, first, last, g, i0, j0, rows, cols);
}

template <int NV>
TORCHEXT_TARGET_AVX512_BF16 inline void edge_aware_tile_bf16(int64_t pairs, const uint32_t* __restrict__ ap,
                                                              const uint32_t* __restrict__ bp,
                                                              float* __restrict__ partial, int64_t ldp, bool first,
                                                              bool last, const LinearProblem<c10::BFloat16>& g,
                                                              int64_t i0, int64_t j0, int64_t rows, int64_t cols) {
  if (rows <= 4)
    micro_kernel_bf16<4, NV>(pairs, ap, bp, partial, ldp, first, last, g, i0, j0, rows, cols);
  else if (rows <= 8)
    micro_kernel_bf16<8, NV>(pairs, ap, bp, partial, ldp, first, last, g, i0, j0, rows, cols);
  else
    micro_kernel_bf16<kBf16MR, NV>(pairs, ap, bp, partial, ldp, first, last, g, i0, j0, rows, cols);
}

}  // namespace

// gemm_tasks_impl for the bf16 pair kernel: A and B always packed (pa, pb hold 32-bit pair words).
TORCHEXT_TARGET_AVX512_BF16 void gemm_tasks_bf16(const LinearProblem<c10::BFloat16>* gp, const Blocking* blp,
                                                 int64_t task_begin, int64_t task_end, uint32_t* pa, uint32_t* pb,
                                                 float* pc) {
  const LinearProblem<c10::BFloat16>& g = *gp;
  const Blocking& bl = *blp;
  for (int64_t t = task_begin; t < task_end; ++t) {
    const auto [i0, j0, rows, cols] = bl.task(t, g.M, g.N);
    for (int64_t k0 = 0; k0 < g.K; k0 += bl.kc) {
      const int64_t kc = std::min(bl.kc, g.K - k0);
      const int64_t pairs = (kc + 1) / 2;
      const bool first = k0 == 0;
      const bool last = k0 + kc >= g.K;
      for (int64_t p = 0; p < rows; p += kBf16MR) {
        pack_bf16_pairs(g.a + (i0 + p) * g.sam + k0 * g.sak, g.sam, g.sak, std::min<int64_t>(kBf16MR, rows - p),
                        kBf16MR, kc, pa + p * pairs);
      }
      for (int64_t p = 0; p < cols; p += kBf16NR) {
        pack_bf16_pairs(g.b + (j0 + p) * g.sbn + k0 * g.sbk, g.sbn, g.sbk, std::min<int64_t>(kBf16NR, cols - p),
                        kBf16NR, kc, pb + p * pairs);
      }
      for (int64_t ir = 0; ir < rows; ir += kBf16MR) {
        const int64_t mr = std::min<int64_t>(kBf16MR, rows - ir);
        for (int64_t jr = 0; jr < cols; jr += kBf16NR) {
          const int64_t nr = std::min<int64_t>(kBf16NR, cols - jr);
          if (nr <= 16)
            edge_aware_tile_bf16<1>(pairs, pa + ir * pairs, pb + jr * pairs, pc + ir * bl.nc + jr, bl.nc, first,
                                    last, g, i0 + ir, j0 + jr, mr, nr);
          else
            edge_aware_tile_bf16<2>(pairs, pa + ir * pairs, pb + jr * pairs, pc + ir * bl.nc + jr, bl.nc, first,
                                    last, g, i0 + ir, j0 + jr, mr, nr);
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace torchext
#endif  // TORCHEXT_X86_SIMD
