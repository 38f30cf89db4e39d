// Linear on CPU: out[M, N] = input[M, K] @ weight[N, K]^T (+ bias) (ReLU), as a blocked, packed GEMM.
//
// Work: 2*M*N*K FLOPs. Each MC x KC block of input and KC x NC block of weight is packed once per
// task into contiguous, zero-padded panels (converting half types to float), so the micro-kernel
// streams unit-stride data whatever the caller's strides, and transposed or sliced operands
// (as in the backward pass) need no copy. The micro-kernel keeps an MR x NR tile of the output in
// vector registers (MR*NR/VL accumulators) and does MR*NR FMAs per MR + NR loaded values.
// Bias and ReLU are applied while the tile is stored, so the output is written exactly once.
//
// The grad helpers are memory bound: linear_bias_grad reads M*N elements and writes N;
// linear_relu_grad reads 2*M*N, writes M*N + N.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "cpu/dispatch.h"
#include "linear_checks.h"

namespace torchext {
namespace {

template <typename T>
struct AccOf {
  using type = float;  // half types and float accumulate in float
};
template <>
struct AccOf<double> {
  using type = double;
};

template <typename A, int Bytes>
struct VecOf {
  typedef A type __attribute__((vector_size(Bytes)));
};

// One GEMM problem. Strides are in elements, so packing can read any layout.
template <typename T>
struct GemmProblem {
  const T* a;  // A(i, k) = a[i * sam + k * sak]        (input)
  int64_t sam, sak;
  const T* b;  // B(j, k) = b[j * sbn + k * sbk]        (weight)
  int64_t sbn, sbk;
  const T* bias;  // bias[j * sbias], or null
  int64_t sbias;
  T* c;  // C(i, j) = c[i * ldc + j]                    (output, row-major)
  int64_t ldc;
  int64_t M, N, K;
  bool relu;
};

// Task grid: the output is cut into mc x nc tiles, one task each; K is walked in kc slices.
struct Blocking {
  int64_t mc, nc, kc;
  int64_t tiles_m, tiles_n;
};

// Packs rows [i0, i0 + rows) x cols [k0, k0 + kc) of A into MR-row micro-panels: panel p holds,
// for each k, MR consecutive values. Rows past the edge are zero so the micro-kernel needs no
// row masking.
template <typename T, typename Acc, int MR>
TORCHEXT_INLINE void pack_a(const GemmProblem<T>& g, int64_t i0, int64_t rows, int64_t k0, int64_t kc,
                            Acc* __restrict__ dst) {
  for (int64_t p = 0; p < rows; p += MR) {
    const int64_t valid = std::min<int64_t>(MR, rows - p);
    Acc* d = dst + p * kc;
    const T* src = g.a + (i0 + p) * g.sam + k0 * g.sak;
    if (g.sak == 1) {  // row-major A: read each row contiguously
      for (int r = 0; r < MR; ++r) {
        if (r < valid) {
          const T* s = src + r * g.sam;
          for (int64_t k = 0; k < kc; ++k) d[k * MR + r] = static_cast<Acc>(s[k]);
        } else {
          for (int64_t k = 0; k < kc; ++k) d[k * MR + r] = Acc(0);
        }
      }
    } else {  // column-major or general A: walk k outside so the inner reads stride by sam
      for (int64_t k = 0; k < kc; ++k) {
        const T* s = src + k * g.sak;
        for (int r = 0; r < MR; ++r) d[k * MR + r] = r < valid ? static_cast<Acc>(s[r * g.sam]) : Acc(0);
      }
    }
  }
}

// Packs B rows (output columns) [j0, j0 + cols) x [k0, k0 + kc) into NR-wide micro-panels.
template <typename T, typename Acc, int NR>
TORCHEXT_INLINE void pack_b(const GemmProblem<T>& g, int64_t j0, int64_t cols, int64_t k0, int64_t kc,
                            Acc* __restrict__ dst) {
  for (int64_t p = 0; p < cols; p += NR) {
    const int64_t valid = std::min<int64_t>(NR, cols - p);
    Acc* d = dst + p * kc;
    const T* src = g.b + (j0 + p) * g.sbn + k0 * g.sbk;
    if (g.sbk == 1 && g.sbn != 1) {  // weight row-major [N, K]: each output column is contiguous in k
      for (int c = 0; c < NR; ++c) {
        if (c < valid) {
          const T* s = src + c * g.sbn;
          for (int64_t k = 0; k < kc; ++k) d[k * NR + c] = static_cast<Acc>(s[k]);
        } else {
          for (int64_t k = 0; k < kc; ++k) d[k * NR + c] = Acc(0);
        }
      }
    } else {  // weight given as a transposed view (backward): NR consecutive values per k
      for (int64_t k = 0; k < kc; ++k) {
        const T* s = src + k * g.sbk;
        for (int c = 0; c < NR; ++c) d[k * NR + c] = c < valid ? static_cast<Acc>(s[c * g.sbn]) : Acc(0);
      }
    }
  }
}

// MR x (2 vectors) register tile over kc steps of packed panels. `partial` (ld = ldp) holds the sum
// over earlier kc slices when !first; the tile is written back there unless this is the last slice,
// in which case bias and ReLU are applied and the valid part goes to C in T.
template <typename T, typename Acc, int VB, int MR>
TORCHEXT_INLINE void micro_kernel(int64_t kc, const Acc* __restrict__ ap, const Acc* __restrict__ bp,
                                  Acc* __restrict__ partial, int64_t ldp, bool first, bool last,
                                  const GemmProblem<T>& g, int64_t i0, int64_t j0, int64_t rows, int64_t cols) {
  using V = typename VecOf<Acc, VB>::type;
  constexpr int VL = VB / static_cast<int>(sizeof(Acc));
  constexpr int NR = 2 * VL;
  V c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    c0[r] = V{};
    c1[r] = V{};
  }
  for (int64_t k = 0; k < kc; ++k) {
    V b0, b1;
    std::memcpy(&b0, bp + k * NR, VB);
    std::memcpy(&b1, bp + k * NR + VL, VB);
    const Acc* a = ap + k * MR;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const Acc av = a[r];
      c0[r] += av * b0;
      c1[r] += av * b1;
    }
  }
  alignas(64) Acc tile[MR * NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    std::memcpy(tile + r * NR, &c0[r], VB);
    std::memcpy(tile + r * NR + VL, &c1[r], VB);
  }
  if (!first) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) tile[r * NR + c] += partial[r * ldp + c];
  }
  if (!last) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) partial[r * ldp + c] = tile[r * NR + c];
    return;
  }
  Acc bias[NR];
  for (int64_t c = 0; c < cols; ++c) bias[c] = g.bias ? static_cast<Acc>(g.bias[(j0 + c) * g.sbias]) : Acc(0);
  for (int64_t r = 0; r < rows; ++r) {
    T* out = g.c + (i0 + r) * g.ldc + j0;
    for (int64_t c = 0; c < cols; ++c) {
      Acc v = tile[r * NR + c] + bias[c];
      if (g.relu) v = v < Acc(0) ? Acc(0) : v;  // NaN passes through, as in torch.relu
      out[c] = static_cast<T>(v);
    }
  }
}

