// CPU models of the PTX instructions behind csrc/cuda/ptx.cuh, which includes this file instead of
// its inline assembly when TORCHEXT_EMU is defined (the emulation build, tests/cuda_emu/emu_build.py).
// Same names and signatures; each model follows the PTX ISA section named at it (the "Data Movement
// and Conversion Instructions" and "Warp Level Matrix Multiply-Accumulate Instructions" chapters,
// ISA 9.0), written from the ISA text, not from any kernel that uses it. Where the ISA leaves room
// the model takes the choice most likely to expose a kernel bug, and says so.
//
// Warp-collective instructions (ldmatrix, mma) rendezvous the way __shfl_down_sync does in
// emu_runtime.h: every lane posts its operands in its fiber's slots and yields; the scheduler
// releases the warp only when all 32 lanes have arrived (a lane that exited or waits elsewhere is a
// reported deadlock); each lane then reads the others' slots, and a second rendezvous keeps the
// slots until every lane has read them. Lanes at different collectives are reported.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

// The launch's dynamic shared memory (emu_runtime.h: a per-launch buffer aligned to 2^18 bytes, of the
// launch's size, 0xff bytes at the start of every block). A pointer where CUDA has an unsized
// `extern __shared__` array, so it must be declared inside the kernel (ptx.cuh's form allows file
// scope too); indexing and casts read the same.
#define TORCHEXT_DYNAMIC_SMEM(name) unsigned char* name = ::torchext_emu_rt::dynamic_smem_ptr()

