// Linear on CPU: out[M, N] = input[M, K] @ weight[N, K]^T (+ bias) (ReLU), as a blocked, packed GEMM.
//
// Work: 2*M*N*K FLOPs. Each MC x KC block of input and KC x NC block of weight is packed once per
// task into contiguous, zero-padded panels (converting half types to float), so the micro-kernel
// streams unit-stride data whatever the caller's strides, and transposed or sliced operands
// (as in the backward pass) need no copy. The micro-kernel keeps an MR x NR tile of the output in
// vector registers (MR*NR/VL accumulators) and does MR*NR FMAs per MR + NR loaded values.
// Bias and ReLU are applied while the tile is stored, so the output is written exactly once.
//
// The grad helpers are memory bound: linear_bias_grad reads M*N elements and writes N;
// linear_relu_grad reads 2*M*N, writes M*N + N.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/convert.h"
#include "cpu/dispatch.h"
#include "linear_checks.h"
#include "linear_problem.h"
#include "math_type.h"

namespace torchext {
namespace {

template <typename A, int Bytes>
struct VecOf {
  typedef A type __attribute__((vector_size(Bytes)));
};

// Task grid: the output is cut into mc x nc tiles, one task each; K is walked in kc slices.
struct Blocking {
  int64_t mc, nc, kc;
  int64_t tiles_m, tiles_n;
  struct Span {
    int64_t i0, j0, rows, cols;
  };
  // The output rows [i0, i0 + rows) x columns [j0, j0 + cols) of task t.
  Span task(int64_t t, int64_t M, int64_t N) const {
    const int64_t i0 = (t / tiles_n) * mc, j0 = (t % tiles_n) * nc;
    return {i0, j0, std::min(mc, M - i0), std::min(nc, N - j0)};
  }
};

constexpr int64_t kPackBlock = 16;  // k extent of one transpose block while packing

// Two-source shuffle of 8-lane vectors with constant lane indices (0-7 from a, 8-15 from b), in
// the spelling of each compiler: GCC's __builtin_shuffle takes an index vector, Clang's
// __builtin_shufflevector the indices themselves.
#if defined(__clang__)
#define TORCHEXT_SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define TORCHEXT_SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, i8{__VA_ARGS__})
#endif

// Transposes an 8 x 8 float block: rows src[r * ld .. + 8) for r < 8 become dst[k * ldd .. + 8).
// Three rounds of pairwise shuffles (1-, 2-, 4-element interleaves) instead of 64 scalar moves.
TORCHEXT_INLINE void transpose8x8(const float* src, int64_t ld, float* dst, int64_t ldd) {
  typedef float v8 __attribute__((vector_size(32)));
#if !defined(__clang__)
  typedef int i8 __attribute__((vector_size(32)));  // TORCHEXT_SHUFFLE8's index vectors
#endif
  v8 v[8], t[8], u[8];
  for (int r = 0; r < 8; ++r) std::memcpy(&v[r], src + r * ld, 32);
  for (int r = 0; r < 8; r += 2) {
    t[r] = TORCHEXT_SHUFFLE8(v[r], v[r + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[r + 1] = TORCHEXT_SHUFFLE8(v[r], v[r + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int h = 0; h < 8; h += 4) {
    u[h] = TORCHEXT_SHUFFLE8(t[h], t[h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[h + 1] = TORCHEXT_SHUFFLE8(t[h], t[h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[h + 2] = TORCHEXT_SHUFFLE8(t[h + 1], t[h + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[h + 3] = TORCHEXT_SHUFFLE8(t[h + 1], t[h + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int q = 0; q < 4; ++q) {
    const v8 a = TORCHEXT_SHUFFLE8(u[q], u[q + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    const v8 b = TORCHEXT_SHUFFLE8(u[q], u[q + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    std::memcpy(dst + q * ldd, &a, 32);
    std::memcpy(dst + (q + 4) * ldd, &b, 32);
  }
}
#undef TORCHEXT_SHUFFLE8

// Packs kc lines (line k at base + k * stride, `count` consecutive values each: a column-major A
// or a transposed weight) into W-wide panels, panel p at dst + p * kc holding value (k, c) at
// [k * W + c], the last one zero-padded. k is walked outside, so each line is read as one
// contiguous run for every panel; panel by panel, each k would be a separate page for a few dozen
// bytes.
template <typename T, typename Acc, int W>
TORCHEXT_INLINE void pack_k_lines(const T* base, int64_t stride, int64_t count, int64_t kc, Acc* __restrict__ dst) {
  const int64_t full = count / W * W;
  for (int64_t k = 0; k < kc; ++k) {
    const T* s = base + k * stride;
    for (int64_t p = 0; p < full; p += W) {
      Acc* d = dst + p * kc + k * W;
#pragma GCC unroll 16
      for (int c = 0; c < W; ++c) d[c] = static_cast<Acc>(s[p + c]);
    }
    if (full < count) {
      Acc* d = dst + full * kc + k * W;
      for (int c = 0; c < W; ++c) d[c] = full + c < count ? static_cast<Acc>(s[full + c]) : Acc(0);
    }
  }
}

// Packs rows [i0, i0 + rows) x cols [k0, k0 + kc) of A into MR-row micro-panels: panel p holds,
// for each k, MR consecutive values. Rows past the edge are zero so the micro-kernel needs no
// row masking.
template <typename T, typename Acc, int MR>
TORCHEXT_INLINE void pack_a(const LinearProblem<T>& g, int64_t i0, int64_t rows, int64_t k0, int64_t kc,
                            Acc* __restrict__ dst) {
  if (g.sam == 1 && g.sak != 1) {  // column-major A (dY^T in dW = dY^T X)
    pack_k_lines<T, Acc, MR>(g.a + i0 + k0 * g.sak, g.sak, rows, kc, dst);
    return;
  }
  for (int64_t p = 0; p < rows; p += MR) {
    const int64_t valid = std::min<int64_t>(MR, rows - p);
    Acc* d = dst + p * kc;
    const T* src = g.a + (i0 + p) * g.sam + k0 * g.sak;
    if (g.sak == 1) {  // row-major A: read each row contiguously
      for (int64_t kb = 0; kb < kc; kb += kPackBlock) {
        const int64_t ke = std::min(kc, kb + kPackBlock);
        for (int r = 0; r < MR; ++r) {
          if (r < valid) {
            const T* s = src + r * g.sam;
            for (int64_t k = kb; k < ke; ++k) d[k * MR + r] = static_cast<Acc>(s[k]);
          } else {
            for (int64_t k = kb; k < ke; ++k) d[k * MR + r] = Acc(0);
          }
        }
      }
    } else {  // general strides: walk k outside so the inner reads stride by sam
      for (int64_t k = 0; k < kc; ++k) {
        const T* s = src + k * g.sak;
        for (int r = 0; r < MR; ++r) d[k * MR + r] = r < valid ? static_cast<Acc>(s[r * g.sam]) : Acc(0);
      }
    }
  }
}

// Packs B rows (output columns) [j0, j0 + cols) x [k0, k0 + kc) into NR-wide micro-panels.
template <typename T, typename Acc, int NR>
TORCHEXT_INLINE void pack_b(const LinearProblem<T>& g, int64_t j0, int64_t cols, int64_t k0, int64_t kc,
                            Acc* __restrict__ dst) {
  if (g.sbn == 1 && g.sbk != 1) {  // weight given as a transposed view (X^T in dW, W^T in dX)
    pack_k_lines<T, Acc, NR>(g.b + j0 + k0 * g.sbk, g.sbk, cols, kc, dst);
    return;
  }
  for (int64_t p = 0; p < cols; p += NR) {
    const int64_t valid = std::min<int64_t>(NR, cols - p);
    Acc* d = dst + p * kc;
    const T* src = g.b + (j0 + p) * g.sbn + k0 * g.sbk;
    if (g.sbk == 1 && g.sbn != 1) {  // weight row-major [N, K]: each output column is contiguous in k
      // A transpose: walk k in short blocks so the NR-strided writes stay within a few KiB of L1.
      int64_t k_done = 0;
      if constexpr (std::is_same<T, float>::value) {
        const int64_t full_cols = valid / 8 * 8;
        k_done = kc / 8 * 8;
        for (int64_t kb = 0; kb < k_done; kb += 8) {
          for (int64_t c = 0; c < full_cols; c += 8) transpose8x8(src + c * g.sbn + kb, g.sbn, d + kb * NR + c, NR);
          for (int64_t c = full_cols; c < NR; ++c)
            for (int64_t k = kb; k < kb + 8; ++k) d[k * NR + c] = c < valid ? src[c * g.sbn + k] : Acc(0);
        }
      }
      for (int64_t kb = k_done; kb < kc; kb += kPackBlock) {
        const int64_t ke = std::min(kc, kb + kPackBlock);
        for (int c = 0; c < NR; ++c) {
          if (c < valid) {
            const T* s = src + c * g.sbn;
            for (int64_t k = kb; k < ke; ++k) d[k * NR + c] = static_cast<Acc>(s[k]);
          } else {
            for (int64_t k = kb; k < ke; ++k) d[k * NR + c] = Acc(0);
          }
        }
      }
    } else {  // general strides: NR values per k
      for (int64_t k = 0; k < kc; ++k) {
        const T* s = src + k * g.sbk;
        for (int c = 0; c < NR; ++c) d[k * NR + c] = c < valid ? static_cast<Acc>(s[c * g.sbn]) : Acc(0);
      }
    }
  }
}

// Finishes an MR x NR register tile (c0: columns [0, VL), c1: [VL, NR)) of one kc slice: adds the
// earlier slices' sum from `partial` unless first, and either writes it back there (not last) or
// applies bias and ReLU and stores the valid rows x cols part to C in T.
template <typename T, typename Acc, int VB, int MR>
TORCHEXT_INLINE void finish_tile(typename VecOf<Acc, VB>::type (&c0)[MR], typename VecOf<Acc, VB>::type (&c1)[MR],
                                 Acc* __restrict__ partial, int64_t ldp, bool first, bool last,
                                 const LinearProblem<T>& g, int64_t i0, int64_t j0, int64_t rows, int64_t cols) {
  using V = typename VecOf<Acc, VB>::type;
  constexpr int VL = VB / static_cast<int>(sizeof(Acc));
  constexpr int NR = 2 * VL;
  if (rows == MR && cols == NR) {
    // Full tile: the epilogue stays in vector registers (a scalar one costs ~10% at kc = 256).
    if (!first) {
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        V p0, p1;
        std::memcpy(&p0, partial + r * ldp, VB);
        std::memcpy(&p1, partial + r * ldp + VL, VB);
        c0[r] += p0;
        c1[r] += p1;
      }
    }
    if (!last) {
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        std::memcpy(partial + r * ldp, &c0[r], VB);
        std::memcpy(partial + r * ldp + VL, &c1[r], VB);
      }
      return;
    }
    alignas(64) Acc bias[NR];
    for (int c = 0; c < NR; ++c) bias[c] = g.bias ? static_cast<Acc>(g.bias[(j0 + c) * g.sbias]) : Acc(0);
    V b0, b1;
    std::memcpy(&b0, bias, VB);
    std::memcpy(&b1, bias + VL, VB);
    const V zero = V{};
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      V v0 = c0[r] + b0, v1 = c1[r] + b1;
      if (g.relu) {  // NaN compares false and passes through, as in torch.relu
        v0 = v0 < zero ? zero : v0;
        v1 = v1 < zero ? zero : v1;
      }
      T* out = g.c + (i0 + r) * g.N + j0;
      if constexpr (std::is_same<T, Acc>::value) {
        std::memcpy(out, &v0, VB);
        std::memcpy(out + VL, &v1, VB);
      } else {
        alignas(64) Acc row[NR];
        std::memcpy(row, &v0, VB);
        std::memcpy(row + VL, &v1, VB);
        for (int c = 0; c < NR; ++c) out[c] = static_cast<T>(row[c]);
      }
    }
    return;
  }
  alignas(64) Acc tile[MR * NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    std::memcpy(tile + r * NR, &c0[r], VB);
    std::memcpy(tile + r * NR + VL, &c1[r], VB);
  }
  if (!first) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) tile[r * NR + c] += partial[r * ldp + c];
  }
  if (!last) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) partial[r * ldp + c] = tile[r * NR + c];
    return;
  }
  Acc bias[NR];
  for (int64_t c = 0; c < cols; ++c) bias[c] = g.bias ? static_cast<Acc>(g.bias[(j0 + c) * g.sbias]) : Acc(0);
  for (int64_t r = 0; r < rows; ++r) {
    T* out = g.c + (i0 + r) * g.N + j0;
    for (int64_t c = 0; c < cols; ++c) {
      Acc v = tile[r * NR + c] + bias[c];
      if (g.relu) v = v < Acc(0) ? Acc(0) : v;  // NaN passes through, as in torch.relu
      out[c] = static_cast<T>(v);
    }
  }
}

// MR x (NV vectors) register tile over kc steps of packed panels, then finish_tile. `partial` (ld =
// ldp) holds the sum over earlier kc slices when !first.
// kDirectA: `ap` is the caller's row-major A itself (row stride lda), read without packing.
// Otherwise `ap` is a packed panel of PANEL rows per k (PANEL >= MR: an edge tile reads only the
// first MR rows of a zero-padded panel). NV = 1 for an edge panel of at most one vector of valid
// columns: it reads the first half of each k's NR packed values and leaves c1 at zero.
template <typename T, typename Acc, int VB, int MR, bool kDirectA, int PANEL = MR, int NV = 2>
TORCHEXT_INLINE void micro_kernel(int64_t kc, const Acc* __restrict__ ap, int64_t lda, const Acc* __restrict__ bp,
                                  Acc* __restrict__ partial, int64_t ldp, bool first, bool last,
                                  const LinearProblem<T>& g, int64_t i0, int64_t j0, int64_t rows, int64_t cols) {
  using V = typename VecOf<Acc, VB>::type;
  constexpr int VL = VB / static_cast<int>(sizeof(Acc));
  constexpr int NR = 2 * VL;
  V c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    c0[r] = V{};
    c1[r] = V{};
  }
  for (int64_t k = 0; k < kc; ++k) {
    V b0, b1;
    std::memcpy(&b0, bp + k * NR, VB);
    if constexpr (NV == 2) std::memcpy(&b1, bp + k * NR + VL, VB);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const Acc av = kDirectA ? ap[r * lda + k] : ap[k * PANEL + r];
      c0[r] += av * b0;
      if constexpr (NV == 2) c1[r] += av * b1;
    }
  }
  finish_tile<T, Acc, VB, MR>(c0, c1, partial, ldp, first, last, g, i0, j0, rows, cols);
}

// One micro-tile of `rows` x `cols` valid values, with the smallest register tile that covers it:
// edge tiles of a few rows or of at most one vector of columns would otherwise cost a full MR x NR
// tile of arithmetic (a 64-row batch is 5 x 12 + 4 rows; 100 output features are 3 x 32 + 4).
template <typename T, typename Acc, int VB, int MR, bool kDirectA, int NV>
TORCHEXT_INLINE void edge_aware_tile(int64_t kc, const Acc* __restrict__ ap, int64_t lda, const Acc* __restrict__ bp,
                                     Acc* __restrict__ partial, int64_t ldp, bool first, bool last,
                                     const LinearProblem<T>& g, int64_t i0, int64_t j0, int64_t rows, int64_t cols) {
  if constexpr (!kDirectA && MR > 4) {  // a packed panel is zero-padded: round its rows up
    if (rows <= 4) {
      micro_kernel<T, Acc, VB, 4, false, MR, NV>(kc, ap, lda, bp, partial, ldp, first, last, g, i0, j0, rows, cols);
      return;
    }
    if constexpr (MR > 8) {
      if (rows <= 8) {
        micro_kernel<T, Acc, VB, 8, false, MR, NV>(kc, ap, lda, bp, partial, ldp, first, last, g, i0, j0, rows, cols);
        return;
      }
    }
  }
  micro_kernel<T, Acc, VB, MR, kDirectA, MR, NV>(kc, ap, lda, bp, partial, ldp, first, last, g, i0, j0, rows, cols);
}

template <typename T, typename Acc, int VB, int MR, bool kDirectA>
TORCHEXT_INLINE void any_tile(int64_t kc, const Acc* __restrict__ ap, int64_t lda, const Acc* __restrict__ bp,
                              Acc* __restrict__ partial, int64_t ldp, bool first, bool last,
                              const LinearProblem<T>& g, int64_t i0, int64_t j0, int64_t rows, int64_t cols) {
  constexpr int VL = VB / static_cast<int>(sizeof(Acc));
  if (cols <= VL)
    edge_aware_tile<T, Acc, VB, MR, kDirectA, 1>(kc, ap, lda, bp, partial, ldp, first, last, g, i0, j0, rows, cols);
  else
    edge_aware_tile<T, Acc, VB, MR, kDirectA, 2>(kc, ap, lda, bp, partial, ldp, first, last, g, i0, j0, rows, cols);
}

// Runs tasks [task_begin, task_end) of the grid. Per task and kc slice: pack A and B once, then
// sweep micro-tiles with the A micro-panel (MR x kc) resident in L1 while B panels stream from L2.
template <typename T, int VB, int MR>
TORCHEXT_INLINE void gemm_tasks_impl(const LinearProblem<T>* gp, const Blocking* blp, int64_t task_begin,
                                     int64_t task_end, math_t<T>* pa, math_t<T>* pb,
                                     math_t<T>* pc) {
  using Acc = math_t<T>;
  constexpr int NR = 2 * VB / static_cast<int>(sizeof(Acc));
  const LinearProblem<T>& g = *gp;
  const Blocking& bl = *blp;
  for (int64_t t = task_begin; t < task_end; ++t) {
    const auto [i0, j0, rows, cols] = bl.task(t, g.M, g.N);
    // A row-major float/double input needs no packing: the micro-kernel broadcasts straight from
    // its MR rows (MR unit-stride streams the prefetcher follows). Only a ragged last panel is
    // packed, for its zero padding.
    const int64_t direct_rows = std::is_same<T, Acc>::value && g.sak == 1 ? rows / MR * MR : 0;
    for (int64_t k0 = 0; k0 < g.K; k0 += bl.kc) {
      const int64_t kc = std::min(bl.kc, g.K - k0);
      const bool first = k0 == 0;
      const bool last = k0 + kc >= g.K;
      if (rows > direct_rows) pack_a<T, Acc, MR>(g, i0 + direct_rows, rows - direct_rows, k0, kc, pa);
      pack_b<T, Acc, NR>(g, j0, cols, k0, kc, pb);
      for (int64_t ir = 0; ir < rows; ir += MR) {
        const int64_t mr = std::min<int64_t>(MR, rows - ir);
        for (int64_t jr = 0; jr < cols; jr += NR) {
          const int64_t nr = std::min<int64_t>(NR, cols - jr);
          Acc* part = pc + ir * bl.nc + jr;
          if constexpr (std::is_same<T, Acc>::value) {
            if (ir < direct_rows) {
              any_tile<T, Acc, VB, MR, true>(kc, g.a + (i0 + ir) * g.sam + k0, g.sam, pb + jr * kc, part, bl.nc,
                                             first, last, g, i0 + ir, j0 + jr, mr, nr);
              continue;
            }
          }
          any_tile<T, Acc, VB, MR, false>(kc, pa + (ir - direct_rows) * kc, MR, pb + jr * kc, part, bl.nc,
                                          first, last, g, i0 + ir, j0 + jr, mr, nr);
        }
      }
    }
  }
}

// The register tile depends on the register file, so the GEMM has its own three-way dispatch
// rather than TORCHEXT_CPU_DISPATCH (which instantiates one body per level): AVX-512 has 32
// 64-byte registers (12 x 2 accumulators), AVX2 and SSE have 16 (6 x 2 accumulators).
#if TORCHEXT_X86_SIMD
template <typename T, typename... Args>
TORCHEXT_TARGET_AVX512 void gemm_tasks_avx512(Args... args) {
  gemm_tasks_impl<T, 64, 12>(args...);
}
template <typename T, typename... Args>
TORCHEXT_TARGET_AVX2 void gemm_tasks_avx2(Args... args) {
  gemm_tasks_impl<T, 32, 6>(args...);
}
#endif
template <typename T, typename... Args>
void gemm_tasks_default(Args... args) {
  gemm_tasks_impl<T, 16, 6>(args...);
}

#if TORCHEXT_X86_SIMD
// bfloat16 on CPUs with AVX512_BF16: VDPBF16PS multiplies pairs of bf16 values and adds both
// products to a float32 lane, twice the multiply rate of converting to float first. Both operands
// are packed as k pairs: for each pair, MR (A) or NR (B) 32-bit words, each holding the values at
// k and k + 1 (the low half is k); an odd K is padded with a zero pair half. The products are
// exact in float32, so this differs from the float path only in the order of the additions and in
// flushing float32 subnormals to zero, which the instruction does (oneDNN, behind torch's bf16
// matmul on such CPUs, uses the same instruction).
constexpr int kBf16MR = 12, kBf16NR = 32;

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
#endif  // TORCHEXT_X86_SIMD

struct Tile {
  int vb, mr;
};
inline Tile tile_for_level() {
  switch (cpu::level()) {
    case cpu::Level::AVX512: return {64, 12};
    case cpu::Level::AVX2: return {32, 6};
    default: return {16, 6};
  }
}

// Few rows (batch-1 inference, a single sample's backward): packing would move the whole weight
// twice more than the arithmetic reads it, and the register tiles would be mostly padding. These
// read each operand once, in its storage order, with vectorised dot products or row updates;
// columns [j0, j1) of every row.
constexpr int64_t kSmallRows = 4;

template <typename T>
TORCHEXT_INLINE T finish(math_t<T> v, const LinearProblem<T>* g, int64_t j) {
  if (g->bias) v += static_cast<math_t<T>>(g->bias[j * g->sbias]);
  if (g->relu) v = v < math_t<T>(0) ? math_t<T>(0) : v;  // NaN passes through, as in torch.relu
  return static_cast<T>(v);
}

// A and B both contiguous along K (the forward): each output a dot product over K.
template <typename T>
TORCHEXT_INLINE void small_rows_dot_impl(const LinearProblem<T>* g, int64_t j0, int64_t j1) {
  using Acc = math_t<T>;
  const int64_t K = g->K;
  for (int64_t j = j0; j < j1; ++j) {
    const T* b = g->b + j * g->sbn;
    for (int64_t i = 0; i < g->M; ++i) {
      const T* a = g->a + i * g->sam;
      Acc sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t k = 0; k < K; ++k) sum += static_cast<Acc>(a[k]) * static_cast<Acc>(b[k]);
      g->c[i * g->N + j] = finish<T>(sum, g, j);
    }
  }
}
TORCHEXT_CPU_DISPATCH(small_rows_dot_kernel, small_rows_dot_impl)

// The same for float32 and float64 with up to kDotRows rows, wherever the AVX-512 kernel below does
// not run (float32 below AVX-512, float64 everywhere): 32-byte GCC vectors from AVX2 up, 16-byte
// ones at the baseline ISA (SSE2 on x86, NEON on aarch64), its register width (32-byte vectors
// there were split and spilled, about 3x slower at one row). Groups of up to 4 input rows against
// 2 weight rows at a time: 8 accumulators, each loaded weight vector serving every row of the group
// and each input vector both weight rows, so the sums are not one add-latency chain and the weight
// rows are read from memory once (later groups find them in L1). The last K % width values are
// added in scalar code.
template <typename T, int VB, int MR, int NJ>
TORCHEXT_INLINE void rows_dot_block(const LinearProblem<T>* g, int64_t r0, int64_t j) {
  constexpr int W = VB / sizeof(T);
  using V = typename VecOf<T, VB>::type;
  const int64_t K = g->K;
  const T* a = g->a + r0 * g->sam;
  const T* w = g->b + j * g->sbn;
  V acc[NJ][MR];
#pragma GCC unroll 2
  for (int n = 0; n < NJ; ++n)
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) acc[n][r] = V{};
  int64_t k = 0;
  for (; k + W <= K; k += W) {
    V b[NJ];
#pragma GCC unroll 2
    for (int n = 0; n < NJ; ++n) std::memcpy(&b[n], w + n * g->sbn + k, sizeof(V));
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      V x;
      std::memcpy(&x, a + r * g->sam + k, sizeof(V));
#pragma GCC unroll 2
      for (int n = 0; n < NJ; ++n) acc[n][r] += x * b[n];
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int n = 0; n < NJ; ++n) {
      T sum = 0;
      for (int e = 0; e < W; ++e) sum += acc[n][r][e];
      for (int64_t t = k; t < K; ++t) sum += a[r * g->sam + t] * w[n * g->sbn + t];
      g->c[(r0 + r) * g->N + j + n] = finish<T>(sum, g, j + n);
    }
  }
}

template <typename T, int VB, int NJ>
TORCHEXT_INLINE void rows_dot_group(const LinearProblem<T>* g, int64_t r0, int64_t rows, int64_t j) {
  switch (rows) {
    case 1: return rows_dot_block<T, VB, 1, NJ>(g, r0, j);
    case 2: return rows_dot_block<T, VB, 2, NJ>(g, r0, j);
    case 3: return rows_dot_block<T, VB, 3, NJ>(g, r0, j);
    default: return rows_dot_block<T, VB, 4, NJ>(g, r0, j);
  }
}

// Columns [j0, j1) of every row (M <= kDotRows), float or double.
template <typename T, int VB>
TORCHEXT_INLINE void rows_dot_vec(const LinearProblem<T>* g, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    for (int64_t r = 0; r < g->M; r += 4) rows_dot_group<T, VB, 2>(g, r, std::min<int64_t>(4, g->M - r), j);
  }
  if (j < j1) {
    for (int64_t r = 0; r < g->M; r += 4) rows_dot_group<T, VB, 1>(g, r, std::min<int64_t>(4, g->M - r), j);
  }
}
template <typename T>
TORCHEXT_INLINE void rows_dot32_impl(const LinearProblem<T>* g, int64_t j0, int64_t j1) {
  rows_dot_vec<T, 32>(g, j0, j1);
}
template <typename T>
TORCHEXT_INLINE void rows_dot16_impl(const LinearProblem<T>* g, int64_t j0, int64_t j1) {
  rows_dot_vec<T, 16>(g, j0, j1);
}
TORCHEXT_CPU_DISPATCH(rows_dot32_kernel, rows_dot32_impl)
TORCHEXT_CPU_DISPATCH(rows_dot16_kernel, rows_dot16_impl)

// B contiguous along N (dX = dY W reads W^T so): each row a sum over K of B's rows, scaled.
template <typename T>
TORCHEXT_INLINE void small_rows_axpy_impl(const LinearProblem<T>* g, int64_t j0, int64_t j1, math_t<T>* acc) {
  using Acc = math_t<T>;
  const int64_t w = j1 - j0;
  const int64_t K = g->K;
  for (int64_t i = 0; i < g->M; ++i) {
    const T* a = g->a + i * g->sam;
    for (int64_t c = 0; c < w; ++c) acc[c] = 0;
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {  // four rows of B per pass over the accumulators
      const Acc a0 = static_cast<Acc>(a[k * g->sak]), a1 = static_cast<Acc>(a[(k + 1) * g->sak]);
      const Acc a2 = static_cast<Acc>(a[(k + 2) * g->sak]), a3 = static_cast<Acc>(a[(k + 3) * g->sak]);
      const T* b0 = g->b + k * g->sbk + j0;
      const T* b1 = b0 + g->sbk;
      const T* b2 = b1 + g->sbk;
      const T* b3 = b2 + g->sbk;
#pragma omp simd
      for (int64_t c = 0; c < w; ++c) {
        acc[c] += a0 * static_cast<Acc>(b0[c]) + a1 * static_cast<Acc>(b1[c]) + a2 * static_cast<Acc>(b2[c]) +
                  a3 * static_cast<Acc>(b3[c]);
      }
    }
    for (; k < K; ++k) {
      const Acc aik = static_cast<Acc>(a[k * g->sak]);
      const T* b = g->b + k * g->sbk + j0;
#pragma omp simd
      for (int64_t c = 0; c < w; ++c) acc[c] += aik * static_cast<Acc>(b[c]);
    }
    T* out = g->c + i * g->N + j0;
    for (int64_t c = 0; c < w; ++c) out[c] = finish<T>(acc[c], g, j0 + c);
  }
}
TORCHEXT_CPU_DISPATCH(small_rows_axpy_kernel, small_rows_axpy_impl)

// Few rows, forward layout (input and weight rows contiguous along K), on AVX-512: each output a
// dot product of an input row and a weight row, straight from memory. No packing, so the weight
// is read once (the packed GEMM would rearrange all of it for a handful of rows). Up to 8 input
// rows against NJ = 2 weight rows at a time: each weight vector loaded serves every row, each
// input vector both weight rows. 9 to 16 rows go as two groups, one after the other on the same
// two weight rows, which are then still in L1. The last K % step values come through masked loads
// (zeros past the end add nothing). (Walking K in L1-sized blocks, with the sums parked in a
// buffer, was tried for bf16: slower at 4096 x 4096, 2 to 8 rows 0.76-0.95x torch against
// 0.91-1.48x, the weight then being read in short runs.)
//
// Two element policies: bfloat16 on CPUs with AVX512_BF16, 32 values (16 pairs) per VDPBF16PS;
// the pairs are (k, k + 1) in both operands, so a 32-value load of each lines them up, and the
// arithmetic is the pair GEMM's (exact products, float32 sums in another order). float32, 16
// values per FMA.
constexpr int64_t kDotRows = 16;

#if TORCHEXT_X86_SIMD
struct Bf16Dot {
  using T = c10::BFloat16;
  using V = __m512bh;
  static constexpr int kStep = 32;
  TORCHEXT_TARGET_AVX512_BF16 static V load(const T* p) { return (V)_mm512_loadu_si512(p); }
  TORCHEXT_TARGET_AVX512_BF16 static V load_first(const T* p, int64_t n) {
    return (V)_mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t{1} << n) - 1), p);
  }
  TORCHEXT_TARGET_AVX512_BF16 static __m512 madd(__m512 acc, V x, V w) { return _mm512_dpbf16_ps(acc, x, w); }
};

struct F32Dot {
  using T = float;
  using V = __m512;
  static constexpr int kStep = 16;
  TORCHEXT_TARGET_AVX512 static V load(const T* p) { return _mm512_loadu_ps(p); }
  TORCHEXT_TARGET_AVX512 static V load_first(const T* p, int64_t n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  TORCHEXT_TARGET_AVX512 static __m512 madd(__m512 acc, V x, V w) { return _mm512_fmadd_ps(x, w, acc); }
};

// Rows [r0, r0 + MR) x weight rows [j, j + NJ). (The AVX512_BF16 target is a superset of the
// AVX-512 one; the float32 policy emits no bf16 instructions.)
template <class D, int MR, int NJ>
TORCHEXT_TARGET_AVX512_BF16 inline void dot_block(const LinearProblem<typename D::T>& g, int64_t r0, int64_t j) {
  using T = typename D::T;
  const int64_t K = g.K;
  const T* a = g.a + r0 * g.sam;
  const T* w = g.b + j * g.sbn;
  __m512 acc[NJ][MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int n = 0; n < NJ; ++n) acc[n][r] = _mm512_setzero_ps();
  }
  int64_t k = 0;
  for (; k + D::kStep <= K; k += D::kStep) {
    typename D::V b[NJ];
#pragma GCC unroll 2
    for (int n = 0; n < NJ; ++n) b[n] = D::load(w + n * g.sbn + k);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const typename D::V x = D::load(a + r * g.sam + k);
#pragma GCC unroll 2
      for (int n = 0; n < NJ; ++n) acc[n][r] = D::madd(acc[n][r], x, b[n]);
    }
  }
  if (k < K) {
    typename D::V b[NJ];
#pragma GCC unroll 2
    for (int n = 0; n < NJ; ++n) b[n] = D::load_first(w + n * g.sbn + k, K - k);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const typename D::V x = D::load_first(a + r * g.sam + k, K - k);
#pragma GCC unroll 2
      for (int n = 0; n < NJ; ++n) acc[n][r] = D::madd(acc[n][r], x, b[n]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int n = 0; n < NJ; ++n) {
      g.c[(r0 + r) * g.N + j + n] = finish<T>(_mm512_reduce_add_ps(acc[n][r]), &g, j + n);
    }
  }
}

template <class D, int NJ>
TORCHEXT_TARGET_AVX512_BF16 inline void dot_rows(const LinearProblem<typename D::T>& g, int64_t r0, int64_t rows,
                                                 int64_t j) {
  switch (rows) {
    case 1: return dot_block<D, 1, NJ>(g, r0, j);
    case 2: return dot_block<D, 2, NJ>(g, r0, j);
    case 3: return dot_block<D, 3, NJ>(g, r0, j);
    case 4: return dot_block<D, 4, NJ>(g, r0, j);
    case 5: return dot_block<D, 5, NJ>(g, r0, j);
    case 6: return dot_block<D, 6, NJ>(g, r0, j);
    case 7: return dot_block<D, 7, NJ>(g, r0, j);
    default: return dot_block<D, 8, NJ>(g, r0, j);
  }
}

// Columns [j0, j1) of every row (M <= kDotRows).
template <class D>
TORCHEXT_TARGET_AVX512_BF16 void rows_dot(const LinearProblem<typename D::T>* g, int64_t j0, int64_t j1) {
  const int64_t first = g->M <= 8 ? g->M : (g->M + 1) / 2;  // two groups of at most 8 rows
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    dot_rows<D, 2>(*g, 0, first, j);
    if (first < g->M) dot_rows<D, 2>(*g, first, g->M - first, j);
  }
  if (j < j1) {
    dot_rows<D, 1>(*g, 0, first, j);
    if (first < g->M) dot_rows<D, 1>(*g, first, g->M - first, j);
  }
}
#endif  // TORCHEXT_X86_SIMD

