// Test kernels for the Hopper PTX models of include/emu_ptx_sm90.h (and the tensor maps of
// include/emu_tma.h), reached through csrc/cuda/ptx_sm90.cuh and csrc/cuda/tma.h exactly as a
// kernel reaches them (the same names and signatures). The kernels place data with the TMA model
// (or copy a shared-memory image built by the test), hand back raw shared memory bytes, the
// observations of barrier phases and the raw accumulator registers of each thread, and
// tests/test_emulated_ptx_sm90.py checks them against references it writes from the PTX ISA's own
// layout text (the kernels here apply no layout formula to the results). Compiled like emu_ops.cpp
// (emu_runtime.h included first, `torchext` renamed `torchext_emu`, shared arrays poisoned).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/ptx_sm90.cuh"
#include "cuda/tma.h"

namespace {

namespace ptx = ::torchext::cuda::ptx;
using ::torchext::cuda::TmaBox;
using ::torchext::cuda::TmaMap;

void check_input(const at::Tensor& t, at::ScalarType dtype, const char* what) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == dtype, what, " must be a contiguous ", dtype, " tensor");
}

// A map of the 2-D tensor t (rows t.size(0), elements per row t.size(1), t.stride(0) elements
// apart; 2- or 4-byte elements), its base moved by base_shift bytes, its row stride row_bytes when
// non-zero.
TmaMap make_map(const at::Tensor& t, int64_t box_inner, int64_t box_outer, bool swizzle, int64_t base_shift = 0,
                int64_t row_bytes = 0) {
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1, "a 2-D tensor with contiguous rows");
  TmaBox box;
  box.base = static_cast<const unsigned char*>(t.data_ptr()) + base_shift;
  box.element_bytes = static_cast<int>(t.element_size());
  box.inner = static_cast<uint64_t>(t.size(1));
  box.outer = static_cast<uint64_t>(t.size(0));
  box.row_bytes = row_bytes != 0 ? static_cast<uint64_t>(row_bytes) : static_cast<uint64_t>(t.stride(0) * t.element_size());
  box.box_inner = static_cast<uint32_t>(box_inner);
  box.box_outer = static_cast<uint32_t>(box_outer);
  box.swizzle_128b = swizzle;
  TmaMap map;
  ::torchext::cuda::encode_tma_map(&map, box);
  return map;
}

// ------------------------------------------------------------------------------------ TMA boxes
// One copy of the box at (c0, c1) to dst_offset of a dynamic shared memory of smem_bytes (the
// barrier in its last 8 bytes); the block writes out all of it but the barrier. mode 0 is correct;
// 1: the barrier is in global memory; 2: the map's bytes are damaged; 3: the barrier is never
// initialized; 4: the destination is a static __shared__ array. (In modes 1 and 3 the copy is
// issued with no init or arrive.expect_tx before it, so that the copy's own check reports the
// barrier.)
uint64_t g_global_barrier = 0;

__global__ void tma_box_kernel(const __grid_constant__ TmaMap map, int c0, int c1, int dst_offset, int box_bytes,
                               int smem_bytes, int mode, uint8_t* out) {
  TORCHEXT_DYNAMIC_SMEM(smem);
  __shared__ __align__(1024) unsigned char static_smem[1024];
  uint64_t* bar = mode == 1 ? &g_global_barrier : reinterpret_cast<uint64_t*>(smem + smem_bytes - 8);
  TmaMap damaged = map;
  damaged.bytes[20] ^= 1;
  if (threadIdx.x == 0 && mode != 1 && mode != 3) {
    ptx::mbarrier_init(bar, 1);
    ptx::fence_barrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (mode != 1 && mode != 3) ptx::mbarrier_arrive_expect_tx(bar, static_cast<uint32_t>(box_bytes));
    void* dst = mode == 4 ? static_cast<void*>(static_smem) : static_cast<void*>(smem + dst_offset);
    ptx::tma_load_2d(dst, mode == 2 ? &damaged : &map, c0, c1, bar);
  }
  ptx::mbarrier_wait_parity(bar, 0);
  for (int i = threadIdx.x; i < smem_bytes - 8; i += blockDim.x) out[i] = smem[i];
}

