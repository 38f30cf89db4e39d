// Test kernels for the PTX models of include/emu_ptx.h, reached through csrc/cuda/ptx.cuh exactly as
// the GEMM kernels reach them (the same names and signatures). Each kernel builds its operands from
// plain global memory by the PTX ISA's own layout formulas, written here independently of the
// models, and hands the registers back for tests/test_emulated_ptx.py to check against scalar
// references. Compiled like emu_ops.cpp (emu_runtime.h included first, `torchext` renamed
// `torchext_emu`, shared arrays poisoned).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "cuda/ptx.cuh"

namespace {

namespace ptx = ::torchext::cuda::ptx;

void check_input(at::Tensor t, at::ScalarType dtype, const char* what) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == dtype, what, " must be a contiguous ", dtype, " tensor");
}

// ------------------------------------------------------------------------------------ ldmatrix
// One warp loads NUM 8x8 matrices of 16-bit elements from a 4 KiB shared array; lane l gives the
// element offset offsets[l] as its row address and returns its NUM registers.
template <int NUM, bool TRANS>
__global__ void ldmatrix_kernel(const uint16_t* data, const int32_t* offsets, int64_t* out) {
  __shared__ __align__(16) uint16_t smem[2048];
  const int lane = threadIdx.x;
  for (int i = lane; i < 2048; i += 32) smem[i] = data[i];
  __syncthreads();
  uint32_t r[NUM];
  const void* row = smem + offsets[lane];
  if constexpr (NUM == 4) {
    TRANS ? ptx::ldmatrix_x4_trans(r, row) : ptx::ldmatrix_x4(r, row);
  } else if constexpr (NUM == 2) {
    TRANS ? ptx::ldmatrix_x2_trans(r, row) : ptx::ldmatrix_x2(r, row);
  } else {  // .x1 has no wrapper in ptx.cuh (no kernel uses it); the model has it
    ptx::emu::ldmatrix<1, TRANS>(r, row, TRANS ? "ldmatrix.x1.trans" : "ldmatrix.x1");
  }
  for (int j = 0; j < NUM; ++j) out[lane * NUM + j] = r[j];
}

at::Tensor ldmatrix(at::Tensor data, at::Tensor offsets, int64_t num, bool trans) {
  check_input(data, at::kShort, "data");
  check_input(offsets, at::kInt, "offsets");
  TORCH_CHECK(data.numel() == 2048 && offsets.numel() == 32, "2048 elements and 32 offsets");
  TORCH_CHECK(offsets.min().item<int>() >= 0 && offsets.max().item<int>() + 8 <= 2048, "rows inside the array");
  at::Tensor out = at::empty({32, num}, data.options().dtype(at::kLong));
  auto* d = reinterpret_cast<const uint16_t*>(data.data_ptr<int16_t>());
  auto* o = offsets.data_ptr<int32_t>();
  auto* r = out.data_ptr<int64_t>();
  auto go = [&](auto kernel) { ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, kernel, d, o, r); };
  switch (num * 2 + trans) {
    case 2: go(ldmatrix_kernel<1, false>); break;
    case 3: go(ldmatrix_kernel<1, true>); break;
    case 4: go(ldmatrix_kernel<2, false>); break;
    case 5: go(ldmatrix_kernel<2, true>); break;
    case 8: go(ldmatrix_kernel<4, false>); break;
    case 9: go(ldmatrix_kernel<4, true>); break;
    default: TORCH_CHECK(false, "num is 1, 2 or 4");
  }
  return out;
}