// Columns per parallel task for the few-rows kernels: enough to amortise a task, about 64K
// multiply-adds, and at least `at_least` (the dot kernels take columns in pairs).
template <typename T>
int64_t columns_per_task(const LinearProblem<T>& g, int64_t at_least) {
  return std::max<int64_t>(at_least, 65536 / std::max<int64_t>(1, g.M * g.K));
}

// Runs g (at most kDotRows rows, forward layout) through dot_block when T has a policy and this
// CPU runs it; returns false otherwise.
template <typename T>
bool run_rows_dot(const LinearProblem<T>& g) {
#if TORCHEXT_X86_SIMD
  using D = std::conditional_t<std::is_same<T, c10::BFloat16>::value, Bf16Dot,
                               std::conditional_t<std::is_same<T, float>::value, F32Dot, void>>;
  if constexpr (std::is_void<D>::value) {
    return false;
  } else {
    const bool available = std::is_same<D, Bf16Dot>::value ? cpu::use_avx512_bf16()
                                                           : cpu::level() == cpu::Level::AVX512;
    if (!available) return false;
    at::parallel_for(0, g.N, columns_per_task(g, 2), [&](int64_t j0, int64_t j1) { rows_dot<D>(&g, j0, j1); });
    return true;
  }
#else
  (void)g;
  return false;
#endif
}