namespace torchext {
namespace cuda {
namespace ptx {
namespace emu {

using ::torchext_emu_rt::Block;
using ::torchext_emu_rt::Fiber;
using ::torchext_emu_rt::State;

inline std::string hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%p", p);
  return buf;
}

inline Fiber& this_thread(const char* op) {
  Block& b = ::torchext_emu_rt::block();
  if (b.current < 0) ::torchext_emu_rt::fail(std::string(op) + " outside a kernel thread");
  return b.fibers[b.current];
}

inline void check_aligned_16(const void* p, const char* op, const char* operand) {
  if ((reinterpret_cast<uintptr_t>(p) & 15) != 0) {
    ::torchext_emu_rt::fail(std::string(op) + ": " + operand + " " + hex(p) + " is not 16-byte aligned");
  }
}

// First half of a warp-collective op: the warp must be a whole one (the ISA's .aligned: all 32
// threads execute the same instruction); posts this lane's operands (already in its slots), waits
// for the warp, and checks that every lane arrived at the same op. Returns the warp's first thread.
inline int warp_arrive(const char* op) {
  Block& b = ::torchext_emu_rt::block();
  const int t = b.current;
  const int threads = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
  const int base = t / 32 * 32;
  if (base + 32 > threads) {
    ::torchext_emu_rt::fail(std::string(op) + " in a partial warp (block of " + std::to_string(threads) +
                            " threads): all 32 lanes of the warp must execute it");
  }
  b.fibers[t].warp_op = op;
  ::torchext_emu_rt::yield(State::kWarpWait);
  for (int l = base; l < base + 32; ++l) {
    const char* other = b.fibers[l].warp_op;
    if (other == nullptr || std::strcmp(other, op) != 0) {
      ::torchext_emu_rt::fail("lanes " + std::to_string(t - base) + " and " + std::to_string(l - base) +
                              " of a warp are at different warp-collective operations (" + op + ", " +
                              (other ? other : "none") + ")");
    }
  }
  return base;
}

// Second half: every lane has read the slots before any of them is reused.
inline void warp_leave() { ::torchext_emu_rt::yield(State::kWarpWait); }

inline uint16_t load_b16(const void* row, int col) {
  uint16_t v;
  std::memcpy(&v, static_cast<const unsigned char*>(row) + 2 * col, 2);
  return v;
}

// PTX ISA "Warp-level matrix load instruction: ldmatrix", .m8n8 .b16, NUM = .x1/.x2/.x4 matrices
// of 8x8 16-bit elements:
//  - threads 8j..8j+7 supply the start addresses of rows 0..7 of matrix j (threads 0-7 for .x1,
//    0-15 for .x2, all 32 for .x4); rows need not be contiguous; the other threads' addresses are
//    not used (the model neither checks nor reads them). Each row is 16 bytes and the ISA asks for
//    natural alignment, so every used address must be 16-byte aligned.
//  - destination register j holds this thread's fragment of matrix j. Per the ISA figure ("ldmatrix
//    fragment layout for one 8x8 matrix"), a group of four consecutive threads holds one row, thread
//    0 first: thread l holds row l/4, columns 2(l%4) and 2(l%4)+1, the lower column in the low 16
//    bits (elements are listed low to high).
//  - .trans: the matrix is loaded "in column-major format", i.e. thread l holds the same positions
//    of the transposed matrix: column l/4, rows 2(l%4) (low half) and 2(l%4)+1 (high half) of the
//    matrix as stored.
// The ISA makes it a weak memory operation; here every lane reads shared memory after the whole warp
// has arrived, with no other thread running in between.
template <int NUM, bool TRANS>
inline void ldmatrix(uint32_t* r, const void* row_addr, const char* op) {
  static_assert(NUM == 1 || NUM == 2 || NUM == 4, "ldmatrix .num is .x1, .x2 or .x4");
  Fiber& me = this_thread(op);
  Block& b = ::torchext_emu_rt::block();
  const int lane = b.current % 32;
  if (lane < 8 * NUM && (reinterpret_cast<uintptr_t>(row_addr) & 15) != 0) {
    ::torchext_emu_rt::fail(std::string(op) + ": row address " + hex(row_addr) + " of lane " + std::to_string(lane) +
                            " is not 16-byte aligned");
  }
  me.warp_addr = row_addr;
  const int base = warp_arrive(op);
  const int group = lane / 4, pair = 2 * (lane % 4);
  for (int j = 0; j < NUM; ++j) {
    const Fiber* rows = &b.fibers[base + 8 * j];  // rows[i].warp_addr: row i of matrix j
    uint16_t lo, hi;
    if (!TRANS) {
      lo = load_b16(rows[group].warp_addr, pair);
      hi = load_b16(rows[group].warp_addr, pair + 1);
    } else {
      lo = load_b16(rows[pair].warp_addr, group);
      hi = load_b16(rows[pair + 1].warp_addr, group);
    }
    r[j] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  warp_leave();
}

// Element decoders for mma. .bf16: the upper half of an f32. .f16: IEEE binary16, subnormals kept
// (the ISA leaves subnormal handling unspecified; the model keeps them).
inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bf16_value(uint16_t h) { return from_bits(static_cast<uint32_t>(h) << 16); }
inline float f16_value(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return from_bits(sign | 0x7f800000u | (man << 13));  // inf, NaN (payload kept)
  if (exp != 0) return from_bits(sign | ((exp + 112) << 23) | (man << 13));
  const float sub = std::ldexp(static_cast<float>(man), -24);  // 0 or subnormal, exact in f32
  return sign ? -sub : sub;
}
// .tf32 operand of mma: the ISA ("Alternate Floating-Point Data Formats") defines tf32 only as f32's
// range with >= 10 bits of precision, internal layout implementation defined, and expects operands
// produced by cvt (.rna.tf32.f32). The model takes what a 10-bit-mantissa unit can use: the sign,
// exponent and upper 10 mantissa bits; the low 13 bits are ignored (truncated), so an operand not
// rounded with cvt_tf32 gives a (slightly) different result than a rounded one. A NaN stays NaN
// (truncating its payload could otherwise turn it into inf).
inline float tf32_value(uint32_t u) {
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) return from_bits(u | 0x00400000u);
  return from_bits(u & 0xffffe000u);
}

enum class Kind { kBf16, kF16, kTf32 };

// PTX ISA "Multiply-and-Accumulate Instruction: mma", .row.col, f32 accumulators: D = A * B + C,
// A M x K, B K x N (M = 16, N = 8), C and D M x N; here C is d's incoming value.
// Fragments, PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type" (.f16/.bf16)
// and "Matrix Fragments for mma.m16n8k8" (.tf32), with groupID = lane >> 2 and
// threadID_in_group = lane % 4 (g, t below):
//   m16n8k16 A: four .f16x2 registers, elements a0..a7 low to high (a0, a1 in register 0, ...);
//     row of ai = g for i in {0,1,4,5}, g+8 otherwise; col = 2t + (i&1), +8 for i >= 4.
//   m16n8k16 B: two .f16x2 registers, b0..b3; row of bi = 2t + (i&1), +8 for i >= 2; col = g.
//   m16n8k8 .tf32 A: four .b32 registers a0..a3; row = g for a0, a2, g+8 for a1, a3;
//     col = t for a0, a1, t+4 for a2, a3.
//   m16n8k8 .tf32 B: two .b32 registers; row = t for b0, t+4 for b1; col = g.
//   C/D (both shapes, .f32): c0..c3; row = g for c0, c1, g+8 for c2, c3; col = 2t + (i&1).
// Precision (ISA: .f16 products "with at least single precision", .bf16/.tf32 "with specified
// precision"; accumulation at least single precision; order, rounding and subnormal handling
// unspecified): each product is exact (an fma's), and each element of D is accumulated in f32
// starting from C and adding the products in increasing k, each addition rounded to nearest even
// (d = fmaf(a_k, b_k, d) for k = 0..K-1). A GPU may round differently (its order and internal width
// are not documented), so kernel tests need a tolerance of a few f32 ulps per k. NaN and inf
// propagate as in IEEE arithmetic (inf * 0 and inf - inf give NaN).
template <Kind KIND>
inline void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* op) {
  constexpr int K = KIND == Kind::kTf32 ? 8 : 16;
  Fiber& me = this_thread(op);
  Block& bl = ::torchext_emu_rt::block();
  const int lane = bl.current % 32;
  for (int i = 0; i < 4; ++i) me.warp_regs[i] = a[i];
  for (int i = 0; i < 2; ++i) me.warp_regs[4 + i] = b[i];
  const int base = warp_arrive(op);
  float A[16][K], B[K][8];
  for (int l = 0; l < 32; ++l) {
    const uint32_t* regs = bl.fibers[base + l].warp_regs;
    const int g = l >> 2, t = l % 4;
    if (KIND == Kind::kTf32) {
      for (int i = 0; i < 4; ++i) {
        A[(i == 0 || i == 2) ? g : g + 8][i < 2 ? t : t + 4] = tf32_value(regs[i]);
      }
      for (int i = 0; i < 2; ++i) B[i == 0 ? t : t + 4][g] = tf32_value(regs[4 + i]);
    } else {
      auto element = [&](int reg, int i) {
        const uint16_t h = static_cast<uint16_t>(regs[reg] >> (16 * (i & 1)));  // a(2r) low, a(2r+1) high
        return KIND == Kind::kBf16 ? bf16_value(h) : f16_value(h);
      };
      for (int i = 0; i < 8; ++i) {
        const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
        const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
        A[row][col] = element(i / 2, i);
      }
      for (int i = 0; i < 4; ++i) {
        const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
        B[row][g] = element(4 + i / 2, i);
      }
    }
  }
  const int g = lane >> 2, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? g : g + 8, col = 2 * t + (i & 1);
    float acc = d[i];
    for (int k = 0; k < K; ++k) acc = std::fma(A[row][k], B[k][col], acc);
    d[i] = acc;
  }
  warp_leave();
}

}  // namespace emu