// ------------------------------------------------------------------------------------------ mma
// Fragment positions, from the PTX ISA figures' formulas ("Matrix Fragments for mma.m16n8k16 with
// floating point type", "Matrix Fragments for mma.m16n8k8", .tf32), groupID g = lane >> 2,
// threadID_in_group t = lane % 4. Element i of the fragment; registers hold elements low to high.
struct Pos {
  int row, col;
};
Pos a_16816(int lane, int i) {  // a0..a7, two per register
  const int g = lane >> 2, t = lane % 4;
  return {(i < 2 || (i >= 4 && i < 6)) ? g : g + 8, t * 2 + (i & 1) + (i >= 4 ? 8 : 0)};
}
Pos b_16816(int lane, int i) {  // b0..b3 (row = k, col = n)
  const int g = lane >> 2, t = lane % 4;
  return {t * 2 + (i & 1) + (i >= 2 ? 8 : 0), g};
}
Pos a_1688_tf32(int lane, int i) {  // a0..a3, one per register
  const int g = lane >> 2, t = lane % 4;
  return {(i == 0 || i == 2) ? g : g + 8, (i == 0 || i == 1) ? t : t + 4};
}
Pos b_1688_tf32(int lane, int i) {  // b0, b1
  const int g = lane >> 2, t = lane % 4;
  return {i == 0 ? t : t + 4, g};
}
Pos cd(int lane, int i) {  // c0..c3 / d0..d3, both shapes
  const int g = lane >> 2, t = lane % 4;
  return {i < 2 ? g : g + 8, t * 2 + (i & 1)};
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Warp w computes D[w] = A[w] (16 x K, row-major) * B[w] (K x 8, given column-major as bt[w], 8 x K)
// + C[w] (16 x 8, row-major), K / KS mma steps. KIND 0 bf16, 1 f16 (A, B 16-bit patterns), 2 tf32
// rounded with cvt_tf32 in the kernel, 3 tf32 from the raw f32 bits. `permute` misplaces one thing on
// purpose (1: a registers 1 and 2 swapped, 2: b registers swapped, 3: d1 and d2 stored swapped), to
// show that the check catches a misread layout.
template <int KIND>
__global__ void mma_kernel(const void* a, const void* bt, const float* c, float* d_out, int k_total, int permute) {
  constexpr int KS = KIND < 2 ? 16 : 8;
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  const float* cw = c + w * 128;
  float d[4];
  for (int i = 0; i < 4; ++i) d[i] = cw[cd(lane, i).row * 8 + cd(lane, i).col];
  for (int k0 = 0; k0 < k_total; k0 += KS) {
    uint32_t ra[4] = {0, 0, 0, 0}, rb[2] = {0, 0};
    if constexpr (KIND < 2) {
      const uint16_t* aw = static_cast<const uint16_t*>(a) + w * 16 * k_total;
      const uint16_t* bw = static_cast<const uint16_t*>(bt) + w * 8 * k_total;
      for (int i = 0; i < 8; ++i) {
        const Pos p = a_16816(lane, i);
        ra[i / 2] |= static_cast<uint32_t>(aw[p.row * k_total + k0 + p.col]) << (16 * (i & 1));
      }
      for (int i = 0; i < 4; ++i) {
        const Pos p = b_16816(lane, i);
        rb[i / 2] |= static_cast<uint32_t>(bw[p.col * k_total + k0 + p.row]) << (16 * (i & 1));
      }
    } else {
      const float* aw = static_cast<const float*>(a) + w * 16 * k_total;
      const float* bw = static_cast<const float*>(bt) + w * 8 * k_total;
      for (int i = 0; i < 4; ++i) {
        const Pos p = a_1688_tf32(lane, i);
        const float v = aw[p.row * k_total + k0 + p.col];
        ra[i] = KIND == 2 ? ptx::cvt_tf32(v) : bits_of(v);
      }
      for (int i = 0; i < 2; ++i) {
        const Pos p = b_1688_tf32(lane, i);
        const float v = bw[p.col * k_total + k0 + p.row];
        rb[i] = KIND == 2 ? ptx::cvt_tf32(v) : bits_of(v);
      }
    }
    if (permute == 1) std::swap(ra[1], ra[2]);
    if (permute == 2) std::swap(rb[0], rb[1]);
    if constexpr (KIND == 0) ptx::mma_m16n8k16_bf16(d, ra, rb);
    if constexpr (KIND == 1) ptx::mma_m16n8k16_f16(d, ra, rb);
    if constexpr (KIND >= 2) ptx::mma_m16n8k8_tf32(d, ra, rb);
  }
  if (permute == 3) std::swap(d[1], d[2]);
  float* dw = d_out + w * 128;
  for (int i = 0; i < 4; ++i) dw[cd(lane, i).row * 8 + cd(lane, i).col] = d[i];
}

at::Tensor mma(at::Tensor a, at::Tensor bt, at::Tensor c, int64_t kind, int64_t permute) {
  const auto elem = kind < 2 ? at::kShort : at::kFloat;
  check_input(a, elem, "a");
  check_input(bt, elem, "bt");
  check_input(c, at::kFloat, "c");
  const int64_t warps = a.size(0), k = a.size(2);
  TORCH_CHECK(a.dim() == 3 && a.size(1) == 16 && bt.sizes() == at::IntArrayRef({warps, 8, k}) &&
                  c.sizes() == at::IntArrayRef({warps, 16, 8}) && k % (kind < 2 ? 16 : 8) == 0 && warps <= 32,
              "a [W, 16, K], bt [W, 8, K], c [W, 16, 8]");
  at::Tensor d = at::empty_like(c);
  auto go = [&](auto kernel) {
    ::torchext_emu_rt::launch(dim3(1), dim3(static_cast<unsigned>(warps * 32)), 0, nullptr, kernel,
                              static_cast<const void*>(a.data_ptr()), static_cast<const void*>(bt.data_ptr()),
                              static_cast<const float*>(c.data_ptr<float>()), d.data_ptr<float>(), static_cast<int>(k),
                              static_cast<int>(permute));
  };
  switch (kind) {
    case 0: go(mma_kernel<0>); break;
    case 1: go(mma_kernel<1>); break;
    case 2: go(mma_kernel<2>); break;
    case 3: go(mma_kernel<3>); break;
    default: TORCH_CHECK(false, "kind is 0 (bf16), 1 (f16), 2 (tf32 via cvt) or 3 (tf32, raw f32 bits)");
  }
  return d;
}

// ldmatrix feeding mma, the way a GEMM uses them: A (16 x 16, row-major) and B (16 x 8) in shared
// memory with padded rows (24 elements, 48 bytes apart). ldmatrix.x4 of A's four 8x8 quarters
// (lanes 0-15: rows 0-15 of columns 0-7, lanes 16-31: of columns 8-15) gives the A fragment; B as
// [n][k] through ldmatrix.x2 (lanes 0-7 rows k 0-7, 8-15 rows k 8-15) and B as [k][n] through
// ldmatrix.x2.trans (lanes 0-15: rows k = lane) each give the B fragment. Returns both products.
template <int KIND>
__global__ void ldmatrix_mma_kernel(const uint16_t* a, const uint16_t* b_kn, float* out) {
  __shared__ __align__(16) uint16_t sa[16 * 24];
  __shared__ __align__(16) uint16_t sb_nk[8 * 24];
  __shared__ __align__(16) uint16_t sb_kn[16 * 24];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) sa[i / 16 * 24 + i % 16] = a[i];
  for (int i = lane; i < 128; i += 32) {
    const int k = i / 8, n = i % 8;
    sb_kn[k * 24 + n] = b_kn[i];
    sb_nk[n * 24 + k] = b_kn[i];
  }
  __syncthreads();
  uint32_t ra[4], rb[2], rbt[2];
  ptx::ldmatrix_x4(ra, sa + (lane % 16) * 24 + (lane / 16) * 8);
  ptx::ldmatrix_x2(rb, sb_nk + (lane % 8) * 24 + ((lane / 8) % 2) * 8);
  ptx::ldmatrix_x2_trans(rbt, sb_kn + (lane % 16) * 24);
  float d0[4] = {0, 0, 0, 0}, d1[4] = {0, 0, 0, 0};
  if constexpr (KIND == 0) {
    ptx::mma_m16n8k16_bf16(d0, ra, rb);
    ptx::mma_m16n8k16_bf16(d1, ra, rbt);
  } else {
    ptx::mma_m16n8k16_f16(d0, ra, rb);
    ptx::mma_m16n8k16_f16(d1, ra, rbt);
  }
  for (int i = 0; i < 4; ++i) {
    out[cd(lane, i).row * 8 + cd(lane, i).col] = d0[i];
    out[128 + cd(lane, i).row * 8 + cd(lane, i).col] = d1[i];
  }
}