// Runs g through the few-rows kernels and returns true when its layout suits them.
template <typename T>
bool run_small_rows(const LinearProblem<T>& g) {
  const bool dot = g.sak == 1 && g.sbk == 1;
  if (dot && g.M <= kDotRows && run_rows_dot(g)) return true;
  if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value) {
    if (dot && g.M <= kDotRows) {
      // 32-byte vectors from AVX2 up (float64 on AVX-512 too), 16-byte ones at the baseline.
      const bool wide = cpu::level() != cpu::Level::Default;
      at::parallel_for(0, g.N, columns_per_task(g, 2), [&](int64_t j0, int64_t j1) {
        if (wide) {
          rows_dot32_kernel<T>(&g, j0, j1);
        } else {
          rows_dot16_kernel<T>(&g, j0, j1);
        }
      });
      return true;
    }
  }
  // Otherwise (half and integer types, or the dX layout with W^T's rows along N), measured crossover
  // with the packed GEMM: 4 rows in float32; a single row in bfloat16, whose GEMM (VDPBF16PS pairs)
  // wins from two rows on.
  if (g.M > (sizeof(T) == 2 ? 1 : kSmallRows)) return false;
  if (!dot && g.sbn != 1) return false;
  const int64_t grain = columns_per_task(g, 1);
  if (dot) {
    at::parallel_for(0, g.N, grain, [&](int64_t j0, int64_t j1) { small_rows_dot_kernel<T>(&g, j0, j1); });
  } else {
    at::parallel_for(0, g.N, std::max<int64_t>(grain, 64), [&](int64_t j0, int64_t j1) {
      std::vector<math_t<T>> acc(j1 - j0);
      small_rows_axpy_kernel<T>(&g, j0, j1, acc.data());
    });
  }
  return true;
}

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

