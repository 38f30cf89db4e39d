// Run-time SIMD dispatch for CPU kernels.
//
// The extension is compiled without -march flags, so it runs on any x86-64. Each leaf kernel is
// written once as an always-inline template and instantiated three times: with AVX-512, with
// AVX2+FMA and with the baseline ISA. GCC compiles the inlined body with the ISA of the wrapper,
// so one source yields three vectorised variants; `level()` picks one from CPUID at first use.
// TORCHEXT_CPU_CAPABILITY=default|avx2|avx512 caps the level (for tests and comparisons).
#pragma once

#include <cstdint>

namespace torchext {
namespace cpu {

enum class Level : int { Default = 0, AVX2 = 1, AVX512 = 2 };

Level level();             // the level kernels run at (detected, capped by the environment)
const char* level_name();  // "avx512", "avx2" or "default"
// Whether bfloat16 GEMMs use AVX512_BF16 dot products: level() is AVX512, the CPU has the
// extension, and TORCHEXT_CPU_CAPABILITY does not cap the level (setting it to "avx512" switches
// the extension off and keeps the plain AVX-512 kernels).
bool use_avx512_bf16();

}  // namespace cpu
}  // namespace torchext

#define TORCHEXT_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define TORCHEXT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define TORCHEXT_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TORCHEXT_TARGET_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
#else
#define TORCHEXT_TARGET_AVX512
#define TORCHEXT_TARGET_AVX2
#define TORCHEXT_TARGET_AVX512_BF16
#endif

// Declares NAME<T>(args...) that forwards to the SIMD variant of IMPL<T> chosen at run time.
// IMPL must be a TORCHEXT_INLINE function template whose first template parameter is the dtype.
// Keep parallel_for lambdas outside IMPL: a lambda does not inherit its enclosing target ISA.
#define TORCHEXT_CPU_DISPATCH(NAME, IMPL)                                          \
  template <typename T, typename... Args>                                          \
  TORCHEXT_TARGET_AVX512 void NAME##_avx512(Args... args) { IMPL<T>(args...); }    \
  template <typename T, typename... Args>                                          \
  TORCHEXT_TARGET_AVX2 void NAME##_avx2(Args... args) { IMPL<T>(args...); }        \
  template <typename T, typename... Args>                                          \
  void NAME##_default(Args... args) { IMPL<T>(args...); }                          \
  template <typename T, typename... Args>                                          \
  void NAME(Args... args) {                                                        \
    switch (::torchext::cpu::level()) {                                            \
      case ::torchext::cpu::Level::AVX512: return NAME##_avx512<T>(args...);       \
      case ::torchext::cpu::Level::AVX2: return NAME##_avx2<T>(args...);           \
      default: return NAME##_default<T>(args...);                                  \
    }                                                                              \
  }