at::Tensor ldmatrix_mma(at::Tensor a, at::Tensor b, int64_t kind) {
  check_input(a, at::kShort, "a");
  check_input(b, at::kShort, "b");
  TORCH_CHECK(a.numel() == 256 && b.numel() == 128, "a 16 x 16, b 16 x 8");
  at::Tensor out = at::empty({2, 16, 8}, a.options().dtype(at::kFloat));
  auto* pa = reinterpret_cast<const uint16_t*>(a.data_ptr<int16_t>());
  auto* pb = reinterpret_cast<const uint16_t*>(b.data_ptr<int16_t>());
  if (kind == 0) {
    ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, ldmatrix_mma_kernel<0>, pa, pb, out.data_ptr<float>());
  } else {
    ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, ldmatrix_mma_kernel<1>, pa, pb, out.data_ptr<float>());
  }
  return out;
}

// ------------------------------------------------------------------------------------------ cvt
__global__ void cvt_tf32_kernel(const float* x, int32_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    out[i] = static_cast<int32_t>(ptx::cvt_tf32(x[i]));
  }
}

at::Tensor cvt_tf32(at::Tensor x) {
  check_input(x, at::kFloat, "x");
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kInt));
  if (x.numel() > 0) {
    ::torchext_emu_rt::launch(dim3(4), dim3(256), 0, nullptr, cvt_tf32_kernel,
                              static_cast<const float*>(x.data_ptr<float>()), out.data_ptr<int32_t>(), x.numel());
  }
  return out;
}