template <typename T>
void run_gemm(const LinearProblem<T>& g) {
  if (run_small_rows(g)) return;
  using Acc = math_t<T>;
  const Tile tile = tile_for_level();
  // The bf16 pair kernel uses the AVX-512 tile (MR 12, NR 32 floats); kc (512) is even, so every
  // slice but the last holds whole pairs.
  const bool bf16_pairs = TORCHEXT_X86_SIMD && std::is_same<T, c10::BFloat16>::value && cpu::use_avx512_bf16();
  const int64_t mr = tile.mr;
  const int64_t nr = 2 * tile.vb / static_cast<int64_t>(sizeof(Acc));
  Blocking bl;
  // An MR x kc A panel (24 KiB) stays in L1, the kc x nc B block (512 KiB) in L2; bf16 pairs take
  // half the bytes, so twice the columns (which halves how often each task repacks its A rows).
  bl.kc = 512;
  bl.nc = bf16_pairs ? 512 : 256;
  // Row tiles of up to 288 rows, balanced: each B block is packed once per row tile, so a batch of
  // up to 288 rows packs the weight once (tiles of 96 packed it three times at 256 rows, and a
  // 100-row dW twice, the second time for 4 rows). The A micro-panel in use stays in L1 either way.
  const int64_t row_tiles = std::max<int64_t>(1, (g.M + 287) / 288);
  bl.mc = ((g.M + row_tiles - 1) / row_tiles + mr - 1) / mr * mr;
  bl.nc = std::min<int64_t>(bl.nc, (g.N + nr - 1) / nr * nr);
  bl.tiles_m = (g.M + bl.mc - 1) / bl.mc;
  bl.tiles_n = (g.N + bl.nc - 1) / bl.nc;
  // Small problems: cut N (then M) finer so that every thread gets a task.
  const int64_t threads = at::get_num_threads();
  if (bl.tiles_m * bl.tiles_n < threads) {
    const int64_t want_n = (threads + bl.tiles_m - 1) / bl.tiles_m;
    bl.nc = std::max<int64_t>(nr, ((g.N + want_n - 1) / want_n + nr - 1) / nr * nr);
    bl.tiles_n = (g.N + bl.nc - 1) / bl.nc;
    if (bl.tiles_m * bl.tiles_n < threads) {
      const int64_t want_m = (threads + bl.tiles_n - 1) / bl.tiles_n;
      bl.mc = std::max<int64_t>(mr, ((g.M + want_m - 1) / want_m + mr - 1) / mr * mr);
      bl.tiles_m = (g.M + bl.mc - 1) / bl.mc;
    }
  }
  const int64_t kc_alloc = std::min(bl.kc, g.K);
  const bool need_partial = g.K > bl.kc;
  at::parallel_for(0, bl.tiles_m * bl.tiles_n, 1, [&](int64_t begin, int64_t end) {
    auto alloc = [](int64_t n) {
      const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(Acc) + 63) / 64 * 64;
      return std::unique_ptr<Acc, AlignedFree>(static_cast<Acc*>(std::aligned_alloc(64, bytes)));
    };
    auto pa = alloc(bl.mc * kc_alloc);
    auto pb = alloc(bl.nc * kc_alloc);
    auto pc = alloc(need_partial ? bl.mc * bl.nc : 1);
    TORCH_CHECK(pa && pb && pc, "torchext.linear: out of memory for packing buffers");
#if TORCHEXT_X86_SIMD
    if constexpr (std::is_same<T, c10::BFloat16>::value) {
      if (bf16_pairs) {  // (kc + 1) / 2 pair words per lane fit where kc floats do
        gemm_tasks_bf16(&g, &bl, begin, end, reinterpret_cast<uint32_t*>(pa.get()),
                        reinterpret_cast<uint32_t*>(pb.get()), pc.get());
        return;
      }
    }
    switch (cpu::level()) {
      case cpu::Level::AVX512: gemm_tasks_avx512<T>(&g, &bl, begin, end, pa.get(), pb.get(), pc.get()); return;
      case cpu::Level::AVX2: gemm_tasks_avx2<T>(&g, &bl, begin, end, pa.get(), pb.get(), pc.get()); return;
      default: break;
    }
#endif
    gemm_tasks_default<T>(&g, &bl, begin, end, pa.get(), pb.get(), pc.get());
  });
}

}  // namespace

