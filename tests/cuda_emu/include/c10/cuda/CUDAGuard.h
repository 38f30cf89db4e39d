// Emulation stand-in: one device, so guards do nothing.
#pragma once
#include <c10/core/Device.h>
namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
};
inline c10::DeviceIndex current_device() { return 0; }
}  // namespace cuda
}  // namespace c10
