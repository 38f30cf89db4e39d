// Few-row Linear on CPU (batch-1 inference, a single sample's backward), without packing.
//
// Work: 2*M*N*K FLOPs over M*K + N*K + M*N elements read or written, each operand read once in its
// storage order: memory bound on the weight for the few rows these take.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/convert.h"
#include "cpu/dispatch.h"
#include "cpu/gemm.h"
#include "cpu/gemm_tile.h"
#include "linear_problem.h"
#include "math_type.h"

namespace torchext {
namespace cpu {
namespace {

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

}  // namespace

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

template bool run_small_rows<float>(const LinearProblem<float>&);
template bool run_small_rows<double>(const LinearProblem<double>&);
template bool run_small_rows<c10::Half>(const LinearProblem<c10::Half>&);
template bool run_small_rows<c10::BFloat16>(const LinearProblem<c10::BFloat16>&);

}  // namespace cpu
}  // namespace torchext
