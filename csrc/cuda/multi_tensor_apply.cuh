// One engine for optimizer steps over lists of tensors (SGD, Adam): a single launch covers every
// tensor of a list, whatever its length. The list is cut into fixed-size chunks; block b handles
// chunk b, finding its tensor through a metadata table in device memory (per-tensor pointers,
// sizes and counters, then one (tensor, chunk) pair per block), so there is no cap on the number of
// tensors and no per-tensor launch. The table is built in pinned host memory and copied on the
// current stream; under CUDA graph capture it is written by small kernels whose arguments carry the
// bytes, so a replay rebuilds it without reading host memory that may have been reused.
//
// What an op derives per tensor from device values (its step counter, the lr, the grad scale: for
// Adam two pow() calls in double) is computed once per tensor by a prologue kernel, op.coeffs(),
// into a table beside the metadata; each block of the update then reads its tensor's entry with one
// load instead of repeating a chain of dependent loads and the arithmetic before its first access.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <c10/cuda/CUDAException.h>

#include <array>
#include <cstring>
#include <vector>

#include "cuda/vectorized.cuh"
#include "math_type.h"

namespace torchext {
namespace cuda {

// Elements per chunk: big enough that per-block setup is noise, small enough that a list of a few
// large tensors still yields thousands of blocks.
constexpr int64_t kChunkSize = 1 << 16;
constexpr int kMtaThreads = 512;

template <int N>
struct TensorMeta {
  void* ptr[N];    // nullptr for a list that is absent (e.g. no master weights)
  float* counter;  // per-tensor step counter bumped after the update, or nullptr
  int64_t numel;
  int32_t aligned;  // every ptr is 16-byte aligned, so 16-byte vector accesses are legal
  int32_t index;    // the tensor's position in the launch's lists (keys stochastic rounding's bits)
};

struct ChunkMeta {
  int32_t tensor;
  int32_t chunk;
};

// op.coeffs(tensors[i]) for every tensor, before the update kernel (stream order).
template <int N, typename Op>
__global__ void coeffs_kernel(const TensorMeta<N>* __restrict__ tensors, int64_t num_tensors,
                              typename Op::Coeffs* __restrict__ coeffs, Op op) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < num_tensors;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    coeffs[i] = op.coeffs(tensors[i]);
  }
}

// Op::kBlocksPerSm blocks per SM (2: 32 warps, enough 16-byte accesses in flight per SM for the
// memory system; an op whose registers do not fit 64 asks for 1).
template <int N, typename Op>
__global__ void __launch_bounds__(kMtaThreads, Op::kBlocksPerSm)
    multi_tensor_apply_kernel(const TensorMeta<N>* __restrict__ tensors, const ChunkMeta* __restrict__ chunks,
                              const typename Op::Coeffs* __restrict__ coeffs, Op op) {
  const ChunkMeta c = chunks[blockIdx.x];
  const TensorMeta<N> t = tensors[c.tensor];
  const int64_t start = static_cast<int64_t>(c.chunk) * kChunkSize;
  const int64_t n = t.numel - start < kChunkSize ? t.numel - start : kChunkSize;
  op(t, coeffs[c.tensor], start, n);
}

// Runs after the update kernel (stream order), so no block can read a counter already bumped.
// Atomic, so that a counter tensor shared by several params (a direct op call may pass one) gets
// one increment per param, as the CPU kernels give it.
template <int N>
__global__ void bump_counters_kernel(const TensorMeta<N>* __restrict__ tensors, int64_t num_tensors,
                                     const float* __restrict__ found_inf) {
  if (found_inf != nullptr && *found_inf != 0.f) return;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < num_tensors;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float* c = tensors[i].counter;
    if (c != nullptr) atomicAdd(c, 1.f);
  }
}

// Kernel arguments stay under the 4 KiB every supported toolkit accepts.
struct ByteBlock {
  static constexpr int kBytes = 3968;
  unsigned char b[kBytes];
};

template <int Unused>
__global__ void write_bytes_kernel(ByteBlock src, unsigned char* __restrict__ dst, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src.b[i];
}

