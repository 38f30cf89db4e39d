// Emulation stand-in for torch's CUDA context header (see tests/cuda_emu/emu_runtime.h): a fixed sm_90
// device with a few SMs, a null stream, and a stream-capture state the tests can set.
#pragma once

#include <ATen/ATen.h>

namespace at {
namespace cuda {

struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }

struct cudaDevicePropEmu {
  int multiProcessorCount = 3;  // small, so grid-stride loops take several turns in the tests
  int major = 9;
  int minor = 0;
};
inline cudaDevicePropEmu* getCurrentDeviceProperties() {
  static cudaDevicePropEmu props;
  return &props;
}

enum class CaptureStatus { None = 0, Active = 1, Invalidated = 2 };
inline CaptureStatus currentStreamCaptureStatus() {
  return ::torchext_emu_rt::capturing() ? CaptureStatus::Active : CaptureStatus::None;
}

}  // namespace cuda
}  // namespace at

struct cudaFuncAttributes {
  int ptxVersion = 0;
  int binaryVersion = 0;
};
template <typename F>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, F*) {
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  return cudaSuccess;
}
