// One Linear GEMM as the CPU and CUDA kernels receive it, and the shapes that need no GEMM.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace torchext {

// out[M, N] = A[M, K] @ B[N, K]^T (+ bias) (ReLU). A and B are read through their strides (in
// elements), so the transposed views the backward pass produces (W.t(), dY.t(), X.t()) need no copy.
template <typename T>
struct LinearProblem {
  const T* a;  // A(i, k) = a[i * sam + k * sak]        (input)
  int64_t sam, sak;
  const T* b;  // B(j, k) = b[j * sbn + k * sbk]        (weight)
  int64_t sbn, sbk;
  const T* bias;  // bias[j * sbias], or null
  int64_t sbias;
  T* c;  // C(i, j) = c[i * N + j]                      (output, row-major)
  int64_t M, N, K;
  bool relu;
};

// The problem for 2-D input [M, K], weight [N, K], bias [N] or null, and a row-major out [M, N].
template <typename T>
LinearProblem<T> linear_problem(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                                at::Tensor& out, bool relu) {
  LinearProblem<T> p;
  p.a = input.const_data_ptr<T>();
  p.sam = input.stride(0);
  p.sak = input.stride(1);
  p.b = weight.const_data_ptr<T>();
  p.sbn = weight.stride(0);
  p.sbk = weight.stride(1);
  p.bias = bias ? bias->const_data_ptr<T>() : nullptr;
  p.sbias = bias ? bias->stride(0) : 0;
  p.c = out.mutable_data_ptr<T>();
  p.M = input.size(0);
  p.N = weight.size(0);
  p.K = input.size(1);
  p.relu = relu;
  return p;
}

// Fills out [M, N] when no GEMM is needed and returns true: an empty output, or K == 0 (an empty
// sum: the output is the bias, or zero, through the activation).
inline bool linear_without_gemm(const at::Tensor& input, const at::Tensor* bias, at::Tensor& out, bool relu) {
  if (out.numel() == 0) return true;
  if (input.size(1) != 0) return false;
  if (bias) {
    out.copy_(bias->unsqueeze(0).expand_as(out));
  } else {
    out.zero_();
  }
  if (relu) out.clamp_min_(0);
  return true;
}

}  // namespace torchext
