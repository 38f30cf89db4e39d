// Element loads and stores for CPU kernels, with the half types converted to and from float.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#include "cpu/dispatch.h"

#if TORCHEXT_X86_SIMD
#include <immintrin.h>
#endif

namespace torchext {
namespace cpu {

// The half types are converted with integer and float arithmetic on their bit patterns instead of
// c10's routines or GCC's _Float16: those convert one element at a time (c10 through an out-of-line
// call in our non-native builds), while these vectorise at every SIMD level. Both conversions are
// exact / round to nearest even, keep NaN (as a quiet NaN) and infinities, and handle subnormals.
typedef uint16_t u16_alias __attribute__((may_alias));

TORCHEXT_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
TORCHEXT_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

TORCHEXT_INLINE double load(const double* p, int64_t i) { return p[i]; }
TORCHEXT_INLINE float load(const float* p, int64_t i) { return p[i]; }
TORCHEXT_INLINE float load(const c10::Half* p, int64_t i) {
  const uint32_t h = reinterpret_cast<const u16_alias*>(p)[i];
  const uint32_t mag = h & 0x7fffu;
  // Shifted into a float's exponent/mantissa fields the magnitude is off by 2^(127-15) for normal
  // numbers and, as a float subnormal, by the same factor for half subnormals.
  uint32_t bits = float_to_bits(bits_to_float(mag << 13) * 0x1.0p112f);
  bits = mag >= 0x7c00u ? ((mag << 13) | 0x7f800000u) : bits;  // inf and NaN keep their payload
  return bits_to_float(bits | ((h & 0x8000u) << 16));
}
TORCHEXT_INLINE float load(const c10::BFloat16* p, int64_t i) {
  return bits_to_float(static_cast<uint32_t>(reinterpret_cast<const u16_alias*>(p)[i]) << 16);
}

TORCHEXT_INLINE void store(double* p, int64_t i, double v) { p[i] = v; }
TORCHEXT_INLINE void store(float* p, int64_t i, float v) { p[i] = v; }
TORCHEXT_INLINE void store(c10::Half* p, int64_t i, float v) {
  const uint32_t w = float_to_bits(v);
  const uint32_t a = w & 0x7fffffffu;
  // Normal halves: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to
  // nearest even; a mantissa carry correctly bumps the exponent.
  const uint32_t normal = ((a + 0x0fffu + ((a >> 13) & 1u)) >> 13) - (112u << 10);
  // Below 2^-14: adding 0.5f makes the FPU round |v| to a multiple of 2^-24, the half subnormal
  // step, which then sits in the low mantissa bits (2^-14 itself comes out as the smallest normal).
  const uint32_t subnormal = float_to_bits(bits_to_float(a) + 0.5f) - 0x3f000000u;
  uint32_t h = a < 0x38800000u ? subnormal : normal;
  h = a >= 0x477ff000u ? 0x7c00u : h;  // rounds to infinity from 65520 on
  h = a > 0x7f800000u ? 0x7e00u : h;   // NaN
  reinterpret_cast<u16_alias*>(p)[i] = static_cast<uint16_t>(h | ((w >> 16) & 0x8000u));
}
TORCHEXT_INLINE void store(c10::BFloat16* p, int64_t i, float v) {
  const uint32_t bits = float_to_bits(v);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  reinterpret_cast<u16_alias*>(p)[i] = static_cast<uint16_t>(v != v ? 0x7fc0u : rounded);
}

// float16 with F16C (every AVX2 / AVX-512 machine): one instruction converts 8 elements, far
// cheaper than the software path above, but GCC will not vectorise it from scalar code, so
// kernels call these explicitly, 8 elements at a time in registers. Both directions give the same
// values as the software path (round to nearest even).
#if TORCHEXT_X86_SIMD
inline bool use_f16c() { return level() != Level::Default; }

// 8 float16 (or float32) elements to and from a float vector, for kernels that convert in registers.
TORCHEXT_TARGET_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
TORCHEXT_TARGET_AVX2 inline void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
TORCHEXT_TARGET_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
TORCHEXT_TARGET_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
#endif

}  // namespace cpu
}  // namespace torchext
