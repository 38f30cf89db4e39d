// The arithmetic types of the kernels, CPU and CUDA alike.
#pragma once

#include <type_traits>

namespace torchext {

// What elementwise math runs in: double for double; float for float and for the half types, which
// are widened on load and rounded once on store.
template <typename T>
using math_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// What long sums accumulate in: double for double and float (a float32 product is exact there),
// float for the half types.
template <typename T>
using sum_t = std::conditional_t<std::is_same_v<T, double> || std::is_same_v<T, float>, double, float>;

}  // namespace torchext