namespace {

// Integer Linear, which torch computes on the CPU: products and sums wrap around in the integer
// type, as torch's do. They are accumulated in an unsigned type at least as wide (uint32_t, or
// uint64_t for 64-bit types), whose arithmetic is modular, so the result converted to T is the
// exact one modulo 2^bits(T), for signed and unsigned types alike.
//
// Small problems take one dot product per output. Others go through a small register-tiled GEMM:
// W^T is packed once into column panels of kIntCols<A> columns, widened to A and zero-padded; each
// output tile of kIntRows rows by one panel keeps its accumulators in vector registers over the
// whole K loop (8 x 2 vectors of 512 bits), with the tile's rows of x packed k-major and
// zero-padded beside it.
constexpr int64_t kIntRows = 8;
template <typename A>
constexpr int64_t kIntCols = 128 / sizeof(A);  // two 512-bit vectors of A per row

template <typename T>
using IntAcc = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;

template <typename T>
TORCHEXT_INLINE IntAcc<T> widen_int(T v) {  // sign- (or zero-) extended, then taken modulo 2^bits(IntAcc)
  return static_cast<IntAcc<T>>(static_cast<std::make_signed_t<IntAcc<T>>>(v));
}

// acc[r][n] = sum_k xk[k][r] * panel[k][n] for one tile (xk: [K][kIntRows], panel: [K][kIntCols]).
template <typename A>
TORCHEXT_INLINE void integer_tile_impl(const A* __restrict__ xk, const A* __restrict__ panel, int64_t K,
                                       A* __restrict__ acc) {
  constexpr int64_t C = kIntCols<A>;
  A sum[kIntRows][C] = {};
  for (int64_t k = 0; k < K; ++k) {
    const A* __restrict__ w = panel + k * C;
    const A* __restrict__ xr = xk + k * kIntRows;
#pragma GCC unroll 8
    for (int64_t r = 0; r < kIntRows; ++r) {
      const A a = xr[r];
#pragma GCC unroll 32
      for (int64_t n = 0; n < C; ++n) sum[r][n] += a * w[n];
    }
  }
  for (int64_t r = 0; r < kIntRows; ++r)
    for (int64_t n = 0; n < C; ++n) acc[r * C + n] = sum[r][n];
}
TORCHEXT_CPU_DISPATCH(integer_tile_kernel, integer_tile_impl)

// Every output as one dot product of an x row and a W row (both contiguous along k).
template <typename T>
TORCHEXT_INLINE void integer_dots_impl(const T* x, const T* w, const T* bias, T* out, int64_t M, int64_t N,
                                       int64_t K, int64_t out_stride, bool relu) {
  using A = IntAcc<T>;
  for (int64_t m = 0; m < M; ++m) {
    const T* __restrict__ xr = x + m * K;
    for (int64_t n = 0; n < N; ++n) {
      const T* __restrict__ wr = w + n * K;
      A sum = bias ? widen_int(bias[n]) : A(0);
      for (int64_t k = 0; k < K; ++k) sum += widen_int(xr[k]) * widen_int(wr[k]);
      const T v = static_cast<T>(sum);
      out[m * out_stride + n] = relu && v < T(0) ? T(0) : v;
    }
  }
}
TORCHEXT_CPU_DISPATCH(integer_dots_kernel, integer_dots_impl)

// out is [M, N] with unit column stride.
template <typename T>
void integer_linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out,
                    bool relu) {
  using A = IntAcc<T>;
  constexpr int64_t C = kIntCols<A>;
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();  // [N, K]
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), out_stride = out.stride(0);
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  const T* bp = bias ? b.const_data_ptr<T>() : nullptr;
  T* op = out.mutable_data_ptr<T>();
  if (M * N * K <= (int64_t(1) << 18)) {
    // Small problems: one dot product per output, single-threaded; packing would cost more than it saves.
    integer_dots_kernel<T>(xp, wp, bp, op, M, N, K, out_stride, relu);
    return;
  }
  const int64_t row_tiles = (M + kIntRows - 1) / kIntRows, col_tiles = (N + C - 1) / C;
  // The panels: panel p holds W^T's columns [p * C, p * C + C), k-major, widened, zero-padded.
  std::vector<A> panels(static_cast<size_t>(col_tiles * K * C), A(0));
  at::parallel_for(0, col_tiles, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t n = p * C; n < std::min(N, p * C + C); ++n)
        for (int64_t k = 0; k < K; ++k) panels[(p * K + k) * C + (n - p * C)] = widen_int(wp[n * K + k]);
  });
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, kIntRows * C * K));
  // Tiles numbered panel first, so that consecutive tiles (one thread's share) reuse a panel.
  at::parallel_for(0, row_tiles * col_tiles, grain, [&](int64_t t0, int64_t t1) {
    std::vector<A> xk(static_cast<size_t>(K * kIntRows));
    std::vector<A> acc(static_cast<size_t>(kIntRows * C));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m = (t % row_tiles) * kIntRows, p = t / row_tiles, n0 = p * C;
      const int64_t rows = std::min(kIntRows, M - m), cols = std::min(C, N - n0);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t r = 0; r < kIntRows; ++r) xk[k * kIntRows + r] = r < rows ? widen_int(xp[(m + r) * K + k]) : A(0);
      integer_tile_kernel<A>(xk.data(), panels.data() + p * K * C, K, acc.data());
      for (int64_t r = 0; r < rows; ++r) {
        T* o = op + (m + r) * out_stride + n0;
        for (int64_t n = 0; n < cols; ++n) {
          const T v = static_cast<T>(acc[r * C + n] + (bp ? widen_int(bp[n0 + n]) : A(0)));
          o[n] = relu && v < T(0) ? T(0) : v;
        }
      }
    }
  });
}

