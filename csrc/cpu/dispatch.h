// Run-time SIMD dispatch for CPU kernels.
//
// The extension is compiled without -march flags, so it runs on any x86-64. Each leaf kernel is
// written once as an always-inline template and instantiated three times: with AVX-512, with
// AVX2+FMA and with the baseline ISA. GCC compiles the inlined body with the ISA of the wrapper,
// so one source yields three vectorised variants; `level()` picks one from CPUID at first use.
// TORCHEXT_CPU_CAPABILITY=default|avx2|avx512 caps the level (for tests and comparisons).
//
// The x86 variants (and the kernels written with x86 intrinsics: F16C conversions, AVX512_BF16 dot
// products) exist only where TORCHEXT_X86_SIMD is 1: x86-64 with GCC or Clang. Elsewhere (aarch64,
// for one), or when the build defines TORCHEXT_PORTABLE (setup.py does for TORCHEXT_PORTABLE=1, so
// that an x86 machine can build and test what other machines compile), each kernel is compiled
// once, for the baseline ISA of the target, and level() is always Default.
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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(TORCHEXT_PORTABLE)
#define TORCHEXT_X86_SIMD 1
#else
#define TORCHEXT_X86_SIMD 0
#endif

// The float16 optimizer loops pass __m256 values through always-inline templates shared with the
// scalar code. GCC accepts that inside AVX2 functions; Clang refuses vector arguments to any
// function not itself compiled with AVX, inlined or not, so a Clang build leaves those loops out
// (float16 steps then take the software conversions, with the same results).
#if TORCHEXT_X86_SIMD && !defined(__clang__)
#define TORCHEXT_F16C_OPTIM 1
#else
#define TORCHEXT_F16C_OPTIM 0
#endif

#if TORCHEXT_X86_SIMD
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
#if TORCHEXT_X86_SIMD
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
#else
#define TORCHEXT_CPU_DISPATCH(NAME, IMPL) \
  template <typename T, typename... Args> \
  void NAME(Args... args) {               \
    IMPL<T>(args...);                     \
  }
#endif
