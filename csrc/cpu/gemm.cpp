// The packed CPU GEMM: out[M, N] = input[M, K] @ weight[N, K]^T (+ bias) (ReLU), blocked and packed.
//
// Work: 2*M*N*K FLOPs. Each MC x KC block of input and KC x NC block of weight is packed once per
// task into contiguous, zero-padded panels (converting half types to float), so the micro-kernel
// streams unit-stride data whatever the caller's strides, and transposed or sliced operands
// (as in the backward pass) need no copy. The micro-kernel keeps an MR x NR tile of the output in
// vector registers (MR*NR/VL accumulators) and does MR*NR FMAs per MR + NR loaded values.
// Bias and ReLU are applied while the tile is stored, so the output is written exactly once.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "cpu/dispatch.h"
#include "cpu/gemm.h"
#include "cpu/gemm_tile.h"
#include "linear_problem.h"
#include "math_type.h"

namespace torchext {
namespace cpu {
namespace {

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
// rather than TORCHEXT_CPU_DISPATCH (which instantiates one body per level), each level's kernel
// instantiated with its row of the tile table in gemm.h (which run_gemm's blocking reads too).
template <typename T, Level L, typename... Args>
TORCHEXT_INLINE void gemm_tasks_at(Args... args) {
  gemm_tasks_impl<T, tile_of(L).vb, tile_of(L).mr>(args...);
}
#if TORCHEXT_X86_SIMD
template <typename T, typename... Args>
TORCHEXT_TARGET_AVX512 void gemm_tasks_avx512(Args... args) {
  gemm_tasks_at<T, Level::AVX512>(args...);
}
template <typename T, typename... Args>
TORCHEXT_TARGET_AVX2 void gemm_tasks_avx2(Args... args) {
  gemm_tasks_at<T, Level::AVX2>(args...);
}
#endif
template <typename T, typename... Args>
void gemm_tasks_default(Args... args) {
  gemm_tasks_at<T, Level::Default>(args...);
}

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

template <typename T>
void run_gemm(const LinearProblem<T>& g) {
  if (run_small_rows(g)) return;
  using Acc = math_t<T>;
  // The bf16 pair kernel uses the AVX-512 tile (MR 12, NR 32 floats); kc (512) is even, so every
  // slice but the last holds whole pairs.
  const bool bf16_pairs = TORCHEXT_X86_SIMD && std::is_same<T, c10::BFloat16>::value && cpu::use_avx512_bf16();
  const Tile tile = bf16_pairs ? tile_of(Level::AVX512) : tile_for_level();
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

template void run_gemm<float>(const LinearProblem<float>&);
template void run_gemm<double>(const LinearProblem<double>&);
template void run_gemm<c10::Half>(const LinearProblem<c10::Half>&);
template void run_gemm<c10::BFloat16>(const LinearProblem<c10::BFloat16>&);

}  // namespace cpu
}  // namespace torchext