at::Tensor tma_box(at::Tensor src, int64_t box_inner, int64_t box_outer, int64_t c0, int64_t c1, bool swizzle,
                   int64_t dst_offset, int64_t smem_bytes, int64_t mode, int64_t base_shift, int64_t row_bytes) {
  const TmaMap map = make_map(src, box_inner, box_outer, swizzle, base_shift, row_bytes);
  at::Tensor out = at::empty({smem_bytes - 8}, src.options().dtype(at::kByte));
  const int box_bytes = static_cast<int>(box_inner * box_outer * src.element_size());
  ::torchext_emu_rt::launch(dim3(1), dim3(32), static_cast<size_t>(smem_bytes), nullptr, tma_box_kernel, map,
                            static_cast<int>(c0), static_cast<int>(c1), static_cast<int>(dst_offset), box_bytes,
                            static_cast<int>(smem_bytes), static_cast<int>(mode), out.data_ptr<uint8_t>());
  return out;
}

// -------------------------------------------------------------------------------- mbarrier phases
// One thread walks a barrier of count 2 through three phases and records try_wait.parity(0) and
// (1) after each step (out[2 s], out[2 s + 1]):
//   s0 fresh | s1 arrive | s2 arrive (phase 0 completes) | s3 arrive.expect_tx(100) | s4 arrive
//   (arrivals done, 100 bytes pending) | s5 complete_tx(60) | s6 complete_tx(40) (phase 1 completes)
//   | s7 complete_tx(50) before any expect (tx-count -50) | s8 arrive.expect_tx(50) | s9 arrive
//   (phase 2 completes)
__global__ void phases_kernel(int32_t* out) {
  TORCHEXT_DYNAMIC_SMEM(smem);
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem);
  if (threadIdx.x != 0) return;
  int s = 0;
  auto record = [&] {
    out[2 * s] = ptx::mbarrier_try_wait_parity(bar, 0);
    out[2 * s + 1] = ptx::mbarrier_try_wait_parity(bar, 1);
    ++s;
  };
  ptx::mbarrier_init(bar, 2);
  record();
  ptx::mbarrier_arrive(bar);
  record();
  ptx::mbarrier_arrive(bar);
  record();
  ptx::mbarrier_arrive_expect_tx(bar, 100);
  record();
  ptx::mbarrier_arrive(bar);
  record();
  ptx::emu::mbarrier_complete_tx(bar, 60);
  record();
  ptx::emu::mbarrier_complete_tx(bar, 40);
  record();
  ptx::emu::mbarrier_complete_tx(bar, 50);
  record();
  ptx::mbarrier_arrive_expect_tx(bar, 50);
  record();
  ptx::mbarrier_arrive(bar);
  record();
}

at::Tensor mbarrier_phases() {
  at::Tensor out = at::full({10, 2}, -1, at::TensorOptions().dtype(at::kInt));
  ::torchext_emu_rt::launch(dim3(1), dim3(32), 64, nullptr, phases_kernel, out.data_ptr<int32_t>());
  return out;
}