// Copies `bytes` host bytes into a fresh device buffer, ordered on the current stream, with
// `extra` bytes after them for the kernels to fill.
inline at::Tensor upload_metadata(const std::vector<unsigned char>& bytes, int64_t extra, const at::Device& device) {
  const int64_t n = static_cast<int64_t>(bytes.size());
  at::Tensor dev = at::empty({n + extra}, at::TensorOptions().dtype(at::kByte).device(device));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (at::cuda::currentStreamCaptureStatus() != at::cuda::CaptureStatus::None) {
    for (int64_t off = 0; off < n; off += ByteBlock::kBytes) {
      ByteBlock blk;
      const int len = static_cast<int>(std::min<int64_t>(ByteBlock::kBytes, n - off));
      std::memcpy(blk.b, bytes.data() + off, len);
      TORCHEXT_LAUNCH(write_bytes_kernel<0>, 1, 256, 0, stream, blk, dev.data_ptr<unsigned char>() + off, len);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return dev;
  }
  // Pinned staging buffer; copy_ with non_blocking records the stream so the caching host allocator
  // does not hand the buffer out again before the copy has finished.
  at::Tensor host = at::empty({n}, at::TensorOptions().dtype(at::kByte).pinned_memory(TORCHEXT_PIN_STAGING));
  std::memcpy(host.data_ptr<unsigned char>(), bytes.data(), n);
  dev.narrow(0, 0, n).copy_(host, /*non_blocking=*/true);
  return dev;
}

// An optimizer's tensor lr: one on the CPU is read into `lr` (host memory, no device sync); one on
// `device` comes back as a 0-dim double for the kernel to read, kept alive by the caller until the
// launch is queued (then freed in stream order). Undefined when there is no device lr.
inline at::Tensor device_lr(const char* op, const c10::optional<at::Tensor>& lr_tensor, const at::Device& device,
                            double& lr) {
  if (!lr_tensor.has_value()) return at::Tensor();
  if (TORCHEXT_LR_ON_HOST(*lr_tensor)) {
    // Read now, so a graph would replay this value forever while the tensor's later edits (an
    // lr scheduler) are silently ignored: refuse that instead.
    TORCH_CHECK(at::cuda::currentStreamCaptureStatus() == at::cuda::CaptureStatus::None, "torchext.", op,
                ": 'lr' is a CPU tensor, whose value would be frozen into the CUDA graph being captured; put it on ",
                device, " (or pass a float)");
    lr = lr_tensor->item<double>();
    return at::Tensor();
  }
  TORCH_CHECK(lr_tensor->device() == device, "torchext.", op, ": expected 'lr_tensor' on ", device,
              " or the CPU, but got ", lr_tensor->device());
  return lr_tensor->to(at::kDouble).reshape({});
}

// The engine's per-tensor metadata: one entry per tensor of lists[0], whose ptr[k] is the i-th
// tensor of lists[k] (null where lists[k] is empty: an absent list). List 1, the gradients, is
// only read; counters may be empty too.
template <int N>
std::vector<TensorMeta<N>> tensor_metas(const std::array<at::TensorList, N>& lists, at::TensorList counters) {
  std::vector<TensorMeta<N>> metas(lists[0].size());
  for (size_t i = 0; i < metas.size(); ++i) {
    TensorMeta<N>& t = metas[i];
    for (int k = 0; k < N; ++k) {
      if (lists[k].empty()) {
        t.ptr[k] = nullptr;
      } else if (k == 1) {
        t.ptr[k] = const_cast<void*>(lists[k][i].const_data_ptr());
      } else {
        t.ptr[k] = lists[k][i].data_ptr();
      }
    }
    t.counter = counters.empty() ? nullptr : counters[i].data_ptr<float>();
    t.numel = lists[0][i].numel();
    t.index = static_cast<int32_t>(i);
  }
  return metas;
}

// Applies op to every element of every tensor; tensors[i].ptr[k] is list k's i-th tensor. Bumps the
// counters afterwards unless *found_inf != 0. Empty tensors get no block but their counter counts.
template <int N, typename Op>
void multi_tensor_apply(std::vector<TensorMeta<N>> tensors, const float* found_inf, const at::Device& device,
                        const Op& op) {
  if (tensors.empty()) return;
  std::vector<ChunkMeta> chunks;
  bool any_counter = false;
  for (size_t i = 0; i < tensors.size(); ++i) {
    auto& t = tensors[i];
    t.aligned = 1;
    for (int k = 0; k < N; ++k) {
      if (t.ptr[k] != nullptr && !aligned16(t.ptr[k])) t.aligned = 0;
    }
    any_counter = any_counter || t.counter != nullptr;
    const int64_t num_chunks = (t.numel + kChunkSize - 1) / kChunkSize;
    TORCH_CHECK(num_chunks < (int64_t(1) << 31), "torchext: tensor too large for the multi-tensor engine");
    for (int64_t c = 0; c < num_chunks; ++c) chunks.push_back({static_cast<int32_t>(i), static_cast<int32_t>(c)});
  }
  if (chunks.empty() && !any_counter) return;
  TORCH_CHECK(chunks.size() < (size_t(1) << 31), "torchext: too many chunks for one launch");

  // One buffer: [tensor metas | chunk metas | coefficients], 16-byte aligned parts; the
  // coefficients are written on the device by coeffs_kernel.
  using Coeffs = typename Op::Coeffs;
  const size_t tensor_bytes = tensors.size() * sizeof(TensorMeta<N>);
  const size_t chunk_off = (tensor_bytes + 15) / 16 * 16;
  const size_t coeff_off = (chunk_off + chunks.size() * sizeof(ChunkMeta) + 15) / 16 * 16;
  std::vector<unsigned char> bytes(coeff_off);
  std::memcpy(bytes.data(), tensors.data(), tensor_bytes);
  if (!chunks.empty()) std::memcpy(bytes.data() + chunk_off, chunks.data(), chunks.size() * sizeof(ChunkMeta));
  // freed in stream order after the launches
  const at::Tensor meta = upload_metadata(bytes, static_cast<int64_t>(tensors.size() * sizeof(Coeffs)), device);
  unsigned char* base = meta.data_ptr<unsigned char>();
  const auto* dev_tensors = reinterpret_cast<const TensorMeta<N>*>(base);
  const auto* dev_chunks = reinterpret_cast<const ChunkMeta*>(base + chunk_off);
  auto* dev_coeffs = reinterpret_cast<Coeffs*>(base + coeff_off);

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t num_tensors = static_cast<int64_t>(tensors.size());
  const unsigned int tensor_blocks = static_cast<unsigned int>(std::min<int64_t>((num_tensors + 255) / 256, 1024));
  if (!chunks.empty()) {
    auto* prologue = coeffs_kernel<N, Op>;  // (a template-id would split the macro's arguments)
    TORCHEXT_LAUNCH(prologue, tensor_blocks, 256, 0, stream, dev_tensors, num_tensors, dev_coeffs, op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto* update = multi_tensor_apply_kernel<N, Op>;
    TORCHEXT_LAUNCH(update, static_cast<unsigned int>(chunks.size()), kMtaThreads, 0, stream, dev_tensors, dev_chunks,
                    dev_coeffs, op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (any_counter) {
    TORCHEXT_LAUNCH(bump_counters_kernel<N>, tensor_blocks, 256, 0, stream, dev_tensors, num_tensors, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace cuda
}  // namespace torchext