// Runs tasks [task_begin, task_end) of the grid. Per task and kc slice: pack A and B once, then
// sweep micro-tiles with the A micro-panel (MR x kc) resident in L1 while B panels stream from L2.
template <typename T, int VB, int MR>
TORCHEXT_INLINE void gemm_tasks_impl(const GemmProblem<T>* gp, const Blocking* blp, int64_t task_begin,
                                     int64_t task_end, typename AccOf<T>::type* pa, typename AccOf<T>::type* pb,
                                     typename AccOf<T>::type* pc) {
  using Acc = typename AccOf<T>::type;
  constexpr int NR = 2 * VB / static_cast<int>(sizeof(Acc));
  const GemmProblem<T>& g = *gp;
  const Blocking& bl = *blp;
  for (int64_t t = task_begin; t < task_end; ++t) {
    const int64_t i0 = (t / bl.tiles_n) * bl.mc;
    const int64_t j0 = (t % bl.tiles_n) * bl.nc;
    const int64_t rows = std::min(bl.mc, g.M - i0);
    const int64_t cols = std::min(bl.nc, g.N - j0);
    for (int64_t k0 = 0; k0 < g.K; k0 += bl.kc) {
      const int64_t kc = std::min(bl.kc, g.K - k0);
      const bool first = k0 == 0;
      const bool last = k0 + kc >= g.K;
      pack_a<T, Acc, MR>(g, i0, rows, k0, kc, pa);
      pack_b<T, Acc, NR>(g, j0, cols, k0, kc, pb);
      for (int64_t ir = 0; ir < rows; ir += MR) {
        for (int64_t jr = 0; jr < cols; jr += NR) {
          micro_kernel<T, Acc, VB, MR>(kc, pa + ir * kc, pb + jr * kc, pc + ir * bl.nc + jr, bl.nc, first, last, g,
                                       i0 + ir, j0 + jr, std::min<int64_t>(MR, rows - ir),
                                       std::min<int64_t>(NR, cols - jr));
        }
      }
    }
  }
}

