// CPUID-based SIMD level for the CPU kernels (see dispatch.h).
#include "cpu/dispatch.h"

#include <cstdlib>
#include <cstring>

namespace torchext {
namespace cpu {
namespace {

Level detect() {
#if TORCHEXT_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Level::AVX512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return Level::AVX2;
  }
#endif
  return Level::Default;
}

Level from_env(Level detected) {
  const char* env = std::getenv("TORCHEXT_CPU_CAPABILITY");
  if (env == nullptr) return detected;
  Level wanted = detected;
  if (std::strcmp(env, "default") == 0) wanted = Level::Default;
  else if (std::strcmp(env, "avx2") == 0) wanted = Level::AVX2;
  else if (std::strcmp(env, "avx512") == 0) wanted = Level::AVX512;
  // The environment can only lower the level: running AVX-512 code on a CPU without it would crash.
  return static_cast<int>(wanted) < static_cast<int>(detected) ? wanted : detected;
}

}  // namespace

Level level() {
  static const Level chosen = from_env(detect());
  return chosen;
}

bool use_avx512_bf16() {
  static const bool use = [] {
    if (level() != Level::AVX512 || std::getenv("TORCHEXT_CPU_CAPABILITY") != nullptr) return false;
#if TORCHEXT_X86_SIMD
    return __builtin_cpu_supports("avx512bf16") != 0;
#else
    return false;
#endif
  }();
  return use;
}

const char* level_name() {
  switch (level()) {
    case Level::AVX512: return "avx512";
    case Level::AVX2: return "avx2";
    default: return "default";
  }
}

}  // namespace cpu
}  // namespace torchext
