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