// ------------------------------------------------------------------------------------- cp.async
// A multi-stage pipeline: block b copies its T tiles of 1 KiB (64 threads x 16 bytes) through S
// stages of dynamic shared memory and writes tile t back, each thread reading its neighbour's
// chunk, so the copies of tile t must be complete (the wait) and seen by the whole block (the
// barrier). mode 0 is the correct order; the others are the usual mistakes:
//  1: wait<S-1>, one group too few completed     2: reads the stage before its wait
//  3: a barrier and no wait                       4: the wait but no barrier after it
//  5: the copies never committed                  6: the next tile issued before the barrier that
//                                                    ends the reads of the stage it overwrites
template <int S>
__global__ void pipeline_kernel(const float* src, float* out, int tiles, int mode) {
  TORCHEXT_DYNAMIC_SMEM(smem_bytes);
  float* stage = reinterpret_cast<float*>(smem_bytes);
  const int tid = threadIdx.x;
  const float* bsrc = src + static_cast<int64_t>(blockIdx.x) * tiles * 256;
  float* bout = out + static_cast<int64_t>(blockIdx.x) * tiles * 256;
  auto issue = [&](int tile) {
    if (tile < tiles) ptx::cp_async_16(stage + (tile % S) * 256 + tid * 4, bsrc + tile * 256 + tid * 4, 16);
    if (mode != 5) ptx::cp_async_commit();  // empty groups at the tail keep the count uniform
  };
  auto consume = [&](int tile) {
    const float* s = stage + (tile % S) * 256 + ((tid + 1) % 64) * 4;
    for (int e = 0; e < 4; ++e) bout[tile * 256 + ((tid + 1) % 64) * 4 + e] = s[e];
  };
  for (int t = 0; t < S - 1; ++t) issue(t);
  for (int t = 0; t < tiles; ++t) {
    if (mode == 6) {
      issue(t + S - 1);
      ptx::cp_async_wait<S - 1>();
      __syncthreads();
      consume(t);
      continue;
    }
    if (mode == 2) consume(t);
    if (mode == 1) {
      ptx::cp_async_wait<S - 1>();
    } else if (mode != 3) {
      ptx::cp_async_wait<S - 2>();
    }
    if (mode != 4) __syncthreads();
    if (mode != 2) consume(t);
    issue(t + S - 1);
  }
}