// out (a contiguous [M, N]) = input @ weight.T + bias [then ReLU], for checked arguments.
void linear_cpu_into(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias_opt,
                     at::Tensor out, bool relu) {
  const at::Tensor* bias = bias_opt.has_value() && bias_opt->defined() ? &*bias_opt : nullptr;
  if (linear_without_gemm(input, bias, out, relu)) return;
  if (at::isIntegralType(input.scalar_type(), /*includeBool=*/false)) {
    AT_DISPATCH_INTEGRAL_TYPES(input.scalar_type(), "torchext::linear", [&] {
      integer_linear<scalar_t>(input, weight, bias, out, relu);
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "torchext::linear", [&] {
    run_gemm(linear_problem<scalar_t>(input, weight, bias, out, relu));
  });
}

at::Tensor linear_cpu_impl(const char* op, const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias_opt, bool relu) {
  check_linear_args(op, input, weight, bias_opt);
  at::Tensor out = at::empty({input.size(0), weight.size(0)}, input.options());
  linear_cpu_into(input, weight, bias_opt, out, relu);
  return out;
}

at::Tensor linear_batched_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, bool relu) {
  check_linear_batched_args("linear_batched", input, weight, bias);
  const int64_t entries = input.size(0);
  at::Tensor out = at::empty({entries, input.size(1), weight.size(1)}, input.options());
  if (entries == 0) return out;
  // Every entry has entry 0's shapes, dtypes and device.
  const at::Tensor x0 = input.select(0, 0), w0 = weight.select(0, 0);
  const c10::optional<at::Tensor> b0 = batched_bias_entry(bias, 0);
  check_linear_args("linear_batched", x0, w0, b0);
  at::Tensor o0 = out.select(0, 0);
  std::function<void(int64_t, int64_t)> run;
  const bool integral = at::isIntegralType(input.scalar_type(), /*includeBool=*/false);
  if (integral || linear_without_gemm(x0, b0.has_value() ? &*b0 : nullptr, o0, relu)) {
    // Entry by entry, through views: every integer entry; or, when no GEMM is needed (the same for
    // every entry), the entries after 0, which linear_without_gemm has just written.
    const int64_t first = integral ? 0 : 1;
    run = [&, first](int64_t begin, int64_t end) {
      for (int64_t e = std::max(begin, first); e < end; ++e)
        linear_cpu_into(input.select(0, e), weight.select(0, e), batched_bias_entry(bias, e), out.select(0, e), relu);
    };
  } else {
    // Entry e's problem is entry 0's with its pointers moved by e strides of dim 0: no per-entry
    // tensor views (each costs an allocation, which dominated small entries).
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "torchext::linear_batched", [&] {
      const LinearProblem<scalar_t> base = linear_problem<scalar_t>(x0, w0, b0.has_value() ? &*b0 : nullptr, o0, relu);
      const int64_t sx = input.stride(0), sw = weight.stride(0), so = out.stride(0);
      const int64_t sb = b0.has_value() ? bias->stride(0) : 0;
      run = [base, sx, sw, so, sb](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          LinearProblem<scalar_t> p = base;
          p.a += e * sx;
          p.b += e * sw;
          if (p.bias) p.bias += e * sb;
          p.c += e * so;
          run_gemm(p);
        }
      };
    });
  }
  // Enough entries for every thread: one thread per entry (each GEMM then runs single-threaded, as
  // at::parallel_for does inside a parallel region); otherwise entry by entry, each GEMM parallel.
  if (entries >= at::get_num_threads())
    at::parallel_for(0, entries, 1, run);
  else
    run(0, entries);
  return out;
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  return linear_cpu_impl("linear", input, weight, bias, false);
}

