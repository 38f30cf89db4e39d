// Which GEMM runs a Linear on CUDA: the tensor-core one (gemm_tc.cuh, sm_80 and newer: float16,
// bfloat16, and float when TF32 is allowed) or the SIMT one (gemm_simt.cuh: float and double), on
// which operand layout, with which tile and how many K splits; and the split-K reduction.
//
// Operands are read where they lie when their contiguous dimension has stride 1 and the other a
// stride of whole 16-byte chunks from a 16-byte aligned start: the row-major input and weight of
// the forward pass, and the transposed views of the backward pass (dX = dY W reads W as N-major,
// dW = dY^T X reads both as M/N-major). Anything else is first copied into a contiguous tensor with
// rows padded to 16 bytes (one memory-bound pass), as is any transposed float operand (ldmatrix
// .trans moves 16-bit elements only).
//
// Split-K (the GEMMs of a small batch over a long K): the K range is cut into `splits` slices of
// whole K steps, each CTA writes its slice's float sums to a workspace, and gemm_reduce_splits adds
// them in slice order, then the bias and ReLU. The split count depends on M, N and K only, so the
// sums come out the same on every GPU.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <mutex>
#include <vector>

#include "cuda/gemm.h"
#include "cuda/hooks.cuh"
#include "cuda/linear.cuh"

namespace torchext {
namespace cuda {
namespace {

// Output chunks of 4 per thread: each reads its four columns of every split (a 16-byte load when
// the row allows) and writes them once. Memory bound: (splits * 4 + sizeof(T)) bytes per output.
template <typename T>
__global__ void gemm_reduce_splits_kernel(GemmArgs p) {
  const int64_t chunks_per_row = (p.N + 3) / 4;
  const int64_t total = p.M * chunks_per_row;
  const int64_t plane = p.M * p.N;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < total;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = q / chunks_per_row, col = (q % chunks_per_row) * 4;
    const int n = p.N - col < 4 ? static_cast<int>(p.N - col) : 4;
    float sum[4] = {0.f, 0.f, 0.f, 0.f};
    const float* at = p.partial + row * p.N + col;
    const bool vec = n == 4 && p.N % 4 == 0;
    for (int s = 0; s < p.splits; ++s, at += plane) {
      if (vec) {
        const float4 v = *reinterpret_cast<const float4*>(at);
        sum[0] += v.x, sum[1] += v.y, sum[2] += v.z, sum[3] += v.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (e < n) sum[e] += at[e];
      }
    }
    T* out = static_cast<T*>(p.c) + row * p.N + col;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (e >= n) break;
      float v = sum[e];
      if (p.bias) v += static_cast<float>(static_cast<const T*>(p.bias)[(col + e) * p.sbias]);
      if (p.relu) v = v < 0.f ? 0.f : v;  // NaN passes through, as in torch.relu
      out[e] = static_cast<T>(v);
    }
  }
}

// The code a device runs comes from the build's newest target at or below it; a build whose code
// for this device comes from older PTX (say TORCH_CUDA_ARCH_LIST="7.5+PTX", JIT-compiled on an
// H100) carries the tensor-core kernels as trap stubs only, so it takes the SIMT path instead.
// This probe's attributes tell which code was loaded for the current device; cached per device.
__global__ void arch_probe_kernel() {}

bool tensor_core_code_loaded() {
  static std::mutex mutex;
  static std::vector<int> cache;  // -1: not asked yet
  const int device = c10::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() <= static_cast<size_t>(device)) cache.resize(device + 1, -1);
  if (cache[device] < 0) {
    cudaFuncAttributes attr;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, arch_probe_kernel));
    cache[device] = std::max(attr.ptxVersion, attr.binaryVersion) >= 80 ? 1 : 0;
  }
  return cache[device] == 1;
}

// Whether float32 GEMMs may round their inputs to TF32, as torch decides it for cuBLAS. Since torch
// 2.9 the setting is torch.backends.cuda.matmul.fp32_precision, which allow_tf32 and
// set_float32_matmul_precision also set; the old getter, allowTF32CuBLAS(), throws once a program
// has set the new one alone. at::NoTF32Guard (torch's internal "no TF32 here") wins over both.
bool tf32_allowed() {
  if (at::NoTF32Guard::should_disable_tf32()) return false;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
         at::Float32Precision::TF32;
#else
  return at::globalContext().allowTF32CuBLAS();
#endif
}

// An operand as a launch reads it: its data, which dimension is contiguous, the other's stride.
struct Operand {
  at::Tensor t;  // keeps a copy alive
  Major major;
  int64_t ld;
};