at::Tensor cp_async_pipeline(at::Tensor src, int64_t stages, int64_t mode) {
  check_input(src, at::kFloat, "src");
  TORCH_CHECK(src.dim() == 3 && src.size(2) == 256, "src [blocks, tiles, 256]");
  at::Tensor out = at::empty_like(src);
  const unsigned blocks = static_cast<unsigned>(src.size(0));
  const int tiles = static_cast<int>(src.size(1));
  auto go = [&](auto kernel) {
    ::torchext_emu_rt::launch(dim3(blocks), dim3(64), static_cast<size_t>(stages) * 1024, nullptr, kernel,
                              static_cast<const float*>(src.data_ptr<float>()), out.data_ptr<float>(), tiles,
                              static_cast<int>(mode));
  };
  switch (stages) {
    case 2: go(pipeline_kernel<2>); break;
    case 3: go(pipeline_kernel<3>); break;
    case 4: go(pipeline_kernel<4>); break;
    default: TORCH_CHECK(false, "2, 3 or 4 stages");
  }
  return out;
}

// The async-group rules for one thread's copies, observed by that thread (32 threads, 5 chunks of
// 16 bytes each): six snapshots of its five destination chunks.
//   c0; commit (G1); c1; commit (G2); commit (G3, empty); c2 (uncommitted)
//   wait<2> -> s0   wait<1> -> s1   wait<0> -> s2   commit (G4 = c2); wait<0> -> s3
//   c3 with pred false (zero fill); c4; commit; __syncthreads -> s4   wait<0> -> s5
__global__ void groups_kernel(const float* src, float* out) {
  __shared__ __align__(16) float smem[32 * 20];
  const int tid = threadIdx.x;
  float* dst = smem + tid * 20;
  const float* s = src + tid * 20;
  float* o = out + tid * 6 * 20;
  auto snapshot = [&](int k) {
    for (int e = 0; e < 20; ++e) o[k * 20 + e] = dst[e];
  };
  ptx::cp_async_16(dst, s, 16);
  ptx::cp_async_commit();
  ptx::cp_async_16(dst + 4, s + 4, 16);
  ptx::cp_async_commit();
  ptx::cp_async_commit();
  ptx::cp_async_16(dst + 8, s + 8, 16);
  ptx::cp_async_wait<2>();
  snapshot(0);
  ptx::cp_async_wait<1>();
  snapshot(1);
  ptx::cp_async_wait<0>();
  snapshot(2);
  ptx::cp_async_commit();
  ptx::cp_async_wait<0>();
  snapshot(3);
  // src of a zero-filling copy: one past the end of the source tensor (never read).
  ptx::cp_async_16(dst + 12, src + 32 * 20, 0);
  ptx::cp_async_16(dst + 16, s + 16, 16);
  ptx::cp_async_commit();
  __syncthreads();
  snapshot(4);
  ptx::cp_async_wait<0>();
  snapshot(5);
}

at::Tensor cp_async_groups(at::Tensor src) {
  check_input(src, at::kFloat, "src");
  TORCH_CHECK(src.numel() == 32 * 20, "32 x 20 floats");
  at::Tensor out = at::empty({32, 6, 20}, src.options());
  ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, groups_kernel,
                            static_cast<const float*>(src.data_ptr<float>()), out.data_ptr<float>());
  return out;
}

// Partial copies (the ISA's src-size below cp-size): thread t fills 16 bytes of shared memory from
// a 16-byte aligned source with src-size t (0..16), and writes them out after the wait.
__global__ void partial_kernel(const unsigned char* src, unsigned char* out) {
  __shared__ __align__(16) unsigned char smem[17 * 16];
  const int tid = threadIdx.x;
  if (tid <= 16) ptx::cp_async_16(smem + tid * 16, src + tid * 16, tid);
  ptx::cp_async_commit();
  ptx::cp_async_wait<0>();
  if (tid <= 16)
    for (int e = 0; e < 16; ++e) out[tid * 16 + e] = smem[tid * 16 + e];
}

