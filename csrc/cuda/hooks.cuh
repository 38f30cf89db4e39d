// The hook points through which the CPU emulation (tests/cuda_emu) runs these sources: each is a
// macro with its CUDA meaning here, and the emulation defines its own before any source is read
// (emu_runtime.h, included first). An edit to a kernel can break only what these names promise.
#pragma once

// kernel<<<grid, block, smem, stream>>>(args...)
#ifndef TORCHEXT_LAUNCH
#define TORCHEXT_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

// 1 in the device code of sm_80 and newer (cp.async, ldmatrix, bf16 mma), where the tensor-core
// kernels have a body; 0 elsewhere (host pass, older targets), where they only trap.
#ifndef TORCHEXT_SM80_CODE
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define TORCHEXT_SM80_CODE 1
#else
#define TORCHEXT_SM80_CODE 0
#endif
#endif

// 1 in device code for sm_90a (the arch-specific Hopper target: wgmma, setmaxnreg), where the
// warp-specialized GEMM has a body; 0 elsewhere (plain sm_90 included), where it only traps.
#ifndef TORCHEXT_SM90A_CODE
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TORCHEXT_SM90A_CODE 1
#else
#define TORCHEXT_SM90A_CODE 0
#endif
#endif

// The dispatch key the CUDA kernels register for (the emulation registers them for the CPU).
#ifndef TORCHEXT_DEVICE_KEY
#define TORCHEXT_DEVICE_KEY CUDA
#endif

// CUDA's limit on gridDim.y (the emulation shrinks it to 2, so that loops over what does not fit
// run at test sizes).
#ifndef TORCHEXT_MAX_GRID_Y
#define TORCHEXT_MAX_GRID_Y 65535
#endif

// Whether host staging buffers are pinned (the emulation has no GPU to pin them for).
#ifndef TORCHEXT_PIN_STAGING
#define TORCHEXT_PIN_STAGING true
#endif

// Whether an optimizer's lr tensor is read on the host rather than through a device pointer (the
// emulation, whose tensors all live on the CPU, can send a CPU tensor down the device path).
#ifndef TORCHEXT_LR_ON_HOST
#define TORCHEXT_LR_ON_HOST(t) ((t).is_cpu())
#endif

// Marks a static __shared__ array right after its declaration: nothing on the GPU; the emulation
// fills the array with NaN bytes at the start of every block, so that a kernel reading what it did
// not write in this block sees NaN (emu_build.py checks that every declaration is marked).
#ifndef TORCHEXT_SHARED
#define TORCHEXT_SHARED(array) \
  do {                         \
  } while (0)
#endif

// Whether Linear takes the strided SIMT kernel (linear.cu) whatever the device: only the emulation
// asks, to test the kernel that GPUs older than sm_80 run.
#ifndef TORCHEXT_FORCE_STRIDED_GEMM
#define TORCHEXT_FORCE_STRIDED_GEMM() false
#endif