// --------------------------------------------------------------------------- a ring of slots
// Warp 0 produces (thread 0 issues), the 128 threads after it consume, through S slots of 16 rows x
// 32 floats (2 KiB, a TMA box each) of a [tiles * 16, 32] tensor, as a pipelined GEMM's main loop
// does: full[s] (count 1, plus the box's bytes) says slot s holds tile t; empty[s] (count 128, one
// arrival per consumer) says it has been read. Consumer c copies elements 4c..4c+3 of each tile out.
// mode 0 is correct; the others are the usual mistakes:
//   1: the consumers do not wait on full          2: the producer does not wait on empty
//   3: the consumers wait on full with parity 1 first (a fresh barrier's "completed" phase)
//   4: the producer waits on empty with parity 0 first (never completes: a deadlock)
//   5: the producer reaches a __syncthreads that the waiting consumers never do (a deadlock)
template <int S>
__global__ void ring_kernel(const __grid_constant__ TmaMap map, int tiles, int mode, float* out) {
  TORCHEXT_DYNAMIC_SMEM(smem);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + S;
  float* slots = reinterpret_cast<float*>(smem + 1024);
  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      ptx::mbarrier_init(&full[s], 1);
      ptx::mbarrier_init(&empty[s], 128);
    }
    ptx::fence_barrier_init();
  }
  __syncthreads();
  if (tid < 32) {
    ptx::setmaxnreg_dec<40>();
    if (tid != 0) return;
    if (mode == 5) __syncthreads();
    for (int t = 0; t < tiles; ++t) {
      const int s = t % S;
      const uint32_t round = static_cast<uint32_t>(t / S) & 1;
      // The first round's waits (on fresh barriers, parity 1: complete) are skipped in modes 1 and
      // 3, whose consumers may have arrived already and so moved the barrier on a phase.
      const bool skip = mode == 2 || ((mode == 1 || mode == 3) && t < S);
      if (!skip) ptx::mbarrier_wait_parity(&empty[s], mode == 4 ? round : round ^ 1);
      ptx::mbarrier_arrive_expect_tx(&full[s], 2048);
      ptx::tma_load_2d(slots + s * 512, &map, 0, t * 16, &full[s]);
    }
    return;
  }
  ptx::setmaxnreg_inc<232>();
  const int c = tid - 32;
  for (int t = 0; t < tiles; ++t) {
    const int s = t % S;
    const uint32_t round = static_cast<uint32_t>(t / S) & 1;
    if (mode != 1) ptx::mbarrier_wait_parity(&full[s], mode == 3 ? round ^ 1 : round);
    for (int e = 0; e < 4; ++e) out[t * 512 + 4 * c + e] = slots[s * 512 + 4 * c + e];
    ptx::mbarrier_arrive(&empty[s]);
  }
}

at::Tensor mbarrier_ring(at::Tensor src, int64_t stages, int64_t mode) {
  check_input(src, at::kFloat, "src");
  TORCH_CHECK(src.dim() == 2 && src.size(1) == 32 && src.size(0) % 16 == 0, "src [tiles * 16, 32]");
  const int tiles = static_cast<int>(src.size(0) / 16);
  const TmaMap map = make_map(src, 32, 16, false);
  at::Tensor out = at::full_like(src, -1.0f);
  auto go = [&](auto kernel, int s) {
    ::torchext_emu_rt::launch(dim3(1), dim3(160), static_cast<size_t>(1024 + s * 2048), nullptr, kernel, map, tiles,
                              static_cast<int>(mode), out.data_ptr<float>());
  };
  switch (stages) {
    case 1: go(ring_kernel<1>, 1); break;
    case 2: go(ring_kernel<2>, 2); break;
    case 3: go(ring_kernel<3>, 3); break;
    default: TORCH_CHECK(false, "1, 2 or 3 stages");
  }
  return out;
}

// ------------------------------------------------------------------------------------- wgmma
template <int N, bool BF16, int TA, int TB>
void mma(float* d, uint64_t da, uint64_t db, int accumulate) {
  if constexpr (N == 128) {
    float(&r)[64] = *reinterpret_cast<float(*)[64]>(d);
    if constexpr (BF16) {
      ptx::wgmma_m64n128k16_bf16<TA, TB>(r, da, db, accumulate);
    } else {
      ptx::wgmma_m64n128k16_f16<TA, TB>(r, da, db, accumulate);
    }
  } else {
    float(&r)[128] = *reinterpret_cast<float(*)[128]>(d);
    if constexpr (BF16) {
      ptx::wgmma_m64n256k16_bf16<TA, TB>(r, da, db, accumulate);
    } else {
      ptx::wgmma_m64n256k16_f16<TA, TB>(r, da, db, accumulate);
    }
  }
}