at::Tensor cp_async_partial(at::Tensor src) {
  TORCH_CHECK(src.scalar_type() == at::kByte && src.numel() == 17 * 16 && src.is_contiguous(), "272 bytes");
  at::Tensor out = at::empty_like(src);
  ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, partial_kernel,
                            static_cast<const unsigned char*>(src.data_ptr<uint8_t>()), out.data_ptr<uint8_t>());
  return out;
}

// Copies still pending when their thread exits: each of 32 threads issues one copy (committed in
// mode 0, not in mode 1), records its destination before any wait (out[0]) and exits; the block's
// shared array (a static here, so it outlives the launch) is read after the launch (out[1]).
const float* g_exit_smem = nullptr;
__global__ void exit_kernel(const float* src, float* before, int commit) {
  __shared__ __align__(16) float smem[32 * 4];
  const int tid = threadIdx.x;
  if (tid == 0) g_exit_smem = smem;
  ptx::cp_async_16(smem + tid * 4, src + tid * 4, 16);
  if (commit) ptx::cp_async_commit();
  for (int e = 0; e < 4; ++e) before[tid * 4 + e] = smem[tid * 4 + e];
}

at::Tensor cp_async_exit(at::Tensor src, int64_t commit) {
  check_input(src, at::kFloat, "src");
  TORCH_CHECK(src.numel() == 128, "128 floats");
  at::Tensor out = at::empty({2, 128}, src.options());
  ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, exit_kernel,
                            static_cast<const float*>(src.data_ptr<float>()), out.data_ptr<float>(),
                            static_cast<int>(commit));
  std::memcpy(out.data_ptr<float>() + 128, g_exit_smem, 128 * sizeof(float));
  return out;
}

// -------------------------------------------------------------------------- dynamic shared memory
// Each block counts the bytes of its dynamic shared memory that are not 0xff at its start (out[b][0..31],
// one per thread), then overwrites them all with zeros (which the next block must not see); out[b][32]
// is the buffer's address modulo 128, out[b][33] the variant. VARIANT 0 is never given the attribute
// (its launches have the default limit); the variant is written so that the two cannot be folded
// into one function (the attribute is kept per kernel address).
template <int VARIANT>
__global__ void dynamic_smem_kernel(int64_t bytes, int64_t* out) {
  TORCHEXT_DYNAMIC_SMEM(smem);
  const int tid = threadIdx.x;
  int64_t* o = out + blockIdx.x * 34;
  int64_t not_poison = 0;
  for (int64_t i = tid; i < bytes; i += 32) not_poison += smem[i] != 0xff;
  o[tid] = not_poison;
  if (tid == 0) {
    o[32] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(smem) % 128);
    o[33] = VARIANT;
  }
  __syncthreads();
  for (int64_t i = tid; i < bytes; i += 32) smem[i] = 0;
}

at::Tensor dynamic_smem(int64_t bytes, int64_t attribute, int64_t blocks) {
  at::Tensor out = at::empty({blocks, 34}, at::TensorOptions().dtype(at::kLong));
  if (attribute >= 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(dynamic_smem_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(attribute)));
    C10_CUDA_CHECK(cudaFuncSetAttribute(dynamic_smem_kernel<1>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        cudaSharedmemCarveoutMaxShared));
    ::torchext_emu_rt::launch(dim3(static_cast<unsigned>(blocks)), dim3(32), static_cast<size_t>(bytes), nullptr,
                              dynamic_smem_kernel<1>, bytes, out.data_ptr<int64_t>());
  } else {
    ::torchext_emu_rt::launch(dim3(static_cast<unsigned>(blocks)), dim3(32), static_cast<size_t>(bytes), nullptr,
                              dynamic_smem_kernel<0>, bytes, out.data_ptr<int64_t>());
  }
  return out;
}

