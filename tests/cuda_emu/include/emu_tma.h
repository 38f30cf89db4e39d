// The emulation's tensor maps (csrc/cuda/tma.h includes this under TORCHEXT_EMU): encode_tma_map
// writes its own description of the tensor and the box into the map's 128 bytes, after the checks
// the driver's cuTensorMapEncodeTiled makes for a 2-D tiled map without interleave (CUDA driver
// API, "Tensor Map Object Management"), each failing with a c10::Error that names the field; the
// copy model (include/emu_ptx_sm90.h, tma_load_2d) reads it back with decode_tma_map, which rejects
// bytes that no encode_tma_map wrote.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>

namespace torchext {
namespace cuda {

namespace emu_tma {

constexpr uint64_t kMagic = 0x31504d414d54554dull;  // "MUTMAMP1"

// What the 128 bytes hold; `check` is a hash of the rest, so an overwritten map is caught.
struct Encoded {
  uint64_t magic;
  uint64_t base;
  uint64_t inner, outer, row_bytes;
  uint32_t element_bytes, box_inner, box_outer, swizzle_128b;
  uint64_t check;
};
static_assert(sizeof(Encoded) <= sizeof(TmaMap), "the description fits the map");

inline uint64_t hash(const Encoded& e) {
  const uint64_t words[] = {e.magic, e.base, e.inner, e.outer, e.row_bytes,
                            (uint64_t(e.element_bytes) << 32) | e.box_inner,
                            (uint64_t(e.box_outer) << 32) | e.swizzle_128b};
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint64_t w : words) {
    h ^= w;
    h *= 0x100000001b3ull;
    h ^= h >> 29;
  }
  return h;
}

// The map's description, or false where the bytes are not one encode_tma_map wrote.
inline bool decode(const void* map, Encoded* out) {
  std::memcpy(out, map, sizeof(Encoded));
  return out->magic == kMagic && out->check == hash(*out);
}

}  // namespace emu_tma

// cuTensorMapEncodeTiled's requirements for this use (rank 2, element strides 1, no interleave):
// the map 64-byte aligned; the global address 16-byte aligned; each dimension 1..2^32; the row
// stride a multiple of 16 below 2^40 (and at least a row's bytes, rows being the second
// dimension's stride); each box dimension 1..256 with the box's inner extent a multiple of 16
// bytes; with the 128-byte swizzle the inner extent at most 128 bytes (the swizzle span).
inline void encode_tma_map(TmaMap* map, const TmaBox& box) {
  TORCH_CHECK(map != nullptr && reinterpret_cast<uintptr_t>(map) % 64 == 0,
              "encode_tma_map: the tensor map must be 64-byte aligned");
  TORCH_CHECK(box.base != nullptr, "encode_tma_map: null global address");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(box.base) % 16 == 0, "encode_tma_map: global address ", box.base,
              " is not 16-byte aligned");
  TORCH_CHECK(box.element_bytes == 2 || box.element_bytes == 4, "encode_tma_map: element size ", box.element_bytes,
              " bytes (2 or 4 here)");
  TORCH_CHECK(box.inner >= 1 && box.inner <= (uint64_t(1) << 32) && box.outer >= 1 && box.outer <= (uint64_t(1) << 32),
              "encode_tma_map: global dimensions ", box.inner, " x ", box.outer, " outside 1..2^32");
  TORCH_CHECK(box.row_bytes % 16 == 0 && box.row_bytes < (uint64_t(1) << 40), "encode_tma_map: row stride ",
              box.row_bytes, " bytes is not a multiple of 16 below 2^40");
  TORCH_CHECK(box.row_bytes >= box.inner * box.element_bytes, "encode_tma_map: row stride ", box.row_bytes,
              " bytes is shorter than a row (", box.inner * box.element_bytes, " bytes)");
  TORCH_CHECK(box.box_inner >= 1 && box.box_inner <= 256 && box.box_outer >= 1 && box.box_outer <= 256,
              "encode_tma_map: box dimensions ", box.box_inner, " x ", box.box_outer, " outside 1..256");
  const uint64_t inner_bytes = uint64_t(box.box_inner) * box.element_bytes;
  TORCH_CHECK(inner_bytes % 16 == 0, "encode_tma_map: the box's inner extent, ", inner_bytes,
              " bytes, is not a multiple of 16 bytes");
  TORCH_CHECK(!box.swizzle_128b || inner_bytes <= 128, "encode_tma_map: the box's inner extent, ", inner_bytes,
              " bytes, is over the 128-byte swizzle span");
  emu_tma::Encoded e{};
  e.magic = emu_tma::kMagic;
  e.base = reinterpret_cast<uintptr_t>(box.base);
  e.inner = box.inner;
  e.outer = box.outer;
  e.row_bytes = box.row_bytes;
  e.element_bytes = static_cast<uint32_t>(box.element_bytes);
  e.box_inner = box.box_inner;
  e.box_outer = box.box_outer;
  e.swizzle_128b = box.swizzle_128b ? 1 : 0;
  e.check = emu_tma::hash(e);
  std::memset(map->bytes, 0, sizeof(map->bytes));
  std::memcpy(map->bytes, &e, sizeof(e));
}

}  // namespace cuda
}  // namespace torchext