template <int V>
using Int = std::integral_constant<int, V>;

// Calls f(Int<N>, Int<BF16>, Int<TA>, Int<TB>) for the runtime values.
template <typename F>
void with_shape(int64_t n, bool bf16, int64_t ta, int64_t tb, F&& f) {
  TORCH_CHECK(n == 128 || n == 256, "n is 128 or 256");
  TORCH_CHECK((ta == 0 || ta == 1) && (tb == 0 || tb == 1), "trans_a, trans_b are 0 or 1");
  auto l3 = [&](auto N, auto B, auto A) { tb ? f(N, B, A, Int<1>{}) : f(N, B, A, Int<0>{}); };
  auto l2 = [&](auto N, auto B) { ta ? l3(N, B, Int<1>{}) : l3(N, B, Int<0>{}); };
  auto l1 = [&](auto N) { bf16 ? l2(N, Int<1>{}) : l2(N, Int<0>{}); };
  n == 128 ? l1(Int<128>{}) : l1(Int<256>{});
}

// The accumulator registers in and out: regs [groups, 128, N/2], thread t of warpgroup g starting
// from c_regs[g][t] and leaving its registers in out[g][t]; the test maps them to D's elements.
//
// wgmma from tiles the TMA model placed: A (64 x K) and B (K x N) from global memory in the layout
// of their major-ness (A K-major: a[64][K]; M-major: a[K][64]; B K-major: b[N][K]; N-major:
// b[K][N], 16-bit patterns), K / 64 k-blocks of one TMA phase each, 4 wgmma (k16) per k-block.
// SWZ 1, the 128-byte swizzle: K-major tiles are one box of 64 K-elements (128 bytes) x rows, 8-row
// atoms 1024 bytes apart (SBO), k-step +32 bytes; MN-major tiles are boxes of 64 M/N-elements x 64
// K rows (8 KiB each) 8 KiB apart (LBO), 8 K rows 1024 bytes apart (SBO), k-step +2048 bytes.
// SWZ 0, no swizzle (the "interleaved" core matrices of 8 x 16 bytes): K-major tiles are boxes of 8
// K-elements x rows, rows 16 bytes apart (8-row groups SBO = 128 apart), boxes LBO = rows * 16 apart,
// k-step 2 boxes; MN-major tiles are boxes of 8 M/N-elements x 64 K rows (K rows 16 bytes apart,
// 8-row groups LBO = 128 apart) 1024 bytes apart (SBO), k-step +256 bytes. accumulate_first is the
// first wgmma's `accumulate` (the later ones accumulate).
template <int N, bool BF16, int TA, int TB, int SWZ>
__global__ void wgmma_tma_kernel(const __grid_constant__ TmaMap map_a, const __grid_constant__ TmaMap map_b,
                                 int k_total, int accumulate_first, const float* c_regs, float* out) {
  TORCHEXT_DYNAMIC_SMEM(smem);
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem);
  unsigned char* sa = smem + 1024;
  unsigned char* sb = sa + 8192;
  const int tid = threadIdx.x;
  const int wg_thread = tid % 128, group = tid / 128;
  constexpr int kRegs = N / 2;
  float d[kRegs];
  for (int i = 0; i < kRegs; ++i) d[i] = c_regs[(group * 128 + wg_thread) * kRegs + i];
  if (tid == 0) {
    ptx::mbarrier_init(bar, 1);
    ptx::fence_barrier_init();
  }
  __syncthreads();
  const uint32_t a_lbo = SWZ ? (TA ? 8192 : 16) : (TA ? 128 : 1024);
  const uint32_t a_sbo = SWZ ? 1024 : (TA ? 1024 : 128);
  const uint32_t a_step = SWZ ? (TA ? 2048 : 32) : (TA ? 256 : 2 * 1024);
  const uint32_t b_lbo = SWZ ? (TB ? 8192 : 16) : (TB ? 128 : N * 16);
  const uint32_t b_sbo = SWZ ? 1024 : (TB ? 1024 : 128);
  const uint32_t b_step = SWZ ? (TB ? 2048 : 32) : (TB ? 256 : 2 * N * 16);
  const ptx::Swizzle swz = SWZ ? ptx::Swizzle::k128B : ptx::Swizzle::kNone;
  for (int kb = 0; kb < k_total / 64; ++kb) {
    if (tid == 0) {
      ptx::mbarrier_arrive_expect_tx(bar, (64 + N) * 64 * 2);
      if (SWZ) {
        if (TA) {
          ptx::tma_load_2d(sa, &map_a, 0, kb * 64, bar);
        } else {
          ptx::tma_load_2d(sa, &map_a, kb * 64, 0, bar);
        }
        if (TB) {
          for (int j = 0; j < N / 64; ++j) ptx::tma_load_2d(sb + j * 8192, &map_b, j * 64, kb * 64, bar);
        } else {
          ptx::tma_load_2d(sb, &map_b, kb * 64, 0, bar);
        }
      } else {
        for (int j = 0; j < 8; ++j) {
          if (TA) {
            ptx::tma_load_2d(sa + j * 1024, &map_a, 8 * j, kb * 64, bar);
          } else {
            ptx::tma_load_2d(sa + j * 1024, &map_a, kb * 64 + 8 * j, 0, bar);
          }
        }
        if (TB) {
          for (int j = 0; j < N / 8; ++j) ptx::tma_load_2d(sb + j * 1024, &map_b, 8 * j, kb * 64, bar);
        } else {
          for (int j = 0; j < 8; ++j) ptx::tma_load_2d(sb + j * N * 16, &map_b, kb * 64 + 8 * j, 0, bar);
        }
      }
    }
    ptx::mbarrier_wait_parity(bar, static_cast<uint32_t>(kb) & 1);
    ptx::wgmma_fence();
    for (int ks = 0; ks < 4; ++ks) {
      const uint64_t da = ptx::smem_desc(sa + ks * a_step, a_lbo, a_sbo, swz);
      const uint64_t db = ptx::smem_desc(sb + ks * b_step, b_lbo, b_sbo, swz);
      mma<N, BF16, TA, TB>(d, da, db, (kb == 0 && ks == 0) ? accumulate_first : 1);
    }
    ptx::wgmma_commit();
    ptx::wgmma_wait<0>();
    __syncthreads();  // every warpgroup has read the tiles before the next k-block's copies
  }
  for (int i = 0; i < kRegs; ++i) out[(group * 128 + wg_thread) * kRegs + i] = d[i];
}

