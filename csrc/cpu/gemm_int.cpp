// Integer Linear on CPU: out[M, N] = input[M, K] @ weight[N, K]^T (+ bias) (ReLU), wrapping
// around in the type.
//
// Work: M*N*K multiply-adds in the accumulator type; W^T is widened into panels once (N*K
// elements), each row tile of x once per panel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/gemm.h"

namespace torchext {
namespace cpu {
namespace {

// Integer Linear, which torch computes on the CPU: products and sums wrap around in the integer
// type, as torch's do. They are accumulated in an unsigned type at least as wide (uint32_t, or
// uint64_t for 64-bit types), whose arithmetic is modular, so the result converted to T is the
// exact one modulo 2^bits(T), for signed and unsigned types alike.
//
// Small problems take one dot product per output. Others go through a small register-tiled GEMM:
// W^T is packed once into column panels of kIntCols<A> columns, widened to A and zero-padded; each
// output tile of kIntRows rows by one panel keeps its accumulators in vector registers over the
// whole K loop (8 x 2 vectors of 512 bits), with the tile's rows of x packed k-major and
// zero-padded beside it.
constexpr int64_t kIntRows = 8;
template <typename A>
constexpr int64_t kIntCols = 128 / sizeof(A);  // two 512-bit vectors of A per row

template <typename T>
using IntAcc = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;

template <typename T>
TORCHEXT_INLINE IntAcc<T> widen_int(T v) {  // sign- (or zero-) extended, then taken modulo 2^bits(IntAcc)
  return static_cast<IntAcc<T>>(static_cast<std::make_signed_t<IntAcc<T>>>(v));
}

// acc[r][n] = sum_k xk[k][r] * panel[k][n] for one tile (xk: [K][kIntRows], panel: [K][kIntCols]).
template <typename A>
TORCHEXT_INLINE void integer_tile_impl(const A* __restrict__ xk, const A* __restrict__ panel, int64_t K,
                                       A* __restrict__ acc) {
  constexpr int64_t C = kIntCols<A>;
  A sum[kIntRows][C] = {};
  for (int64_t k = 0; k < K; ++k) {
    const A* __restrict__ w = panel + k * C;
    const A* __restrict__ xr = xk + k * kIntRows;
#pragma GCC unroll 8
    for (int64_t r = 0; r < kIntRows; ++r) {
      const A a = xr[r];
#pragma GCC unroll 32
      for (int64_t n = 0; n < C; ++n) sum[r][n] += a * w[n];
    }
  }
  for (int64_t r = 0; r < kIntRows; ++r)
    for (int64_t n = 0; n < C; ++n) acc[r * C + n] = sum[r][n];
}
TORCHEXT_CPU_DISPATCH(integer_tile_kernel, integer_tile_impl)

// Every output as one dot product of an x row and a W row (both contiguous along k).
template <typename T>
TORCHEXT_INLINE void integer_dots_impl(const T* x, const T* w, const T* bias, T* out, int64_t M, int64_t N,
                                       int64_t K, int64_t out_stride, bool relu) {
  using A = IntAcc<T>;
  for (int64_t m = 0; m < M; ++m) {
    const T* __restrict__ xr = x + m * K;
    for (int64_t n = 0; n < N; ++n) {
      const T* __restrict__ wr = w + n * K;
      A sum = bias ? widen_int(bias[n]) : A(0);
      for (int64_t k = 0; k < K; ++k) sum += widen_int(xr[k]) * widen_int(wr[k]);
      const T v = static_cast<T>(sum);
      out[m * out_stride + n] = relu && v < T(0) ? T(0) : v;
    }
  }
}
TORCHEXT_CPU_DISPATCH(integer_dots_kernel, integer_dots_impl)

}  // namespace

// out is [M, N] with unit column stride.
template <typename T>
void integer_linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out,
                    bool relu) {
  using A = IntAcc<T>;
  constexpr int64_t C = kIntCols<A>;
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();  // [N, K]
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), out_stride = out.stride(0);
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  const T* bp = bias ? b.const_data_ptr<T>() : nullptr;
  T* op = out.mutable_data_ptr<T>();
  if (M * N * K <= (int64_t(1) << 18)) {
    // Small problems: one dot product per output, single-threaded; packing would cost more than it saves.
    integer_dots_kernel<T>(xp, wp, bp, op, M, N, K, out_stride, relu);
    return;
  }
  const int64_t row_tiles = (M + kIntRows - 1) / kIntRows, col_tiles = (N + C - 1) / C;
  // The panels: panel p holds W^T's columns [p * C, p * C + C), k-major, widened, zero-padded.
  std::vector<A> panels(static_cast<size_t>(col_tiles * K * C), A(0));
  at::parallel_for(0, col_tiles, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t n = p * C; n < std::min(N, p * C + C); ++n)
        for (int64_t k = 0; k < K; ++k) panels[(p * K + k) * C + (n - p * C)] = widen_int(wp[n * K + k]);
  });
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, kIntRows * C * K));
  // Tiles numbered panel first, so that consecutive tiles (one thread's share) reuse a panel.
  at::parallel_for(0, row_tiles * col_tiles, grain, [&](int64_t t0, int64_t t1) {
    std::vector<A> xk(static_cast<size_t>(K * kIntRows));
    std::vector<A> acc(static_cast<size_t>(kIntRows * C));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m = (t % row_tiles) * kIntRows, p = t / row_tiles, n0 = p * C;
      const int64_t rows = std::min(kIntRows, M - m), cols = std::min(C, N - n0);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t r = 0; r < kIntRows; ++r) xk[k * kIntRows + r] = r < rows ? widen_int(xp[(m + r) * K + k]) : A(0);
      integer_tile_kernel<A>(xk.data(), panels.data() + p * K * C, K, acc.data());
      for (int64_t r = 0; r < rows; ++r) {
        T* o = op + (m + r) * out_stride + n0;
        for (int64_t n = 0; n < cols; ++n) {
          const T v = static_cast<T>(acc[r * C + n] + (bp ? widen_int(bp[n0 + n]) : A(0)));
          o[n] = relu && v < T(0) ? T(0) : v;
        }
      }
    }
  });
}

template void integer_linear<uint8_t>(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&, bool);
template void integer_linear<int8_t>(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&, bool);
template void integer_linear<int16_t>(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&, bool);
template void integer_linear<int32_t>(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&, bool);
template void integer_linear<int64_t>(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&, bool);

}  // namespace cpu
}  // namespace torchext
