// Building blocks of the packed CPU GEMMs (gemm.cpp, gemm_bf16.cpp): the task grid, packing
// operands into contiguous zero-padded panels, and storing a finished register tile.
//
// Each MC x KC block of input and KC x NC block of weight is packed once per task (converting half
// types to float), so the micro-kernels stream unit-stride data whatever the caller's strides, and
// transposed or sliced operands (as in the backward pass) need no copy. Packing moves each operand
// element once per task: (MC + NC) * KC loads and stores against 2 * MC * NC * KC FLOPs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/dispatch.h"
#include "linear_problem.h"
#include "math_type.h"

namespace torchext {
namespace cpu {

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

#if TORCHEXT_X86_SIMD
// The bfloat16 pair kernel (gemm_bf16.cpp) for tasks [task_begin, task_end): A and B packed as
// 32-bit pair words into pa, pb; pc the kc-slice partial sums, as gemm_tasks_impl in gemm.cpp.
void gemm_tasks_bf16(const LinearProblem<c10::BFloat16>* gp, const Blocking* blp, int64_t task_begin,
                     int64_t task_end, uint32_t* pa, uint32_t* pb, float* pc);
#endif

}  // namespace cpu
}  // namespace torchext