int64_t set_max_dynamic_smem(int64_t bytes) {
  return cudaFuncSetAttribute(dynamic_smem_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

int64_t occupancy(int64_t block_size, int64_t smem) {
  int n = -1;
  const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, dynamic_smem_kernel<1>,
                                                                        static_cast<int>(block_size),
                                                                        static_cast<size_t>(smem));
  return err == cudaSuccess ? n : -1;
}

// ----------------------------------------------------------------- misuse the models must report
__global__ void ldmatrix_in_half_a_warp(const uint16_t*) {
  __shared__ __align__(16) uint16_t smem[256];
  uint32_t r[4];
  if (threadIdx.x < 16) ptx::ldmatrix_x4(r, smem + (threadIdx.x % 32) * 8);
}
__global__ void mma_in_partial_warp(const uint16_t*) {
  uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float d[4] = {0, 0, 0, 0};
  ptx::mma_m16n8k16_bf16(d, a, b);
}
__global__ void mixed_ldmatrix(const uint16_t*) {
  __shared__ __align__(16) uint16_t smem[256];
  uint32_t r4[4], r2[2];
  if (threadIdx.x < 16) {
    ptx::ldmatrix_x4(r4, smem + (threadIdx.x % 32) * 8);
  } else {
    ptx::ldmatrix_x2(r2, smem + (threadIdx.x % 16) * 8);
  }
}
__global__ void mma_and_shuffle(const uint16_t*) {
  uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float d[4] = {0, 0, 0, 0};
  if (threadIdx.x < 16) {
    ptx::mma_m16n8k16_f16(d, a, b);
  } else {
    d[0] = __shfl_down_sync(0xffffffffu, d[0], 1);
  }
}
__global__ void cp_async_misaligned_dst(const uint16_t* src) {
  __shared__ __align__(16) uint16_t smem[64];
  ptx::cp_async_16(smem + 4, src, 16);
}
__global__ void cp_async_misaligned_src(const uint16_t* src) {
  __shared__ __align__(16) uint16_t smem[64];
  ptx::cp_async_16(smem, src + 2, 16);
}
__global__ void ldmatrix_misaligned(const uint16_t*) {
  __shared__ __align__(16) uint16_t smem[512];
  uint32_t r[2];
  ptx::ldmatrix_x2_trans(r, smem + threadIdx.x * 8 + (threadIdx.x == 9 ? 4 : 0));
}

void broken(int64_t which) {
  at::Tensor buf = at::zeros({64}, at::TensorOptions().dtype(at::kShort));
  const uint16_t* p = reinterpret_cast<const uint16_t*>(buf.data_ptr<int16_t>());
  void (*kernels[])(const uint16_t*) = {ldmatrix_in_half_a_warp, mma_in_partial_warp, mixed_ldmatrix, mma_and_shuffle,
                                        cp_async_misaligned_dst, cp_async_misaligned_src, ldmatrix_misaligned};
  TORCH_CHECK(which >= 0 && which < 7, "which");
  ::torchext_emu_rt::launch(dim3(1), dim3(which == 1 ? 48 : 32), 0, nullptr, kernels[which], p);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchext, m) {
  m.def("emu_ptx_ldmatrix(Tensor data, Tensor offsets, int num, bool trans) -> Tensor", &ldmatrix);
  m.def("emu_ptx_mma(Tensor a, Tensor bt, Tensor c, int kind, int permute) -> Tensor", &mma);
  m.def("emu_ptx_ldmatrix_mma(Tensor a, Tensor b, int kind) -> Tensor", &ldmatrix_mma);
  m.def("emu_ptx_cvt_tf32(Tensor x) -> Tensor", &cvt_tf32);
  m.def("emu_ptx_cp_async_pipeline(Tensor src, int stages, int mode) -> Tensor", &cp_async_pipeline);
  m.def("emu_ptx_cp_async_groups(Tensor src) -> Tensor", &cp_async_groups);
  m.def("emu_ptx_cp_async_exit(Tensor src, int commit) -> Tensor", &cp_async_exit);
  m.def("emu_ptx_cp_async_partial(Tensor src) -> Tensor", &cp_async_partial);
  m.def("emu_ptx_dynamic_smem(int bytes, int attribute, int blocks) -> Tensor", &dynamic_smem);
  m.def("emu_ptx_set_max_dynamic_smem(int bytes) -> int", &set_max_dynamic_smem);
  m.def("emu_ptx_occupancy(int block_size, int smem) -> int", &occupancy);
  m.def("emu_ptx_broken(int which) -> ()", &broken);
}
