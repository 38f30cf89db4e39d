// Tensor maps for the tensor memory accelerator (TMA), made on the host: a 2-D tensor of 2- or 4-byte
// elements, `inner` elements per row (contiguous), `outer` rows `row_bytes` apart, read in boxes of
// box_inner x box_outer elements into shared memory with the 128-byte swizzle (box_inner * element
// size = 128 bytes) or none. The driver's cuTensorMapEncodeTiled is reached through the runtime's
// entry-point query, so the extension links no libcuda. The emulation (TORCHEXT_EMU) encodes its
// own description into the same 128 bytes (tests/cuda_emu/include/emu_tma.h).
#pragma once

#include <cstdint>

namespace torchext {
namespace cuda {

// A kernel takes it by value as a __grid_constant__ parameter; the copy instruction reads it there.
struct alignas(128) TmaMap {
  unsigned char bytes[128];
};

struct TmaBox {
  const void* base;        // 16-byte aligned
  int element_bytes;       // 2 or 4
  uint64_t inner, outer;   // elements per row, rows
  uint64_t row_bytes;      // a multiple of 16
  uint32_t box_inner, box_outer;
  bool swizzle_128b;
};

}  // namespace cuda
}  // namespace torchext

#ifdef TORCHEXT_EMU
#include "emu_tma.h"  // tests/cuda_emu/include: encode_tma_map for the emulation's copy model
#else

#include <c10/util/Exception.h>
#include <cuda.h>
#include <cuda_runtime.h>

#include <mutex>

namespace torchext {
namespace cuda {

// Fills `map` for `box`; fails with the driver's error code.
inline void encode_tma_map(TmaMap* map, const TmaBox& box) {
  static_assert(sizeof(TmaMap) == sizeof(CUtensorMap) && alignof(TmaMap) == alignof(CUtensorMap), "CUtensorMap");
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static Encode encode = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &status) ==
            cudaSuccess &&
        status == cudaDriverEntryPointSuccess) {
      encode = reinterpret_cast<Encode>(fn);
    }
  });
  TORCH_CHECK(encode != nullptr, "torchext: the CUDA driver has no cuTensorMapEncodeTiled (TMA needs CUDA 12)");
  const cuuint64_t dims[2] = {box.inner, box.outer};
  const cuuint64_t strides[1] = {box.row_bytes};
  const cuuint32_t boxdims[2] = {box.box_inner, box.box_outer};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = encode(reinterpret_cast<CUtensorMap*>(map),
                            box.element_bytes == 2 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
                            2, const_cast<void*>(box.base), dims, strides, boxdims, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE,
                            box.swizzle_128b ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "torchext: cuTensorMapEncodeTiled failed with CUresult ", static_cast<int>(r));
}

}  // namespace cuda
}  // namespace torchext

#endif  // TORCHEXT_EMU
