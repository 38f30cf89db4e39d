// The tensor-core GEMM (gemm_tc.cuh) for float16 operands: every tile of
// the table in gemm.h and every operand layout it is used with, in a file of its own so that nvcc
// builds the types in parallel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include "cuda/gemm_tc.cuh"

namespace torchext {
namespace cuda {

void launch_gemm_tc_f16(int tile, Major a_major, Major b_major, const GemmArgs& args, cudaStream_t stream) {
  tc::launch_typed<at::Half>(tile, a_major, b_major, args, stream);
}

}  // namespace cuda
}  // namespace torchext
