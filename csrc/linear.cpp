// Linear on CPU: the torchext::linear, linear_relu, linear_batched entry points over the GEMMs of
// cpu/gemm.h, and the bias-gradient column sums.
//
// Work: 2*M*N*K FLOPs per GEMM (see cpu/gemm.cpp). The grad helpers are memory bound:
// linear_bias_grad reads M*N elements and writes N; linear_relu_grad reads 2*M*N, writes M*N + N.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <functional>

#include "cpu/dispatch.h"
#include "cpu/gemm.h"
#include "linear_checks.h"
#include "linear_problem.h"
#include "math_type.h"

namespace torchext {
namespace {

// out (a contiguous [M, N]) = input @ weight.T + bias [then ReLU], for checked arguments.
void linear_cpu_into(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias_opt,
                     at::Tensor out, bool relu) {
  const at::Tensor* bias = bias_opt.has_value() && bias_opt->defined() ? &*bias_opt : nullptr;
  if (linear_without_gemm(input, bias, out, relu)) return;
  if (at::isIntegralType(input.scalar_type(), /*includeBool=*/false)) {
    AT_DISPATCH_INTEGRAL_TYPES(input.scalar_type(), "torchext::linear", [&] {
      cpu::integer_linear<scalar_t>(input, weight, bias, out, relu);
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "torchext::linear", [&] {
    cpu::run_gemm(linear_problem<scalar_t>(input, weight, bias, out, relu));
  });
}

at::Tensor linear_cpu_impl(const char* op, const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias_opt, bool relu) {
  check_linear_args(op, input, weight, bias_opt);
  at::Tensor out = at::empty({input.size(0), weight.size(0)}, input.options());
  linear_cpu_into(input, weight, bias_opt, out, relu);
  return out;
}

at::Tensor linear_batched_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, bool relu) {
  check_linear_batched_args("linear_batched", input, weight, bias);
  const int64_t entries = input.size(0);
  at::Tensor out = at::empty({entries, input.size(1), weight.size(1)}, input.options());
  if (entries == 0) return out;
  // Every entry has entry 0's shapes, dtypes and device.
  const at::Tensor x0 = input.select(0, 0), w0 = weight.select(0, 0);
  const c10::optional<at::Tensor> b0 = batched_bias_entry(bias, 0);
  check_linear_args("linear_batched", x0, w0, b0);
  at::Tensor o0 = out.select(0, 0);
  std::function<void(int64_t, int64_t)> run;
  const bool integral = at::isIntegralType(input.scalar_type(), /*includeBool=*/false);
  if (integral || linear_without_gemm(x0, b0.has_value() ? &*b0 : nullptr, o0, relu)) {
    // Entry by entry, through views: every integer entry; or, when no GEMM is needed (the same for
    // every entry), the entries after 0, which linear_without_gemm has just written.
    const int64_t first = integral ? 0 : 1;
    run = [&, first](int64_t begin, int64_t end) {
      for (int64_t e = std::max(begin, first); e < end; ++e)
        linear_cpu_into(input.select(0, e), weight.select(0, e), batched_bias_entry(bias, e), out.select(0, e), relu);
    };
  } else {
    // Entry e's problem is entry 0's with its pointers moved by e strides of dim 0: no per-entry
    // tensor views (each costs an allocation, which dominated small entries).
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "torchext::linear_batched", [&] {
      const LinearProblem<scalar_t> base = linear_problem<scalar_t>(x0, w0, b0.has_value() ? &*b0 : nullptr, o0, relu);
      const int64_t sx = input.stride(0), sw = weight.stride(0), so = out.stride(0);
      const int64_t sb = b0.has_value() ? bias->stride(0) : 0;
      run = [base, sx, sw, so, sb](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          LinearProblem<scalar_t> p = base;
          p.a += e * sx;
          p.b += e * sw;
          if (p.bias) p.bias += e * sb;
          p.c += e * so;
          cpu::run_gemm(p);
        }
      };
    });
  }
  // Enough entries for every thread: one thread per entry (each GEMM then runs single-threaded, as
  // at::parallel_for does inside a parallel region); otherwise entry by entry, each GEMM parallel.
  if (entries >= at::get_num_threads())
    at::parallel_for(0, entries, 1, run);
  else
    run(0, entries);
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
// Each column is summed by exactly one thread in row order, so the result is deterministic. The
// sums are kept in double for every dtype: a float running sum over a long column (the bias grad
// of a big batch) drifts by about M * 2^-24 of its partial sums, 2e-4 for 100k rows of N(0, 1),
// where torch's pairwise float sum stays near 1e-5. The loop is memory bound, so it costs nothing.
template <typename T>
TORCHEXT_INLINE void column_sum_impl(const T* __restrict__ g, const T* __restrict__ r, T* __restrict__ masked,
                                     T* __restrict__ sums, int64_t M, int64_t N, int64_t j0, int64_t j1) {
  using Mt = math_t<T>;
  using Acc = double;
  constexpr int64_t kMaxCols = 256;
  Acc acc[kMaxCols];
  const int64_t w = j1 - j0;
  for (int64_t c = 0; c < w; ++c) acc[c] = Acc(0);
  for (int64_t i = 0; i < M; ++i) {
    const T* gi = g + i * N + j0;
    if (r) {
      const T* ri = r + i * N + j0;
      T* mi = masked + i * N + j0;
      // Two passes over the row (the second reads it back from L1): mixing the float select and
      // the double sums in one loop kept GCC from vectorising it (20x slower at 1024 x 1024).
      for (int64_t c = 0; c < w; ++c) mi[c] = static_cast<Mt>(ri[c]) <= Mt(0) ? T(0) : gi[c];
      for (int64_t c = 0; c < w; ++c) acc[c] += static_cast<Acc>(static_cast<Mt>(mi[c]));
    } else {
      for (int64_t c = 0; c < w; ++c) acc[c] += static_cast<Acc>(static_cast<Mt>(gi[c]));
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
  m.impl("linear_batched", &torchext::linear_batched_cpu);
}