at::Tensor wgmma_tma(at::Tensor a, at::Tensor b, at::Tensor c_regs, int64_t n, bool bf16, int64_t trans_a,
                     int64_t trans_b, bool swizzle, int64_t accumulate_first) {
  check_input(a, at::kShort, "a");
  check_input(b, at::kShort, "b");
  check_input(c_regs, at::kFloat, "c_regs");
  const int64_t k = trans_a ? a.size(0) : a.size(1);
  TORCH_CHECK(k % 64 == 0 && a.numel() == 64 * k && b.numel() == n * k, "a 64 x K, b K x N, K a multiple of 64");
  TORCH_CHECK(c_regs.dim() == 3 && c_regs.size(1) == 128 && c_regs.size(2) == n / 2 && c_regs.size(0) <= 2,
              "c_regs [groups, 128, N/2]");
  const int64_t groups = c_regs.size(0);
  const int box_a = swizzle ? 64 : 8, box_b = swizzle ? 64 : 8;
  const TmaMap map_a = make_map(a, box_a, 64, swizzle);
  const TmaMap map_b = make_map(b, box_b, trans_b ? 64 : n, swizzle);
  at::Tensor out = at::empty_like(c_regs);
  with_shape(n, bf16, trans_a, trans_b, [&](auto N, auto B, auto TA, auto TB) {
    auto go = [&](auto kernel) {
      ::torchext_emu_rt::launch(dim3(1), dim3(static_cast<unsigned>(128 * groups)),
                                static_cast<size_t>(1024 + 8192 + N() * 128), nullptr, kernel, map_a, map_b,
                                static_cast<int>(k), static_cast<int>(accumulate_first),
                                static_cast<const float*>(c_regs.data_ptr<float>()), out.data_ptr<float>());
    };
    if (swizzle) {
      go(wgmma_tma_kernel<N(), B() != 0, TA(), TB(), 1>);
    } else {
      go(wgmma_tma_kernel<N(), B() != 0, TA(), TB(), 0>);
    }
  });
  return out;
}