// t: [rows, K] (the input as [M, K], the weight as [N, K]), read where it lies when it can be.
Operand operand_for(const at::Tensor& t, bool allow_mn_major) {
  const int64_t chunk = 16 / t.element_size();
  const bool aligned = reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  const int64_t rows = t.size(0), k = t.size(1);
  if (aligned) {
    // A size-1 dimension's stride is arbitrary: it counts as contiguous.
    const bool k_unit = t.stride(1) == 1 || k == 1, rows_unit = t.stride(0) == 1 || rows == 1;
    if (k_unit && (t.stride(0) % chunk == 0 || rows == 1)) return {t, Major::kK, rows == 1 ? chunk : t.stride(0)};
    if (allow_mn_major && rows_unit && (t.stride(1) % chunk == 0 || k == 1)) {
      return {t, Major::kMN, k == 1 ? chunk : t.stride(1)};
    }
  }
  // A contiguous copy whose rows are padded to whole chunks (the padding is never read: the copies
  // take only the bytes up to K).
  const int64_t ld = (k + chunk - 1) / chunk * chunk;
  at::Tensor padded = at::empty({rows, ld}, t.options());
  padded.narrow(1, 0, k).copy_(t);
  return {padded, Major::kK, ld};
}

// What the tile choice weighs: the CTAs each SM gets (spread evenly), times a CTA's outputs, over
// the tile's efficiency (smaller warp tiles read more shared memory per FLOP, so do less per clock):
// the time the busiest SM needs, in arbitrary units. A model to rank tiles, not a prediction.
int choose_tile(int64_t M, int64_t N, int64_t K, int sms) {
  if (M <= 16) return 3;
  constexpr double kEfficiency[] = {1.0, 0.95, 0.7};
  int best = 2;
  double best_cost = 0;
  for (int tile = 0; tile < 3; ++tile) {
    const TcTile& t = kTcTiles[tile];
    const int64_t ctas = ((M + t.bm - 1) / t.bm) * ((N + t.bn - 1) / t.bn);
    const double per_sm = static_cast<double>((ctas + sms - 1) / sms);
    const double cost = per_sm * t.bm * t.bn / kEfficiency[tile];
    if (tile == 0 || cost < best_cost) best = tile, best_cost = cost;
  }
  return best;
}

// K splits for a bm x bn tile (ctas_per_sm at a time, K steps of bk): only when its CTAs would fill
// under a quarter of a wave of a large GPU (the splits' float partials cost a write and a read of
// splits * M * N floats, and a launch) and K holds at least four K steps per split; enough splits
// for about one wave, at most 16. M, N and K decide it (kReferenceSms, not the device's count), so
// the summation order does not depend on the GPU.
int choose_splits(int64_t bm, int64_t bn, int64_t ctas_per_sm, int64_t bk, int64_t M, int64_t N, int64_t K) {
  constexpr int64_t kReferenceSms = 132;
  const int64_t ctas = ((M + bm - 1) / bm) * ((N + bn - 1) / bn);
  if (ctas * 4 > kReferenceSms * ctas_per_sm) return 1;
  const int64_t by_fill = (kReferenceSms * ctas_per_sm + ctas - 1) / ctas;
  const int64_t by_k = K / (4 * bk);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({by_fill, by_k, 16})));
}

// K splits for the Hopper GEMM, whose CTAs (one per SM) all run at once: as choose_splits, but
// never more CTAs than one wave of the reference GPU, since a second wave would double the time.
int choose_splits_one_wave(int64_t M, int64_t N, int64_t K) {
  constexpr int64_t kReferenceSms = 132;
  const int64_t ctas = ((M + kWgmmaTileM - 1) / kWgmmaTileM) * ((N + kWgmmaTileN - 1) / kWgmmaTileN);
  if (ctas * 4 > kReferenceSms) return 1;
  const int64_t by_k = K / (4 * kWgmmaSlice);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({kReferenceSms / ctas, by_k, 16})));
}

// The arguments of one GEMM launch of out = input @ weight.T (+ bias) (ReLU), with the split count
// forced or chosen, K cut into whole steps of bk; the float workspace for the splits, if any, goes
// to `partial`.
GemmArgs gemm_args(const Operand& a, const Operand& b, const at::Tensor& input, const at::Tensor& weight,
                   const at::Tensor* bias, at::Tensor& out, bool relu, int splits, int64_t bk, at::Tensor& partial) {
  GemmArgs args{};
  args.a = a.t.const_data_ptr();
  args.b = b.t.const_data_ptr();
  args.c = out.mutable_data_ptr();
  args.bias = bias ? bias->const_data_ptr() : nullptr;
  args.lda = a.ld;
  args.ldb = b.ld;
  args.sbias = bias ? bias->stride(0) : 0;
  args.M = input.size(0);
  args.N = weight.size(0);
  args.K = input.size(1);
  args.relu = relu;
  const int64_t steps = std::max<int64_t>(1, (args.K + bk - 1) / bk);
  args.k_per_split = (steps + splits - 1) / splits * bk;
  args.splits = static_cast<int>(std::max<int64_t>(1, (args.K + args.k_per_split - 1) / args.k_per_split));
  if (args.splits > 1) {
    partial = at::empty({args.splits, args.M, args.N}, input.options().dtype(at::kFloat));
    args.partial = partial.mutable_data_ptr<float>();
  }
  return args;
}