at::Tensor linear_relu_cpu(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias) {
  return linear_cpu_impl("linear_relu", input, weight, bias, true);
}

// Column sums over rows [0, M) for columns [j0, j1) of a row-major [M, N] gradient; with a result,
// the gradient is first masked by result > 0 (threshold_backward) and the masked values stored.
// Each column is summed by exactly one thread in row order, so the result is deterministic. The
// sums are kept in double for every dtype: a float running sum over a long column (the bias grad
// of a big batch) drifts by about M * 2^-24 of its partial sums, 2e-4 for 100k rows of N(0, 1),
// where torch's pairwise float sum stays near 1e-5. The loop is memory bound, so it costs nothing.
template <typename T>
TORCHEXT_INLINE void column_sum_impl(const T* __restrict__ g, const T* __restrict__ r, T* __restrict__ masked,
                                     T* __restrict__ sums, int64_t M, int64_t N, int64_t j0, int64_t j1) {
  using Mt = math_t<T>;
  using Acc = double;
  constexpr int64_t kMaxCols = 256;
  Acc acc[kMaxCols];
  const int64_t w = j1 - j0;
  for (int64_t c = 0; c < w; ++c) acc[c] = Acc(0);
  for (int64_t i = 0; i < M; ++i) {
    const T* gi = g + i * N + j0;
    if (r) {
      const T* ri = r + i * N + j0;
      T* mi = masked + i * N + j0;
      // Two passes over the row (the second reads it back from L1): mixing the float select and
      // the double sums in one loop kept GCC from vectorising it (20x slower at 1024 x 1024).
      for (int64_t c = 0; c < w; ++c) mi[c] = static_cast<Mt>(ri[c]) <= Mt(0) ? T(0) : gi[c];
      for (int64_t c = 0; c < w; ++c) acc[c] += static_cast<Acc>(static_cast<Mt>(mi[c]));
    } else {
      for (int64_t c = 0; c < w; ++c) acc[c] += static_cast<Acc>(static_cast<Mt>(gi[c]));
    }
  }
  for (int64_t c = 0; c < w; ++c) sums[j0 + c] = static_cast<T>(acc[c]);
}
TORCHEXT_CPU_DISPATCH(column_sum_kernel, column_sum_impl)

