// Emulation stand-in: launches are checked (and fail by throwing) in emu_runtime.h.
#pragma once
#include <c10/util/Exception.h>
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define C10_CUDA_CHECK(expr) TORCH_CHECK((expr) == cudaSuccess, "CUDA emulation: call failed: " #expr)