// TORCHEXT_GEMM_TILE (an index into kTcTiles) and TORCHEXT_GEMM_SPLITS force the choice, for the
// tests (every tile and split path at small sizes) and for tile sweeps on a GPU; read per call.
int forced(const char* name, int lo, int hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return -1;
  const int n = std::atoi(v);
  TORCH_CHECK(n >= lo && n <= hi, name, "=", v, " is outside ", lo, "..", hi);
  return n;
}

// TORCHEXT_GEMM=wgmma asks for the Hopper GEMM (gemm_wgmma.cuh) on sm_90 devices; read per call.
bool wgmma_requested() {
  const char* v = std::getenv("TORCHEXT_GEMM");
  return v != nullptr && std::string(v) == "wgmma";
}

}  // namespace

void launch_gemm_reduce_splits(TcType type, const GemmArgs& args, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t work = args.M * ((args.N + 3) / 4);
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, 1 << 16)));
  switch (type) {
    case TcType::kHalf: TORCHEXT_LAUNCH(gemm_reduce_splits_kernel<at::Half>, blocks, kThreads, 0, stream, args); break;
    case TcType::kBFloat16:
      TORCHEXT_LAUNCH(gemm_reduce_splits_kernel<at::BFloat16>, blocks, kThreads, 0, stream, args);
      break;
    case TcType::kTf32: TORCHEXT_LAUNCH(gemm_reduce_splits_kernel<float>, blocks, kThreads, 0, stream, args); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool launch_linear_tensor_core(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                               at::Tensor& out, bool relu) {
  const auto* props = at::cuda::getCurrentDeviceProperties();
  if (props->major < 8 || !tensor_core_code_loaded()) return false;
  TcType type;
  switch (input.scalar_type()) {
    case at::kHalf: type = TcType::kHalf; break;
    case at::kBFloat16: type = TcType::kBFloat16; break;
    case at::kFloat:
      if (!tf32_allowed()) return false;
      type = TcType::kTf32;
      break;
    default: return false;
  }
  const bool mn_major_ok = type != TcType::kTf32;
  Operand a = operand_for(input, mn_major_ok);
  Operand b = operand_for(weight, mn_major_ok);
  const int64_t M = input.size(0), N = weight.size(0), K = input.size(1);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (type != TcType::kTf32 && wgmma_requested() && props->major == 9 && wgmma_code_loaded(input)) {
    // The Hopper family, until it has passed the CUDA tests on a GPU only when asked for.
    const int forced_splits = forced("TORCHEXT_GEMM_SPLITS", 1, 64);
    const int splits = forced_splits > 0 ? forced_splits : choose_splits_one_wave(M, N, K);
    at::Tensor partial;
    const GemmArgs args = gemm_args(a, b, input, weight, bias, out, relu, splits, kWgmmaSlice, partial);
    launch_gemm_wgmma(type, a.major, b.major, args, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (args.splits > 1) launch_gemm_reduce_splits(type, args, stream);
    return true;
  }
  if (a.major == Major::kMN && b.major == Major::kK) a = operand_for(input.contiguous(), false);  // not instantiated
  const int forced_tile = forced("TORCHEXT_GEMM_TILE", 0, kNumTcTiles - 1);
  const int tile = forced_tile >= 0 ? forced_tile : choose_tile(M, N, K, props->multiProcessorCount);
  const TcTile& t = kTcTiles[tile];
  const int64_t bk = t.kc * 16 / input.element_size();
  const int forced_splits = forced("TORCHEXT_GEMM_SPLITS", 1, 64);
  const int splits = forced_splits > 0 ? forced_splits : choose_splits(t.bm, t.bn, t.min_ctas, bk, M, N, K);
  at::Tensor partial;
  const GemmArgs args = gemm_args(a, b, input, weight, bias, out, relu, splits, bk, partial);
  switch (type) {
    case TcType::kHalf: launch_gemm_tc_f16(tile, a.major, b.major, args, stream); break;
    case TcType::kBFloat16: launch_gemm_tc_bf16(tile, a.major, b.major, args, stream); break;
    case TcType::kTf32: launch_gemm_tc_tf32(tile, a.major, b.major, args, stream); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (args.splits > 1) launch_gemm_reduce_splits(type, args, stream);
  return true;
}

bool launch_linear_simt(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out,
                        bool relu) {
  const bool is_double = input.scalar_type() == at::kDouble;
  if (!is_double && input.scalar_type() != at::kFloat) return false;
  const Operand a = operand_for(input, true), b = operand_for(weight, true);
  const int64_t M = input.size(0), N = weight.size(0), K = input.size(1);
  const int forced_splits = forced("TORCHEXT_GEMM_SPLITS", 1, 64);
  int splits = 1;  // double keeps one: its partial sums would need a double workspace
  if (!is_double) splits = forced_splits > 0 ? forced_splits : choose_splits(kSimtTile, kSimtTile, 1, kSimtSlice, M, N, K);
  at::Tensor partial;
  const GemmArgs args = gemm_args(a, b, input, weight, bias, out, relu, splits, kSimtSlice, partial);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_gemm_simt(is_double, a.major, b.major, args, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (args.splits > 1) launch_gemm_reduce_splits(TcType::kTf32, args, stream);
  return true;
}

}  // namespace cuda
}  // namespace torchext
