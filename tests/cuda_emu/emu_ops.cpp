// The emulated extension's own ops: the schemas of csrc/ops.cpp (emu_schemas.h, which emu_build.py
// writes from it) and controls for the tests. Compiled like the translated CUDA sources, with
// emu_runtime.h included first and `torchext` renamed `torchext_emu`.
#include <mma.h>
#include <torch/library.h>

#include <vector>

#include "emu_schemas.h"

namespace {
void set_capturing(bool on) { ::torchext_emu_rt::capturing() = on; }
void set_lr_as_device(bool on) { ::torchext_emu_rt::lr_as_device() = on; }
void set_reverse_order(bool on) { ::torchext_emu_rt::reverse_order() = on; }
void set_force_strided_gemm(bool on) { ::torchext_emu_rt::force_strided_gemm() = on; }
bool reverse_order() { return ::torchext_emu_rt::reverse_order(); }
// Launches, blocks, and launches over sm_80's shared memory (only the Hopper GEMM's), since the load.
std::vector<int64_t> launch_stats() {
  const auto& s = ::torchext_emu_rt::stats();
  return {s.launches, s.blocks, s.over_sm80_smem};
}

// Kernels that break the rules, to show that the emulation reports each break.
__global__ void barrier_in_half_the_block(int* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void shuffle_in_half_a_warp(int* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1);
}
__global__ void misaligned_wmma_load(const c10::Half* p) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, c10::Half, nvcuda::wmma::row_major> f;
  nvcuda::wmma::load_matrix_sync(f, p + 1, 16);
}
__global__ void trapping(int*) { __trap(); }
// Reads a neighbour's shared value with no barrier after the write.
__global__ void racing(float* out) {
  __shared__ float s[32];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = s[(threadIdx.x + 1) % 32];
}

void broken_kernel(int64_t which) {
  std::vector<int> out(64);
  std::vector<c10::Half> halves(16 * 16 + 32);
  switch (which) {
    case 0: ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, barrier_in_half_the_block, out.data()); break;
    case 1: ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, shuffle_in_half_a_warp, out.data()); break;
    case 2: ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, misaligned_wmma_load,
                                      static_cast<const c10::Half*>(halves.data())); break;
    case 3: ::torchext_emu_rt::launch(dim3(1), dim3(1025), 0, nullptr, trapping, out.data()); break;
    case 4: ::torchext_emu_rt::launch(dim3(1, 65536), dim3(32), 0, nullptr, trapping, out.data()); break;
    case 5: ::torchext_emu_rt::launch(dim3(2), dim3(32), 0, nullptr, trapping, out.data()); break;
    default: {
      std::vector<float> got(32);
      ::torchext_emu_rt::launch(dim3(1), dim3(32), 0, nullptr, racing, got.data());
      for (int i = 0; i < 32; ++i) {
        TORCH_CHECK(got[i] == static_cast<float>((i + 1) % 32), "CUDA emulation: thread ", i,
                    " read shared memory before it was written (a missing barrier)");
      }
    }
  }
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(torchext, m) {
  m.def("emu_set_capturing(bool on) -> ()", &set_capturing);
  m.def("emu_set_lr_as_device(bool on) -> ()", &set_lr_as_device);
  m.def("emu_set_reverse_order(bool on) -> ()", &set_reverse_order);
  m.def("emu_set_force_strided_gemm(bool on) -> ()", &set_force_strided_gemm);
  m.def("emu_reverse_order() -> bool", &reverse_order);
  m.def("emu_launch_stats() -> int[]", &launch_stats);
  m.def("emu_broken_kernel(int which) -> ()", &broken_kernel);
}