// One wgmma (k16) on a shared memory image the test built: the image is copied to dynamic shared
// memory, then A's and B's descriptors (start offset, LBO, SBO, swizzle mode 0..3) are made with
// smem_desc; the registers start from c_regs [128, N/2] and come back.
template <int N, bool BF16, int TA, int TB>
__global__ void wgmma_image_kernel(const uint8_t* image, int bytes, const int32_t* desc, int accumulate,
                                   const float* c_regs, float* out) {
  TORCHEXT_DYNAMIC_SMEM(smem);
  const int tid = threadIdx.x;
  for (int i = tid; i < bytes; i += 128) smem[i] = image[i];
  constexpr int kRegs = N / 2;
  float d[kRegs];
  for (int i = 0; i < kRegs; ++i) d[i] = c_regs[tid * kRegs + i];
  __syncthreads();
  const uint64_t da = ptx::smem_desc(smem + desc[0], desc[1], desc[2], static_cast<ptx::Swizzle>(desc[3]));
  const uint64_t db = ptx::smem_desc(smem + desc[4], desc[5], desc[6], static_cast<ptx::Swizzle>(desc[7]));
  ptx::wgmma_fence();
  mma<N, BF16, TA, TB>(d, da, db, accumulate);
  ptx::wgmma_commit();
  ptx::wgmma_wait<0>();
  for (int i = 0; i < kRegs; ++i) out[tid * kRegs + i] = d[i];
}

at::Tensor wgmma_image(at::Tensor image, at::Tensor desc, at::Tensor c_regs, int64_t n, bool bf16, int64_t trans_a,
                       int64_t trans_b, int64_t accumulate) {
  check_input(image, at::kByte, "image");
  check_input(desc, at::kInt, "desc");
  check_input(c_regs, at::kFloat, "c_regs");
  TORCH_CHECK(desc.numel() == 8 && c_regs.sizes() == at::IntArrayRef({128, n / 2}), "desc[8], c_regs [128, N/2]");
  at::Tensor out = at::empty_like(c_regs);
  with_shape(n, bf16, trans_a, trans_b, [&](auto N, auto B, auto TA, auto TB) {
    auto* kernel = wgmma_image_kernel<N(), B() != 0, TA(), TB()>;
    TORCH_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 232448) == cudaSuccess,
                "the image needs up to 227 KiB of dynamic shared memory");
    ::torchext_emu_rt::launch(dim3(1), dim3(128), static_cast<size_t>(image.numel()), nullptr, kernel,
                              static_cast<const uint8_t*>(image.data_ptr<uint8_t>()), static_cast<int>(image.numel()),
                              static_cast<const int32_t*>(desc.data_ptr<int32_t>()), static_cast<int>(accumulate),
                              static_cast<const float*>(c_regs.data_ptr<float>()), out.data_ptr<float>());
  });
  return out;
}