void column_sums(const at::Tensor& g, const at::Tensor* result, at::Tensor* masked, at::Tensor& sums) {
  const int64_t M = g.size(0), N = g.size(1);
  if (N == 0) return;
  const int64_t threads = at::get_num_threads();
  // Column chunks of at most 256 (the accumulator array), at least 16 wide, about one per thread.
  const int64_t width = std::min<int64_t>(256, std::max<int64_t>(16, (N + threads - 1) / threads));
  const int64_t chunks = (N + width - 1) / width;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "torchext::linear_grad", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* rp = result ? result->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* mp = masked ? masked->mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* sp = sums.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ch = begin; ch < end; ++ch) {
        column_sum_kernel<scalar_t>(gp, rp, mp, sp, M, N, ch * width, std::min(N, (ch + 1) * width));
      }
    });
  });
}

at::Tensor linear_bias_grad_cpu(const at::Tensor& grad_output) {
  check_grad_args("linear_bias_grad", grad_output, nullptr);
  const at::Tensor g = grad_output.contiguous();
  at::Tensor sums = at::empty({g.size(1)}, g.options());
  column_sums(g, nullptr, nullptr, sums);
  return sums;
}

std::tuple<at::Tensor, at::Tensor> linear_relu_grad_cpu(const at::Tensor& grad_output, const at::Tensor& result) {
  check_grad_args("linear_relu_grad", grad_output, &result);
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor r = result.contiguous();
  at::Tensor masked = at::empty_like(g, at::MemoryFormat::Contiguous);
  at::Tensor sums = at::empty({g.size(1)}, g.options());
  column_sums(g, &r, &masked, sums);
  return {masked, sums};
}

}  // namespace
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("linear", &torchext::linear_cpu);
  m.impl("linear_relu", &torchext::linear_relu_cpu);
  m.impl("linear_bias_grad", &torchext::linear_bias_grad_cpu);
  m.impl("linear_relu_grad", &torchext::linear_relu_grad_cpu);
  m.impl("linear_batched", &torchext::linear_batched_cpu);
}
