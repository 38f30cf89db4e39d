// The Hopper GEMM (gemm_wgmma.cuh) for float16 and bfloat16, every operand layout it takes: the
// tensor maps of the two operands, the persistent grid, and the sm_90a probe.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "cuda/gemm_wgmma.cuh"

namespace torchext {
namespace cuda {
namespace {

// The tensor map of an operand read `rows` tile rows at a time: K-major boxes of 64 K x rows, M/N-
// major boxes of 64 M/N x 64 K (see wg::Operand).
TmaMap operand_map(const void* base, Major major, int64_t ld, int64_t outer_extent, int64_t K, int rows) {
  TmaBox box{};
  box.base = base;
  box.element_bytes = 2;
  box.row_bytes = static_cast<uint64_t>(ld) * 2;
  box.swizzle_128b = true;
  if (major == Major::kK) {
    box.inner = K, box.outer = outer_extent;
    box.box_inner = wg::kBox, box.box_outer = rows;
  } else {
    box.inner = outer_extent, box.outer = K;
    box.box_inner = wg::kBox, box.box_outer = wg::kBK;
  }
  // With a single row its stride is never used, but the encoder wants it at least a row long (a
  // [M, 1] view reads as M-major with a nominal stride).
  if (box.outer == 1) box.row_bytes = std::max<uint64_t>(box.row_bytes, (box.inner * 2 + 15) / 16 * 16);
  TmaMap map;
  encode_tma_map(&map, box);
  return map;
}

template <typename T, Major AM, Major BMJ>
void launch(const GemmArgs& g, cudaStream_t stream) {
  wg::WgmmaArgs p{g, AM, BMJ, (g.M + wg::kBM - 1) / wg::kBM, (g.N + wg::kBN - 1) / wg::kBN};
  const TmaMap map_a = operand_map(g.a, AM, g.lda, g.M, g.K, wg::kBM);
  const TmaMap map_b = operand_map(g.b, BMJ, g.ldb, g.N, g.K, wg::kBN);
  auto* kernel = wg::gemm_wgmma_kernel<T, AM, BMJ>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, wg::kSmemBytes));
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t tiles = p.tiles_m * p.tiles_n;
  const unsigned ctas = static_cast<unsigned>(std::max<int64_t>(1, std::min(tiles, sms)));  // persistent
  TORCHEXT_LAUNCH(kernel, dim3(ctas, static_cast<unsigned>(g.splits)), dim3(wg::kThreads), wg::kSmemBytes, stream, p,
                  map_a, map_b);
}

template <typename T>
void launch_layout(Major am, Major bm, const GemmArgs& g, cudaStream_t stream) {
  if (am == Major::kK && bm == Major::kK) return launch<T, Major::kK, Major::kK>(g, stream);
  if (am == Major::kK) return launch<T, Major::kK, Major::kMN>(g, stream);
  if (bm == Major::kK) return launch<T, Major::kMN, Major::kK>(g, stream);
  launch<T, Major::kMN, Major::kMN>(g, stream);
}

}  // namespace

bool wgmma_code_loaded(const at::Tensor& like) {
  static std::mutex mutex;
  static std::vector<int> cache;  // per device: -1 not asked yet
  const int device = std::max<int>(0, like.get_device());  // (-1 for the emulation's CPU tensors)
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() <= static_cast<size_t>(device)) cache.resize(device + 1, -1);
  if (cache[device] < 0) {
    // A launch and a synchronisation, once per device; not possible while a graph is captured.
    if (at::cuda::currentStreamCaptureStatus() != at::cuda::CaptureStatus::None) return false;
    at::Tensor flag = at::zeros({1}, like.options().dtype(at::kInt));  // on the device of the operands
    TORCHEXT_LAUNCH(wg::sm90a_probe_kernel, 1, 1, 0, at::cuda::getCurrentCUDAStream(), flag.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cache[device] = flag.item<int>();
  }
  return cache[device] == 1;
}

void launch_gemm_wgmma(TcType type, Major a_major, Major b_major, const GemmArgs& args, cudaStream_t stream) {
  if (type == TcType::kBFloat16) return launch_layout<at::BFloat16>(a_major, b_major, args, stream);
  TORCH_CHECK(type == TcType::kHalf, "torchext: the Hopper GEMM takes float16 and bfloat16 operands");
  launch_layout<at::Half>(a_major, b_major, args, stream);
}

}  // namespace cuda
}  // namespace torchext