// Any value will do: the models take pointers. The low 32 bits of the address, so that alignment
// arithmetic on it reads as on the device (the device's shared window starts at 0, this does not).
inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p)); }

// PTX ISA "cp.async" (.cg, cp-size 16, src-size 16 or 0), "cp.async.commit_group",
// "cp.async.wait_group" and "Async-group mechanism": a cp.async only initiates a copy; a commit
// batches this thread's uncommitted copies into a new per-thread group (an empty one if there are
// none); wait_group N waits until at most the N most recent groups are pending and every older one
// is complete, and only then are that group's writes visible. Nothing else (no barrier) completes a
// copy. The model defers every copy to that point:
//  - issue: both addresses must be 16-byte aligned (the ISA's natural alignment for 16 bytes); the
//    16 destination bytes are set to 0xff (NaN) at once, since their contents are undefined until
//    completion, so a read that comes too early sees NaN even where the stage held older data; the
//    source is not read yet; at completion its first src-size bytes land and the rest of the 16
//    are zero (with src-size 0 the source is never read).
//  - commit: this thread's uncommitted copies become its newest group.
//  - wait<N>: completes (reads global, writes shared, in issue order) this thread's committed groups
//    but the N newest, positionally: an empty group counts as one of the N (the ISA calls it
//    trivially complete; counting it is what the usual pipeline tails rely on). Uncommitted copies
//    are not touched: wait_group concerns committed groups only (cp.async.wait_all would be commit +
//    wait 0), so a copy whose commit was forgotten stays pending.
//  - thread exit: every pending copy of the thread completes (groups in order, then the uncommitted).
// Copies read global memory when they complete, not when issued.
inline void cp_async_16(void* dst, const void* src, int src_bytes) {
  emu::Fiber& f = emu::this_thread("cp.async");
  if (src_bytes < 0 || src_bytes > 16) {
    ::torchext_emu_rt::fail("cp.async: src-size " + std::to_string(src_bytes) + " outside 0..16 (cp-size 16)");
  }
  emu::check_aligned_16(dst, "cp.async", "shared destination");
  emu::check_aligned_16(src, "cp.async", "global source");
  std::memset(dst, 0xff, 16);
  f.async_uncommitted.push_back(::torchext_emu_rt::AsyncCopy{dst, src_bytes > 0 ? src : nullptr, src_bytes});
}

