// The PTX instructions the GEMM kernels use beyond plain CUDA C++ (sm_80 and newer): asynchronous
// global->shared copies, ldmatrix and warp-level mma.sync, each wrapped in one inline function so
// that the kernels read as C++ and the CPU emulation (tests/cuda_emu) can supply its own model of
// every instruction behind the same names. Also the dynamic shared memory declaration, which the
// emulation backs with a per-block buffer.
//
// Semantics follow the PTX ISA (sections named at each function); register fragments are those of
// the ISA's "Matrix Fragments for mma.m16n8k16" / "mma.m16n8k8" figures.
#pragma once

#include <cstdint>

#ifdef TORCHEXT_EMU
#include "emu_ptx.h"  // tests/cuda_emu/include: CPU models of the functions below
#else

// `extern __shared__` storage of the launch's dynamic shared memory, 128-byte aligned.
#define TORCHEXT_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]

namespace torchext {
namespace cuda {
namespace ptx {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async.cg.shared.global, 16 bytes (PTX ISA "Data Movement: cp.async"): fills 16 bytes of
// shared `dst` from global `src` (both 16-byte aligned) without going through registers: the first
// `src_bytes` (0 to 16, the ISA's src-size) are read from src, the rest are zero-filled; with 0,
// nothing is read. The copy completes only at a cp_async_wait that covers its group.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}

// cp.async.commit_group: the copies this thread issued since the last commit form one group.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// cp.async.wait_group N: waits until at most N of this thread's committed groups are pending.
// Covers only the calling thread's copies: a barrier must follow before other threads read them.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 (PTX ISA "Warp-level matrix load: ldmatrix"):
// four 8x8 matrices of 16-bit elements; lanes 8j..8j+7 give the addresses of matrix j's eight rows
// (16 bytes each, 16-byte aligned). Lane l receives in r[j] the elements (row l/4, columns 2(l%4)
// and 2(l%4)+1) of matrix j, the lower column in the low half; with .trans the matrix is
// transposed first (so r[j] holds rows 2(l%4), 2(l%4)+1 of column l/4 as stored).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr)));
}
// Two matrices: lanes 0-15 give the row addresses (the others' are ignored).
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(row_addr)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(row_addr)));
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 (PTX ISA "Warp-level matrix
// multiply-accumulate: mma", fragments of m16n8k16): d = A (16x16) * B (16x8) + d, in float.
// a: four registers of two elements, b: two, d: four floats, laid out as in the ISA's figures.
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: d = A (16x8) * B (8x8) + d; one element per
// register, each a float already rounded to TF32 (cvt_tf32).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// cvt.rna.tf32.f32 (PTX ISA "cvt"): x rounded to TF32 (10 mantissa bits, to nearest, ties away
// from zero), as the bits of a float whose low 13 bits are zero.
__device__ __forceinline__ uint32_t cvt_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

}  // namespace ptx
}  // namespace cuda
}  // namespace torchext

#endif  // TORCHEXT_EMU
