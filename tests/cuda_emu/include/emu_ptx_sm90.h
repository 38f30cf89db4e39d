// CPU models of the Hopper (sm_90a) instructions behind csrc/cuda/ptx_sm90.cuh, which includes this
// file instead of its inline assembly when TORCHEXT_EMU is defined. Same names and signatures; each
// model follows the PTX ISA section named at it (ISA 8.x/9.0: "Parallel Synchronization and
// Communication Instructions: mbarrier", "Data Movement and Conversion Instructions:
// cp.async.bulk.tensor" with "Tensor Access Modes" / the tensor-map swizzle modes, and
// "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions"), written from the ISA text,
// not from any kernel that uses it. Where the ISA leaves room the model takes the choice most likely
// to expose a kernel bug, and says so.
//
// Shared memory: the models work on the launch's dynamic shared memory only (emu_runtime.h's
// DynamicSmem, aligned to 2^18 bytes so that the low 18 bits of a pointer into it are its offset,
// the shared-window address the device would use). An mbarrier, a copy destination or a matrix
// descriptor anywhere else is reported. The block's mbarrier states, its copies in flight and each
// thread's queued wgmma work live in emu_runtime.h (Block, Fiber), reset at each block's start.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "cuda/tma.h"

namespace torchext {
namespace cuda {
namespace ptx {
namespace emu {

using ::torchext_emu_rt::BulkCopy;
using ::torchext_emu_rt::Mbarrier;

// The offset in the block's dynamic shared memory of `p`, whose `bytes` bytes must all lie in it.
inline uint32_t smem_offset(const void* p, size_t bytes, const char* op, const char* what) {
  const ::torchext_emu_rt::DynamicSmem& d = ::torchext_emu_rt::dynamic_smem();
  const uintptr_t u = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(d.data);
  if (d.data == nullptr || u < lo || u + bytes > lo + d.bytes) {
    ::torchext_emu_rt::fail(std::string(op) + ": " + what + " " + hex(p) + " (" + std::to_string(bytes) +
                            " bytes) is not in the block's dynamic shared memory (" + std::to_string(d.bytes) +
                            " bytes at " + hex(d.data) + "); the emulation models mbarrier, TMA and wgmma on " +
                            "dynamic shared memory only");
  }
  return static_cast<uint32_t>(u - lo);
}

// ------------------------------------------------------------------------------------ mbarrier
// PTX ISA "mbarrier" (9.7.13.15): an opaque 64-bit object in shared memory with a current phase, a
// pending arrival count (reset to the expected count given to mbarrier.init when a phase
// completes), and a tx-count of pending transaction bytes, in [-(2^20-1), 2^20-1]. A phase completes
// when its pending arrivals reach zero and its tx-count is zero ("Phase Completion of the mbarrier
// object"); expect-tx adds to the tx-count, complete-tx (the copies' completion mechanism
// mbarrier::complete_tx::bytes) subtracts from it, and the tx-count may go negative first when a
// copy lands before its bytes are announced. The state is kept in Block::mbarriers by offset; the 8
// bytes hold an image of it, rewritten at every change and compared at every use, so an ordinary
// store over a barrier (a buffer that overlaps it) is reported, and so is a barrier used before
// mbarrier.init (the launch fills shared memory with 0xff bytes).
constexpr int64_t kMaxCount = (int64_t(1) << 20) - 1;

inline uint64_t image(const Mbarrier& m) {
  return uint64_t(m.pending) | (uint64_t(m.expected) << 20) | ((uint64_t(m.tx) & 0x1fffffull) << 40) |
         (uint64_t(m.phase & 1) << 63);
}

inline std::string where(uint32_t off) { return "the mbarrier at dynamic shared memory offset " + std::to_string(off); }

inline Mbarrier& mbarrier_of(const uint64_t* bar, const char* op, uint32_t* off_out) {
  const uint32_t off = smem_offset(bar, 8, op, "mbarrier");
  if (off % 8 != 0) ::torchext_emu_rt::fail(std::string(op) + ": mbarrier " + hex(bar) + " is not 8-byte aligned");
  Block& b = ::torchext_emu_rt::block();
  auto it = b.mbarriers.find(off);
  if (it == b.mbarriers.end()) ::torchext_emu_rt::fail(std::string(op) + ": " + where(off) + " used before mbarrier.init");
  if (*bar != image(it->second)) {
    ::torchext_emu_rt::fail(std::string(op) + ": the 8 bytes of " + where(off) +
                            " were overwritten by an ordinary store since its last mbarrier operation");
  }
  if (off_out) *off_out = off;
  return it->second;
}

inline void publish(uint32_t off, const Mbarrier& m) {
  unsigned char* smem = ::torchext_emu_rt::dynamic_smem_ptr();
  const uint64_t v = image(m);
  std::memcpy(smem + off, &v, 8);
  ++::torchext_emu_rt::block().mbarrier_events;
}

inline void complete_if_done(Mbarrier& m) {
  if (m.pending == 0 && m.tx == 0) {
    ++m.phase;
    m.pending = m.expected;
  }
}

inline void check_tx(const Mbarrier& m, uint32_t off, const char* op) {
  if (m.tx > kMaxCount || m.tx < -kMaxCount) {
    ::torchext_emu_rt::fail(std::string(op) + ": the tx-count of " + where(off) + " would be " + std::to_string(m.tx) +
                            ", outside [-(2^20-1), 2^20-1]");
  }
}

// complete-tx of `bytes` on the barrier at `off` (a copy landing); the barrier must still be there.
inline void complete_tx_at(uint32_t off, uint32_t bytes, const char* op) {
  unsigned char* smem = ::torchext_emu_rt::dynamic_smem_ptr();
  Mbarrier& m = mbarrier_of(reinterpret_cast<const uint64_t*>(smem + off), op, nullptr);
  m.tx -= bytes;
  check_tx(m, off, op);
  complete_if_done(m);
  publish(off, m);
}

// The test hook for complete-tx without a copy (no wrapper in ptx_sm90.cuh uses it alone).
inline void mbarrier_complete_tx(uint64_t* bar, uint32_t bytes) {
  this_thread("mbarrier.complete_tx");
  complete_tx_at(smem_offset(bar, 8, "mbarrier.complete_tx", "mbarrier"), bytes, "mbarrier.complete_tx");
}

inline void arrive(uint64_t* bar, uint32_t tx_bytes, bool expect, const char* op) {
  this_thread(op);
  uint32_t off;
  Mbarrier& m = mbarrier_of(bar, op, &off);
  if (expect) {
    if (tx_bytes > kMaxCount) {
      ::torchext_emu_rt::fail(std::string(op) + ": expect-tx of " + std::to_string(tx_bytes) + " bytes is over 2^20-1");
    }
    m.tx += tx_bytes;
    check_tx(m, off, op);
  }
  if (m.pending == 0) {
    // Only possible while the phase waits for transaction bytes: an arrival beyond the count.
    ::torchext_emu_rt::fail(std::string(op) + ": arrival on " + where(off) + " whose current phase (" +
                            std::to_string(m.phase) + ") already has all its " + std::to_string(m.expected) +
                            " arrivals and waits for " + std::to_string(m.tx) +
                            " transaction bytes: more arrivals than mbarrier.init's count");
  }
  --m.pending;
  complete_if_done(m);
  publish(off, m);
}

// Lands the copies in flight that signal the barrier at `off`, oldest first (a thread waits on it).
inline bool land_copies(uint32_t off) {
  Block& b = ::torchext_emu_rt::block();
  bool any = false;
  for (size_t i = 0; i < b.bulk_copies.size();) {
    if (b.bulk_copies[i].bar != off) {
      ++i;
      continue;
    }
    std::function<void()> perform = std::move(b.bulk_copies[i].perform);
    b.bulk_copies.erase(b.bulk_copies.begin() + static_cast<std::ptrdiff_t>(i));
    perform();
    any = true;
  }
  return any;
}

}  // namespace emu

// mbarrier.init.shared::cta.b64 (ISA "mbarrier.init"): phase 0, pending arrivals = expected =
// `arrivals` (1..2^20-1), tx-count 0.
inline void mbarrier_init(uint64_t* bar, int arrivals) {
  const char* op = "mbarrier.init";
  emu::this_thread(op);
  const uint32_t off = emu::smem_offset(bar, 8, op, "mbarrier");
  if (off % 8 != 0) ::torchext_emu_rt::fail(std::string(op) + ": mbarrier " + emu::hex(bar) + " is not 8-byte aligned");
  if (arrivals < 1 || arrivals > emu::kMaxCount) {
    ::torchext_emu_rt::fail(std::string(op) + ": count " + std::to_string(arrivals) + " outside 1..2^20-1");
  }
  emu::Mbarrier m;
  m.expected = m.pending = static_cast<uint32_t>(arrivals);
  ::torchext_emu_rt::block().mbarriers[off] = m;
  emu::publish(off, m);
}

// fence.mbarrier_init.release.cluster: orders the inits before their use by the async proxy. The
// model's state is visible at once; nothing to do.
inline void fence_barrier_init() {}

// mbarrier.arrive.expect_tx (ISA "mbarrier.expect_tx", "mbarrier.arrive"): expect-tx(bytes), then
// arrive-on, on the current phase.
inline void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  emu::arrive(bar, bytes, true, "mbarrier.arrive.expect_tx");
}

// mbarrier.arrive: one arrival on the current phase; the phase completes when it is the last one
// pending and no transaction bytes are.
inline void mbarrier_arrive(uint64_t* bar) { emu::arrive(bar, 0, false, "mbarrier.arrive"); }

// mbarrier.try_wait.parity (ISA "mbarrier.test_wait / mbarrier.try_wait"): true when the phase
// whose parity is `parity` has completed: the current phase has the other parity, i.e. the phase of
// that parity is the immediately preceding one (so on a fresh barrier, in phase 0, parity 1 is
// complete and parity 0 is not). When it has not, the copies in flight that signal this barrier
// land (the device's wait lasts a while), then the thread yields to the others for one scheduler
// round ("a potentially blocking instruction"), and the answer is the phase's state after it. Two
// polls of the same barrier and parity with no mbarrier event of the block between them mark the
// thread stuck; a round with no event in which every waiting thread is stuck is a deadlock
// (emu_runtime.h, run_block).
inline bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
  const char* op = "mbarrier.try_wait.parity";
  ::torchext_emu_rt::Fiber& f = emu::this_thread(op);
  ::torchext_emu_rt::Block& b = ::torchext_emu_rt::block();
  uint32_t off;
  const uint32_t p = parity & 1;
  auto complete = [&] { return (emu::mbarrier_of(bar, op, &off).phase & 1) != p; };
  if (complete()) {
    f.wait_events = ~0ull;
    return true;
  }
  if (emu::land_copies(off) && complete()) {
    f.wait_events = ~0ull;
    return true;
  }
  f.fruitless = f.wait_bar == off && f.wait_parity == p && f.wait_events == b.mbarrier_events;
  f.wait_bar = off;
  f.wait_parity = p;
  f.wait_events = b.mbarrier_events;
  ::torchext_emu_rt::yield(::torchext_emu_rt::State::kYield);
  return complete();
}

inline void mbarrier_wait_parity(uint64_t* bar, uint32_t parity) {
  while (!mbarrier_try_wait_parity(bar, parity)) {
  }
}

// fence.proxy.async.shared::cta: the model's generic and async proxies see the same bytes at once.
inline void fence_proxy_async() {}

// ------------------------------------------------------------------------------------ TMA
// cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes (ISA
// "cp.async.bulk.tensor", "Tensor Access Modes: Tiled mode", "Bounding box", "Tensor-map" and its
// "Tensor copy swizzling modes"): the box of the map (box_inner x box_outer elements) whose first
// element is at tensor coordinates (c0, c1), c0 along the contiguous dimension, is copied to `dst`
// row after row (box row r, element i at byte r * box_inner * elem + i * elem); box elements whose
// coordinates lie outside the tensor (either side) are written as zero (the map asks no NaN fill);
// the full box's bytes count as completed transaction bytes on `bar`, out-of-bounds ones included.
// The 128-byte swizzle permutes 16-byte chunks on the shared-memory address: bits [4,7) of the
// address are XOR'ed with bits [7,10), i.e. chunk c of a 128-byte row r (counted from a 1024-byte
// boundary) lands at chunk c ^ (r % 8), which is why a swizzled destination must be 1024-byte
// aligned (and any destination 128-byte aligned). The model: at issue the map, `dst` (in the
// block's dynamic shared memory, aligned, the whole box inside it) and `bar` (initialized) are
// checked and the destination bytes set to 0xff (NaN), their contents being undefined until the
// copy completes; the copy lands (global memory read then, bytes written, complete-tx on `bar`)
// when a thread waits on an incomplete phase of `bar`, or else at the end of the scheduler round in
// which it was issued (emu_runtime.h, run_block): after every other thread of the block has run up
// to its next wait or barrier, so a thread that reads the destination without waiting on `bar`
// reads NaN, and so does one that reads a slot whose refill was issued too early.
inline void tma_load_2d(void* dst, const void* map, int c0, int c1, uint64_t* bar) {
  const char* op = "cp.async.bulk.tensor.2d";
  emu::this_thread(op);
  if (reinterpret_cast<uintptr_t>(map) % 64 != 0) {
    ::torchext_emu_rt::fail(std::string(op) + ": tensor map " + emu::hex(map) + " is not 64-byte aligned");
  }
  ::torchext::cuda::emu_tma::Encoded e;
  if (!::torchext::cuda::emu_tma::decode(map, &e)) {
    ::torchext_emu_rt::fail(std::string(op) + ": the tensor map at " + emu::hex(map) +
                            " is not one encode_tma_map wrote (or it was overwritten)");
  }
  const uint32_t eb = e.element_bytes, pitch = e.box_inner * eb, bytes = pitch * e.box_outer;
  const uint32_t dst_off = emu::smem_offset(dst, bytes, op, "destination");
  if (dst_off % 128 != 0) {
    ::torchext_emu_rt::fail(std::string(op) + ": shared destination " + emu::hex(dst) + " is not 128-byte aligned");
  }
  if (e.swizzle_128b && dst_off % 1024 != 0) {
    ::torchext_emu_rt::fail(std::string(op) + ": shared destination " + emu::hex(dst) +
                            " is not 1024-byte aligned, as the 128-byte swizzle needs");
  }
  if (e.swizzle_128b && pitch != 128) {
    ::torchext_emu_rt::fail(std::string(op) + ": boxes of " + std::to_string(pitch) +
                            "-byte rows with the 128-byte swizzle are not modelled (only 128-byte rows)");
  }
  uint32_t bar_off;
  emu::mbarrier_of(bar, op, &bar_off);
  std::memset(dst, 0xff, bytes);
  auto perform = [e, dst_off, c0, c1, bar_off, op] {
    unsigned char* smem = ::torchext_emu_rt::dynamic_smem_ptr();
    const uint32_t eb = e.element_bytes, pitch = e.box_inner * eb;
    for (uint32_t r = 0; r < e.box_outer; ++r) {
      const int64_t y = int64_t(c1) + r;
      for (uint32_t i = 0; i < e.box_inner; ++i) {
        const int64_t x = int64_t(c0) + i;
        uint32_t o = dst_off + r * pitch + i * eb;
        if (e.swizzle_128b) o ^= ((o >> 7) & 7u) << 4;
        if (x < 0 || y < 0 || x >= int64_t(e.inner) || y >= int64_t(e.outer)) {
          std::memset(smem + o, 0, eb);
        } else {
          std::memcpy(smem + o, reinterpret_cast<const unsigned char*>(e.base) + y * e.row_bytes + x * eb, eb);
        }
      }
    }
    emu::complete_tx_at(bar_off, pitch * e.box_outer, op);
  };
  ::torchext_emu_rt::block().bulk_copies.push_back(emu::BulkCopy{bar_off, perform});
}

// ------------------------------------------------------------------------------------ wgmma
// PTX ISA "Matrix Descriptor Format" (9.7.15.5.1.2.2): bits 0-13 the start address, 16-29 the
// leading dimension byte offset (LBO), 32-45 the stride dimension byte offset (SBO), each as
// matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4; bits 49-51 the matrix base offset; bits 62-63
// the swizzle mode, 0 none, 1 128-byte, 2 64-byte, 3 32-byte.
enum class Swizzle : uint64_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

inline uint64_t smem_desc(const void* start, uint32_t leading_bytes, uint32_t stride_bytes, Swizzle swizzle) {
  auto encode = [](uint64_t x) { return (x & 0x3FFFF) >> 4; };
  return encode(smem_addr(start)) | (encode(leading_bytes) << 16) | (encode(stride_bytes) << 32) |
         (static_cast<uint64_t>(swizzle) << 62);
}

namespace emu {

// A decoded operand descriptor: byte offsets in dynamic shared memory, the swizzle span in bytes
// (0 for none), K-major (trans 0) or MN-major (trans 1).
struct Operand {
  uint32_t start, lbo, sbo, span;
  int trans;
};

inline Operand decode_desc(uint64_t desc, int trans, const char* op, const char* which) {
  const uint32_t base_offset = static_cast<uint32_t>((desc >> 49) & 7);
  if (base_offset != 0) {
    ::torchext_emu_rt::fail(std::string(op) + ": matrix " + which + "'s descriptor has base offset " +
                            std::to_string(base_offset) + "; only 0 (patterns starting at their own boundary) is modelled");
  }
  static const uint32_t spans[4] = {0, 128, 64, 32};
  return Operand{static_cast<uint32_t>(desc & 0x3FFF) << 4, static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4,
                 static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4, spans[desc >> 62], trans};
}

// PTX ISA "Shared Memory Matrix Layout" / "Canonical Layouts" (9.7.15.5.1.2.1.3), for 16-bit
// elements (T = 8 per 16 bytes), in bytes; mn is the row of A (M) or the column of B (N), k in 0..15:
//   K-major, none:      ((8,m),(T,2k)):((1T,SBO),(1,LBO))  core matrices of 8 rows x 16 bytes,
//                       rows 16 bytes apart, 8-row groups SBO apart, the two 8-element K halves LBO apart;
//   K-major, swizzled:  ((8,m),(T,2k)):((sT,SBO),(1,T))    rows of the span s*16 bytes (s = 8, 4, 2 for
//                       128/64/32B), K contiguous in the row, 8-row groups SBO apart (LBO unused);
//   MN-major, none:     ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))  8 MN-elements contiguous, K rows 16 bytes
//                       apart, 8-element MN groups SBO apart, 8-row K groups LBO apart;
//   MN-major, swizzled: ((T,s,m),(8,k)):((1,T,LBO),(sT,SBO))  s*8 MN-elements contiguous (one span),
//                       K rows a span apart, span-wide MN groups LBO apart, 8-row K groups SBO apart;
// then the swizzle Swizzle<3|2|1,4,3> on the byte address: bits [4, 4+b) XOR'ed with [7, 7+b).
inline uint32_t element_offset(const Operand& o, int mn, int k, const char* op, const char* which) {
  uint64_t off;
  if (o.trans == 0) {
    off = o.span ? uint64_t(o.start) + uint64_t(mn % 8) * o.span + uint64_t(mn / 8) * o.sbo + uint64_t(k) * 2
                 : uint64_t(o.start) + uint64_t(mn % 8) * 16 + uint64_t(mn / 8) * o.sbo + uint64_t(k / 8) * o.lbo +
                       uint64_t(k % 8) * 2;
  } else {
    const uint32_t per_span = o.span / 2;  // elements in one swizzle span
    off = o.span ? uint64_t(o.start) + uint64_t(mn % per_span) * 2 + uint64_t(mn / per_span) * o.lbo +
                       uint64_t(k % 8) * o.span + uint64_t(k / 8) * o.sbo
                 : uint64_t(o.start) + uint64_t(mn % 8) * 2 + uint64_t(mn / 8) * o.sbo + uint64_t(k % 8) * 16 +
                       uint64_t(k / 8) * o.lbo;
  }
  if (o.span) off ^= ((off >> 7) & (o.span / 16 - 1)) << 4;
  if (off + 2 > ::torchext_emu_rt::dynamic_smem().bytes) {
    ::torchext_emu_rt::fail(std::string(op) + ": matrix " + which + "'s element (" + std::to_string(mn) + ", k " +
                            std::to_string(k) + ") is at offset " + std::to_string(off) +
                            ", past the block's dynamic shared memory (" +
                            std::to_string(::torchext_emu_rt::dynamic_smem().bytes) + " bytes)");
  }
  return static_cast<uint32_t>(off);
}

// PTX ISA "Register Fragments" (9.7.15.5.1.1.1), accumulator D of .m64nNk16, .f32 (Figure "WGMMA
// .m64nNk16 register fragment layout for accumulator matrix D"): warp w of the warpgroup holds rows
// 16w..16w+15; in each 8-column slice j, lane l holds row 16w + l/4 (d[4j], d[4j+1]) and row
// 16w + l/4 + 8 (d[4j+2], d[4j+3]), columns 8j + 2(l%4) and 8j + 2(l%4) + 1. D = A * B (+ D):
// each element accumulated in f32 from D (or 0 when `accumulate` is 0: D is then not read) adding
// the 16 products in increasing k, each rounded once (fma), as the mma model does; the ISA leaves
// order and internal precision unspecified, so kernel tests need a tolerance.
template <int N, bool BF16>
inline void wgmma_perform(float* d, const Operand& A, const Operand& B, int accumulate, int tw, const char* op) {
  const unsigned char* smem = ::torchext_emu_rt::dynamic_smem_ptr();
  auto value = [&](const Operand& o, int mn, int k, const char* which) {
    const uint16_t h = load_b16(smem + element_offset(o, mn, k, op, which), 0);
    return BF16 ? bf16_value(h) : f16_value(h);
  };
  const int warp = tw / 32, lane = tw % 32;
  float a[2][16];
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 16; ++k) a[h][k] = value(A, 16 * warp + lane / 4 + 8 * h, k, "A");
  for (int j = 0; j < N / 8; ++j) {
    for (int c = 0; c < 2; ++c) {
      const int col = 8 * j + 2 * (lane % 4) + c;
      float bk[16];
      for (int k = 0; k < 16; ++k) bk[k] = value(B, col, k, "B");
      for (int h = 0; h < 2; ++h) {
        float& out = d[4 * j + 2 * h + c];
        float acc = accumulate ? out : 0.0f;
        for (int k = 0; k < 16; ++k) acc = std::fma(a[h][k], bk[k], acc);
        out = acc;
      }
    }
  }
}

// PTX ISA "wgmma.mma_async" (9.7.15.5.2) and "Asynchronous wgmma Proxy Operations" / "wgmma.fence",
// "wgmma.commit_group", "wgmma.wait_group": the instruction is .sync.aligned over the warpgroup (the
// 128 threads 128g..128g+127 of the block, linear thread index), with identical descriptors in all
// of them; a wgmma.fence must precede the first one. It only starts the operation: the model checks
// the warpgroup, the fence and that this thread's n-th wgmma matches the rest of its warpgroup's
// n-th (same shape, type and descriptors), decodes the descriptors, and queues the work in this
// thread; commit_group makes the queued work one group; wait_group N performs (reads shared memory,
// writes this thread's accumulators) every committed group but the N newest, oldest first. Until
// then the accumulators keep whatever they held and shared memory is not read, so reading D or
// overwriting A/B before the wait shows as a wrong result, as it may on the device. A thread that
// exits with work queued is reported (emu_runtime.h, fiber_entry).
template <int N, bool BF16, int TRANS_A, int TRANS_B>
inline void wgmma_issue(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate, const char* op) {
  static_assert(TRANS_A == 0 || TRANS_A == 1, "imm-trans-a is 0 or 1");
  static_assert(TRANS_B == 0 || TRANS_B == 1, "imm-trans-b is 0 or 1");
  ::torchext_emu_rt::Fiber& f = this_thread(op);
  Block& b = ::torchext_emu_rt::block();
  const int t = b.current;
  const int threads = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
  const int group = t / 128;
  if (128 * (group + 1) > threads) {
    ::torchext_emu_rt::fail(std::string(op) + " in a partial warpgroup (block of " + std::to_string(threads) +
                            " threads): all 128 threads of the warpgroup must execute it");
  }
  if (!f.wgmma_fenced) {
    ::torchext_emu_rt::fail(std::string(op) + ": no wgmma.fence before this thread's first wgmma.mma_async");
  }
  if (b.wgmma_log.size() <= static_cast<size_t>(group)) b.wgmma_log.resize(group + 1);
  std::vector<::torchext_emu_rt::WgmmaIssue>& log = b.wgmma_log[group];
  const size_t n = f.wgmma_issued++;
  if (n == log.size()) {
    log.push_back(::torchext_emu_rt::WgmmaIssue{op, desc_a, desc_b, t});
  } else if (n < log.size()) {
    const ::torchext_emu_rt::WgmmaIssue& first = log[n];
    if (std::strcmp(first.op, op) != 0 || first.desc_a != desc_a || first.desc_b != desc_b) {
      ::torchext_emu_rt::fail(std::string(op) + ": wgmma number " + std::to_string(n) + " of thread " +
                              std::to_string(t) + " differs from thread " + std::to_string(first.thread) +
                              "'s of the same warpgroup (" + first.op + "; descriptors must be the same across the warpgroup)");
    }
  }
  const Operand A = decode_desc(desc_a, TRANS_A, op, "A"), B = decode_desc(desc_b, TRANS_B, op, "B");
  const int tw = t % 128;
  f.wgmma_uncommitted.push_back([d, A, B, accumulate, tw, op] { wgmma_perform<N, BF16>(d, A, B, accumulate, tw, op); });
}

}  // namespace emu