inline void cp_async_commit() {
  emu::Fiber& f = emu::this_thread("cp.async.commit_group");
  f.async_groups.push_back(std::move(f.async_uncommitted));
  f.async_uncommitted.clear();
}

template <int N>
inline void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group N takes a non-negative constant");
  ::torchext_emu_rt::complete_async_groups(emu::this_thread("cp.async.wait_group"), static_cast<size_t>(N));
}

// PTX ISA "ldmatrix" (emu::ldmatrix above): .x4 reads four matrices (addresses from all 32 lanes),
// .x2 two (lanes 0-15).
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
  emu::ldmatrix<4, false>(r, row_addr, "ldmatrix.x4");
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) {
  emu::ldmatrix<4, true>(r, row_addr, "ldmatrix.x4.trans");
}
inline void ldmatrix_x2(uint32_t (&r)[2], const void* row_addr) {
  emu::ldmatrix<2, false>(r, row_addr, "ldmatrix.x2");
}
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row_addr) {
  emu::ldmatrix<2, true>(r, row_addr, "ldmatrix.x2.trans");
}

// PTX ISA "mma" (emu::mma above).
inline void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::mma<emu::Kind::kBf16>(d, a, b, "mma.m16n8k16.bf16");
}
inline void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::mma<emu::Kind::kF16>(d, a, b, "mma.m16n8k16.f16");
}
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::mma<emu::Kind::kTf32>(d, a, b, "mma.m16n8k8.tf32");
}

// PTX ISA "cvt", .rna.tf32.f32 (no .satfinite): rounds to tf32 "to nearest, with ties away from
// zero". As on the GPUs (CUTLASS relies on it, the ISA only says tf32's layout is implementation
// defined) the result is an f32 bit pattern with the low 13 mantissa bits zero, i.e. 10 mantissa
// bits kept: add half of the dropped range to the magnitude and truncate. Subnormals round the same
// way (no .ftz); a finite value at or past the midpoint above tf32's largest (0x7f7fe000) rounds to
// inf, as round-to-nearest does without .satfinite; inf stays inf. NaN (the ISA leaves its result
// unspecified without .satfinite) gives a quiet NaN with the same sign and the upper 10 payload bits.
inline uint32_t cvt_tf32(float x) {
  const uint32_t u = emu::to_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u) {
    return (u & 0x007fffffu) != 0 ? ((u & 0xffffe000u) | 0x00400000u) : u;
  }
  return (u + 0x1000u) & 0xffffe000u;  // the magnitude's carry may reach the exponent (and inf)
}

}  // namespace ptx
}  // namespace cuda
}  // namespace torchext