// The register tile depends on the register file, so the GEMM has its own three-way dispatch
// rather than TORCHEXT_CPU_DISPATCH (which instantiates one body per level): AVX-512 has 32
// 64-byte registers (12 x 2 accumulators), AVX2 and SSE have 16 (6 x 2 accumulators).
template <typename T, typename... Args>
TORCHEXT_TARGET_AVX512 void gemm_tasks_avx512(Args... args) {
  gemm_tasks_impl<T, 64, 12>(args...);
}
template <typename T, typename... Args>
TORCHEXT_TARGET_AVX2 void gemm_tasks_avx2(Args... args) {
  gemm_tasks_impl<T, 32, 6>(args...);
}
template <typename T, typename... Args>
void gemm_tasks_default(Args... args) {
  gemm_tasks_impl<T, 16, 6>(args...);
}

struct Tile {
  int vb, mr;
};
inline Tile tile_for_level() {
  switch (cpu::level()) {
    case cpu::Level::AVX512: return {64, 12};
    case cpu::Level::AVX2: return {32, 6};
    default: return {16, 6};
  }
}

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

template <typename T>
void run_gemm(const GemmProblem<T>& g) {
  using Acc = typename AccOf<T>::type;
  const Tile tile = tile_for_level();
  const int64_t mr = tile.mr;
  const int64_t nr = 2 * tile.vb / static_cast<int64_t>(sizeof(Acc));
  Blocking bl;
  bl.kc = 256;  // an MR x kc A panel (12 KiB) stays in L1; the kc x nc B block (256 KiB) in L2
  bl.mc = 96;   // multiple of both MR values
  bl.nc = 256;
  bl.mc = std::min<int64_t>(bl.mc, (g.M + mr - 1) / mr * mr);
  bl.nc = std::min<int64_t>(bl.nc, (g.N + nr - 1) / nr * nr);
  bl.tiles_m = (g.M + bl.mc - 1) / bl.mc;
  bl.tiles_n = (g.N + bl.nc - 1) / bl.nc;
  // Small problems: cut N (then M) finer so that every thread gets a task.
  const int64_t threads = at::get_num_threads();
  if (bl.tiles_m * bl.tiles_n < threads) {
    const int64_t want_n = (threads + bl.tiles_m - 1) / bl.tiles_m;
    bl.nc = std::max<int64_t>(nr, ((g.N + want_n - 1) / want_n + nr - 1) / nr * nr);
    bl.tiles_n = (g.N + bl.nc - 1) / bl.nc;
    if (bl.tiles_m * bl.tiles_n < threads) {
      const int64_t want_m = (threads + bl.tiles_n - 1) / bl.tiles_n;
      bl.mc = std::max<int64_t>(mr, ((g.M + want_m - 1) / want_m + mr - 1) / mr * mr);
      bl.tiles_m = (g.M + bl.mc - 1) / bl.mc;
    }
  }
  const int64_t kc_alloc = std::min(bl.kc, g.K);
  const bool need_partial = g.K > bl.kc;
  at::parallel_for(0, bl.tiles_m * bl.tiles_n, 1, [&](int64_t begin, int64_t end) {
    auto alloc = [](int64_t n) {
      const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(Acc) + 63) / 64 * 64;
      return std::unique_ptr<Acc, AlignedFree>(static_cast<Acc*>(std::aligned_alloc(64, bytes)));
    };
    auto pa = alloc(bl.mc * kc_alloc);
    auto pb = alloc(bl.nc * kc_alloc);
    auto pc = alloc(need_partial ? bl.mc * bl.nc : 1);
    TORCH_CHECK(pa && pb && pc, "torchext.linear: out of memory for packing buffers");
    switch (cpu::level()) {
      case cpu::Level::AVX512: gemm_tasks_avx512<T>(&g, &bl, begin, end, pa.get(), pb.get(), pc.get()); break;
      case cpu::Level::AVX2: gemm_tasks_avx2<T>(&g, &bl, begin, end, pa.get(), pb.get(), pc.get()); break;
      default: gemm_tasks_default<T>(&g, &bl, begin, end, pa.get(), pb.get(), pc.get()); break;
    }
  });
}

}  // namespace