// The asynchrony of wgmma, m64n128k16 bf16, K-major tiles (128-byte swizzle, K = 16: the first
// k-step of a 64 x 64 and a 128 x 64 box). out[0..3] are snapshots of [128, 64] registers:
//   fence; d1 = A*B (accumulate 0); commit (G1); d2 = C + A*B; commit (G2); wait<1>:
//     out[0] = d1 (G1 performed), out[1] = d2 (G2 not performed: still C)
//   wait<0>: out[2] = d2 (C + A*B); barrier
//   fence; d3 = A*B; commit; A's tile zeroed by ordinary stores, barrier; wait<0>: out[3] = d3
//     (the model reads shared memory at the wait: 0)
__global__ void wgmma_async_kernel(const __grid_constant__ TmaMap map_a, const __grid_constant__ TmaMap map_b,
                                   const float* c_regs, float* out) {
  TORCHEXT_DYNAMIC_SMEM(smem);
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem);
  unsigned char* sa = smem + 1024;
  unsigned char* sb = sa + 8192;
  const int tid = threadIdx.x;
  float d1[64], d2[64], d3[64];
  for (int i = 0; i < 64; ++i) d2[i] = c_regs[tid * 64 + i];
  if (tid == 0) {
    ptx::mbarrier_init(bar, 1);
    ptx::fence_barrier_init();
    ptx::mbarrier_arrive_expect_tx(bar, (64 + 128) * 128);
    ptx::tma_load_2d(sa, &map_a, 0, 0, bar);
    ptx::tma_load_2d(sb, &map_b, 0, 0, bar);
  }
  __syncthreads();
  ptx::mbarrier_wait_parity(bar, 0);
  const uint64_t da = ptx::smem_desc(sa, 16, 1024, ptx::Swizzle::k128B);
  const uint64_t db = ptx::smem_desc(sb, 16, 1024, ptx::Swizzle::k128B);
  auto snapshot = [&](int s, const float* r) {
    for (int i = 0; i < 64; ++i) out[(s * 128 + tid) * 64 + i] = r[i];
  };
  ptx::wgmma_fence();
  ptx::wgmma_m64n128k16_bf16<0, 0>(d1, da, db, 0);
  ptx::wgmma_commit();
  ptx::wgmma_m64n128k16_bf16<0, 0>(d2, da, db, 1);
  ptx::wgmma_commit();
  ptx::wgmma_wait<1>();
  snapshot(0, d1);
  snapshot(1, d2);
  ptx::wgmma_wait<0>();
  snapshot(2, d2);
  __syncthreads();  // every thread's groups performed before the tile is overwritten below
  ptx::wgmma_fence();
  ptx::wgmma_m64n128k16_bf16<0, 0>(d3, da, db, 0);
  ptx::wgmma_commit();
  for (int i = tid; i < 8192; i += 128) sa[i] = 0;
  __syncthreads();
  ptx::wgmma_wait<0>();
  snapshot(3, d3);
}

at::Tensor wgmma_async(at::Tensor a, at::Tensor bt, at::Tensor c_regs) {
  check_input(a, at::kShort, "a");
  check_input(bt, at::kShort, "bt");
  TORCH_CHECK(a.sizes() == at::IntArrayRef({64, 64}) && bt.sizes() == at::IntArrayRef({128, 64}) &&
                  c_regs.sizes() == at::IntArrayRef({128, 64}),
              "a [64, 64] (K-major), bt [128, 64] (K-major B), c_regs [128, 64]");
  const TmaMap map_a = make_map(a, 64, 64, true), map_b = make_map(bt, 64, 128, true);
  at::Tensor out = at::empty({4, 128, 64}, c_regs.options());
  ::torchext_emu_rt::launch(dim3(1), dim3(128), 1024 + 8192 + 16384, nullptr, wgmma_async_kernel, map_a, map_b,
                            static_cast<const float*>(c_regs.data_ptr<float>()), out.data_ptr<float>());
  return out;
}