// wgmma.fence.sync.aligned: recorded, so that a first wgmma without one is reported.
inline void wgmma_fence() { emu::this_thread("wgmma.fence").wgmma_fenced = true; }

// wgmma.commit_group.sync.aligned: this thread's queued wgmma work becomes its newest group (an
// empty one when there is none).
inline void wgmma_commit() {
  ::torchext_emu_rt::Fiber& f = emu::this_thread("wgmma.commit_group");
  f.wgmma_groups.push_back(std::move(f.wgmma_uncommitted));
  f.wgmma_uncommitted.clear();
}

// wgmma.wait_group N: performs this thread's committed groups but the N newest, oldest first;
// uncommitted work stays queued.
template <int N>
inline void wgmma_wait() {
  static_assert(N >= 0, "wgmma.wait_group N takes a non-negative constant");
  ::torchext_emu_rt::Fiber& f = emu::this_thread("wgmma.wait_group");
  while (f.wgmma_groups.size() > static_cast<size_t>(N)) {
    std::vector<std::function<void()>> group = std::move(f.wgmma_groups.front());
    f.wgmma_groups.pop_front();
    for (auto& work : group) work();
  }
}

template <int TRANS_A, int TRANS_B>
inline void wgmma_m64n128k16_bf16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::wgmma_issue<128, true, TRANS_A, TRANS_B>(d, desc_a, desc_b, accumulate, "wgmma.mma_async.m64n128k16.bf16");
}
template <int TRANS_A, int TRANS_B>
inline void wgmma_m64n128k16_f16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::wgmma_issue<128, false, TRANS_A, TRANS_B>(d, desc_a, desc_b, accumulate, "wgmma.mma_async.m64n128k16.f16");
}
template <int TRANS_A, int TRANS_B>
inline void wgmma_m64n256k16_bf16(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::wgmma_issue<256, true, TRANS_A, TRANS_B>(d, desc_a, desc_b, accumulate, "wgmma.mma_async.m64n256k16.bf16");
}
template <int TRANS_A, int TRANS_B>
inline void wgmma_m64n256k16_f16(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::wgmma_issue<256, false, TRANS_A, TRANS_B>(d, desc_a, desc_b, accumulate, "wgmma.mma_async.m64n256k16.f16");
}

// setmaxnreg.{inc,dec}.sync.aligned.u32 (ISA "setmaxnreg"): registers are not modelled; R must be a
// multiple of 8 in 24..256.
template <int R>
inline void setmaxnreg_inc() {
  static_assert(R % 8 == 0 && R >= 24 && R <= 256, "setmaxnreg: R is a multiple of 8 in 24..256");
}
template <int R>
inline void setmaxnreg_dec() {
  static_assert(R % 8 == 0 && R >= 24 && R <= 256, "setmaxnreg: R is a multiple of 8 in 24..256");
}

}  // namespace ptx
}  // namespace cuda
}  // namespace torchext