namespace {

at::Tensor linear_cpu_impl(const char* op, const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias_opt, bool relu) {
  check_linear_args(op, input, weight, bias_opt);
  const int64_t M = input.size(0), K = input.size(1), N = weight.size(0);
  at::Tensor out = at::empty({M, N}, input.options());
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  if (M == 0 || N == 0) return out;
  if (K == 0) {  // empty sum: the output is the bias (or zero), through the activation
    if (has_bias) out.copy_(bias_opt->unsqueeze(0).expand({M, N}));
    else out.zero_();
    if (relu) out.clamp_min_(0);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "torchext::linear", [&] {
    GemmProblem<scalar_t> g;
    g.a = input.const_data_ptr<scalar_t>();
    g.sam = input.stride(0);
    g.sak = input.stride(1);
    g.b = weight.const_data_ptr<scalar_t>();
    g.sbn = weight.stride(0);
    g.sbk = weight.stride(1);
    g.bias = has_bias ? bias_opt->const_data_ptr<scalar_t>() : nullptr;
    g.sbias = has_bias ? bias_opt->stride(0) : 0;
    g.c = out.mutable_data_ptr<scalar_t>();
    g.ldc = N;
    g.M = M;
    g.N = N;
    g.K = K;
    g.relu = relu;
    run_gemm(g);
  });
  return out;
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  return linear_cpu_impl("linear", input, weight, bias, false);
}

at::Tensor linear_relu_cpu(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias) {
  return linear_cpu_impl("linear_relu", input, weight, bias, true);
}

// Column sums over rows [0, M) for columns [j0, j1) of a row-major [M, N] gradient; with a result,
// the gradient is first masked by result > 0 (threshold_backward) and the masked values stored.
// Each column is summed by exactly one thread in row order, so the result is deterministic.
template <typename T>
TORCHEXT_INLINE void column_sum_impl(const T* __restrict__ g, const T* __restrict__ r, T* __restrict__ masked,
                                     T* __restrict__ sums, int64_t M, int64_t N, int64_t j0, int64_t j1) {
  using Acc = typename AccOf<T>::type;
  constexpr int64_t kMaxCols = 256;
  Acc acc[kMaxCols];
  const int64_t w = j1 - j0;
  for (int64_t c = 0; c < w; ++c) acc[c] = Acc(0);
  for (int64_t i = 0; i < M; ++i) {
    const T* gi = g + i * N + j0;
    if (r) {
      const T* ri = r + i * N + j0;
      T* mi = masked + i * N + j0;
      for (int64_t c = 0; c < w; ++c) {
        const T v = static_cast<Acc>(ri[c]) <= Acc(0) ? T(0) : gi[c];
        mi[c] = v;
        acc[c] += static_cast<Acc>(v);
      }
    } else {
      for (int64_t c = 0; c < w; ++c) acc[c] += static_cast<Acc>(gi[c]);
    }
  }
  for (int64_t c = 0; c < w; ++c) sums[j0 + c] = static_cast<T>(acc[c]);
}
TORCHEXT_CPU_DISPATCH(column_sum_kernel, column_sum_impl)

void column_sums(const at::Tensor& g, const at::Tensor* result, at::Tensor* masked, at::Tensor& sums) {
  const int64_t M = g.size(0), N = g.size(1);
  if (N == 0) return;
  const int64_t threads = at::get_num_threads();
  // Column chunks of at most 256 (the accumulator array), at least 16 wide, about one per thread.
  const int64_t width = std::min<int64_t>(256, std::max<int64_t>(16, (N + threads - 1) / threads));
  const int64_t chunks = (N + width - 1) / width;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "torchext::linear_grad", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* rp = result ? result->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* mp = masked ? masked->mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* sp = sums.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ch = begin; ch < end; ++ch) {
        column_sum_kernel<scalar_t>(gp, rp, mp, sp, M, N, ch * width, std::min(N, (ch + 1) * width));
      }
    });
  });
}

at::Tensor linear_bias_grad_cpu(const at::Tensor& grad_output) {
  check_grad_args("linear_bias_grad", grad_output, nullptr);
  const at::Tensor g = grad_output.contiguous();
  at::Tensor sums = at::empty({g.size(1)}, g.options());
  column_sums(g, nullptr, nullptr, sums);
  return sums;
}

std::tuple<at::Tensor, at::Tensor> linear_relu_grad_cpu(const at::Tensor& grad_output, const at::Tensor& result) {
  check_grad_args("linear_relu_grad", grad_output, &result);
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor r = result.contiguous();
  at::Tensor masked = at::empty_like(g, at::MemoryFormat::Contiguous);
  at::Tensor sums = at::empty({g.size(1)}, g.options());
  column_sums(g, &r, &masked, sums);
  return {masked, sums};
}

}  // namespace
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("linear", &torchext::linear_cpu);
  m.impl("linear_relu", &torchext::linear_relu_cpu);
  m.impl("linear_bias_grad", &torchext::linear_bias_grad_cpu);
  m.impl("linear_relu_grad", &torchext::linear_relu_grad_cpu);
}