// ----------------------------------------------------------------- misuse the models must report
__global__ void sm90_broken_kernel(int which) {
  TORCHEXT_DYNAMIC_SMEM(smem);
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem);
  float d[64];
  for (int i = 0; i < 64; ++i) d[i] = 0.0f;
  for (int i = threadIdx.x; i < 16384; i += blockDim.x) smem[1024 + i] = 0;
  __syncthreads();
  uint64_t da = ptx::smem_desc(smem + 1024, 16, 1024, ptx::Swizzle::k128B);
  const uint64_t db = ptx::smem_desc(smem + 1024, 16, 1024, ptx::Swizzle::k128B);
  switch (which) {
    case 0:  // a block of 96 threads: no whole warpgroup
    case 2:  // thread 5 gives another descriptor
    case 3:  // no wait before the thread exits
    case 4:  // a base offset
    case 8:  // a descriptor reaching past the dynamic shared memory
      if (which == 2 && threadIdx.x == 5) da += 2;
      if (which == 4) da |= uint64_t(3) << 49;
      if (which == 8) da = ptx::smem_desc(smem + 16384, 16, 1024, ptx::Swizzle::k128B);
      ptx::wgmma_fence();
      ptx::wgmma_m64n128k16_bf16<0, 0>(d, da, db, 0);
      ptx::wgmma_commit();
      if (which != 3) ptx::wgmma_wait<0>();
      break;
    case 1:  // no wgmma.fence
      ptx::wgmma_m64n128k16_bf16<0, 0>(d, da, db, 0);
      ptx::wgmma_commit();
      ptx::wgmma_wait<0>();
      break;
    case 5:  // an arrival on a barrier never initialized
      if (threadIdx.x == 0) ptx::mbarrier_arrive(bar);
      break;
    case 6:  // an ordinary store over an initialized barrier
      if (threadIdx.x == 0) {
        ptx::mbarrier_init(bar, 1);
        reinterpret_cast<float*>(smem)[0] = 1.0f;
        ptx::mbarrier_arrive(bar);
      }
      break;
    case 7:  // more arrivals than the count, while the phase waits for bytes
      if (threadIdx.x == 0) {
        ptx::mbarrier_init(bar, 1);
        ptx::mbarrier_arrive_expect_tx(bar, 64);
        ptx::mbarrier_arrive(bar);
      }
      break;
    default: break;
  }
}

void sm90_broken(int64_t which) {
  TORCH_CHECK(which >= 0 && which <= 8, "which");
  ::torchext_emu_rt::launch(dim3(1), dim3(which == 0 ? 96 : 128), 1024 + 16384, nullptr, sm90_broken_kernel,
                            static_cast<int>(which));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchext, m) {
  m.def("emu_sm90_tma_box(Tensor src, int box_inner, int box_outer, int c0, int c1, bool swizzle, int dst_offset, "
        "int smem_bytes, int mode, int base_shift, int row_bytes) -> Tensor",
        &tma_box);
  m.def("emu_sm90_mbarrier_phases() -> Tensor", &mbarrier_phases);
  m.def("emu_sm90_mbarrier_ring(Tensor src, int stages, int mode) -> Tensor", &mbarrier_ring);
  m.def("emu_sm90_wgmma_tma(Tensor a, Tensor b, Tensor c_regs, int n, bool bf16, int trans_a, int trans_b, "
        "bool swizzle, int accumulate_first) -> Tensor",
        &wgmma_tma);
  m.def("emu_sm90_wgmma_image(Tensor image, Tensor desc, Tensor c_regs, int n, bool bf16, int trans_a, int trans_b, "
        "int accumulate) -> Tensor",
        &wgmma_image);
  m.def("emu_sm90_wgmma_async(Tensor a, Tensor bt, Tensor c_regs) -> Tensor", &wgmma_async);
  m.def("emu_sm90_broken(int which) -> ()", &sm90_broken);
}
