// The SIMT GEMM (gemm_simt.cuh) for float and double, every operand layout.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include "cuda/gemm_simt.cuh"

namespace torchext {
namespace cuda {

namespace {
template <typename T, Major AM, Major BMJ>
void launch(const GemmArgs& p, cudaStream_t stream) {
  const int64_t tiles = ((p.M + simt::kTile - 1) / simt::kTile) * ((p.N + simt::kTile - 1) / simt::kTile);
  auto* kernel = simt::gemm_simt_kernel<T, AM, BMJ>;  // (a template-id would split the macro's arguments)
  TORCHEXT_LAUNCH(kernel, dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(p.splits)),
                  dim3(simt::kThreads), 0, stream, p);
}

template <typename T>
void launch_layout(Major am, Major bm, const GemmArgs& p, cudaStream_t stream) {
  if (am == Major::kK && bm == Major::kK) return launch<T, Major::kK, Major::kK>(p, stream);
  if (am == Major::kK) return launch<T, Major::kK, Major::kMN>(p, stream);
  if (bm == Major::kK) return launch<T, Major::kMN, Major::kK>(p, stream);
  return launch<T, Major::kMN, Major::kMN>(p, stream);
}
}  // namespace

void launch_gemm_simt(bool is_double, Major a_major, Major b_major, const GemmArgs& args, cudaStream_t stream) {
  if (is_double) return launch_layout<double>(a_major, b_major, args, stream);
  launch_layout<float>(a_major, b_major, args, stream);
}

}  // namespace cuda
}  // namespace torchext
