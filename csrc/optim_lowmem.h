// The low-memory optimizer modes, shared by the CPU kernels (csrc/optim_lowmem.cpp) and their CUDA
// twins (csrc/cuda/optim_lowmem.cu): stochastic rounding of half params, Kahan-compensated updates,
// and state stored in bfloat16 or as 8-bit blockwise codes. Everything an element's result depends
// on is written here once, as host-device code, so that both backends give the same bits:
//  - float arithmetic goes through add/mul/div/sqrt below, which on the GPU are the IEEE
//    round-to-nearest intrinsics (nvcc would otherwise fuse a*b+c into one FMA, rounding once
//    where the CPU rounds twice); the CPU file (optim_lowmem.cpp) turns FMA contraction off, so
//    its AVX2 and AVX-512 variants, vectorised by the compiler, round as the scalar code does;
//  - the random bits of stochastic rounding come from Philox4x32-10 keyed on the seed, counted by
//    (element index / 4, tensor index in the launch, launch offset), so they depend on nothing
//    that differs between backends (thread counts, block order);
//  - a block's 8-bit scale is the maximum of its 256 new values, which no summation order changes.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__) || defined(TORCHEXT_EMU)
#define TORCHEXT_HD __host__ __device__ __forceinline__
#else
#define TORCHEXT_HD inline
#endif

namespace torchext {
namespace lowmem {

// Elements per 8-bit quantization block (one fp32 scale each); tensors smaller than
// kMinQuantNumel keep float32 state (torchext/optim/_base.py decides, as peers do).
constexpr int64_t kQuantBlock = 256;
constexpr int64_t kMinQuantNumel = 4096;
constexpr float kQuantLevels = 127.f;

TORCHEXT_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
TORCHEXT_HD float sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
TORCHEXT_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
TORCHEXT_HD float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
TORCHEXT_HD float root(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
TORCHEXT_HD uint32_t bits_of(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

// ---------------------------------------------------------------- Philox4x32-10
struct Philox {
  uint32_t v[4];
};

TORCHEXT_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Four 32-bit words for counter (c0..c3) and key (seed).
TORCHEXT_HD Philox philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// The random words of elements 4 * quad .. 4 * quad + 3 of tensor t in the launch numbered
// `offset` (by the launch counter of the optimizer's sr_state).
TORCHEXT_HD Philox random_quad(uint64_t seed, uint64_t offset, uint32_t t, uint64_t quad) {
  return philox(static_cast<uint32_t>(quad), static_cast<uint32_t>(quad >> 32) ^ (t << 8),
                static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), seed);
}
// The random word of element i (a loop over consecutive elements may keep random_quad's four).
TORCHEXT_HD uint32_t random_word(uint64_t seed, uint64_t offset, uint32_t t, int64_t i) {
  const Philox q = random_quad(seed, offset, t, static_cast<uint64_t>(i) >> 2);
  const int w = static_cast<int>(i & 3);  // selected without a dynamic index, which would put q in local memory
  return w == 0 ? q.v[0] : w == 1 ? q.v[1] : w == 2 ? q.v[2] : q.v[3];
}

// ---------------------------------------------------------------- rounding to the param type
template <typename T>
TORCHEXT_HD T round_nearest(float x) {
  return static_cast<T>(x);
}

// x rounded to T up or down, up with probability (x - down) / (up - down): unbiased. NaN and
// infinities round as they do to nearest.
template <typename T>
TORCHEXT_HD T round_stochastic(float x, uint32_t r) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (!(x - x == 0.f)) return static_cast<T>(x);  // inf or NaN
    // bf16 is the top half of a float: adding 16 random bits below it carries into the next bf16
    // with exactly the probability of the dropped fraction.
    const uint32_t b = (bits_of(x) + (r & 0xFFFFu)) >> 16;
    return c10::BFloat16(static_cast<uint16_t>(b), c10::BFloat16::from_bits());
  } else {
    static_assert(std::is_same_v<T, c10::Half>, "stochastic rounding to float32, bfloat16 or float16");
    const c10::Half h = static_cast<c10::Half>(x);
    const float hf = static_cast<float>(h);
    if (hf == x || !(x - x == 0.f) || !(hf - hf == 0.f)) return h;
    // the other float16 neighbour of x, on its far side from h
    const uint16_t hb = h.x;
    const bool up = hf < x, negative = (hb & 0x8000u) != 0;
    uint16_t ob;
    if ((hb & 0x7FFFu) == 0) {
      ob = up ? 0x0001u : 0x8001u;
    } else {
      ob = (up != negative) ? static_cast<uint16_t>(hb + 1) : static_cast<uint16_t>(hb - 1);
    }
    const c10::Half o(ob, c10::Half::from_bits());
    const float of = static_cast<float>(o);
    const float lo = hf < of ? hf : of, hi = hf < of ? of : hf;
    const float p_up = div(sub(x, lo), sub(hi, lo));
    const float u = mul(static_cast<float>(r >> 8), 5.9604644775390625e-8f);  // 24 bits / 2^24
    const bool take_hi = u < p_up;
    return take_hi ? (hf < of ? o : h) : (hf < of ? h : o);
  }
}

// ---------------------------------------------------------------- 8-bit blockwise codes
// A block's values x are stored as codes c in [-127, 127] with x = scale * sign(c) * (|c| / 127)^2,
// scale the block's largest |x|: a square-root companding, finer near zero, where most of a
// moment's values lie. Error bound: |x - decode(encode(x))| <= scale * (2 q + 1/254) / 254, with
// q = sqrt(|x| / scale). The second moment is stored through its square root (whose range is that of
// the gradients), v = decode(...)^2.
TORCHEXT_HD int8_t encode(float x, float inv_scale) {
  const float a = x < 0.f ? -x : x;
  float q = root(mul(a, inv_scale));
  q = q < 1.f ? q : 1.f;
  const int c = static_cast<int>(rintf(mul(q, kQuantLevels)));
  return static_cast<int8_t>(x < 0.f ? -c : c);
}
TORCHEXT_HD float decode(int8_t c, float scale) {
  const float q = div(static_cast<float>(c < 0 ? -c : c), kQuantLevels);
  const float x = mul(scale, mul(q, q));
  return c < 0 ? -x : x;
}
// 1 / scale, formed once per block; 0 for an all-zero block (every code 0).
TORCHEXT_HD float inverse_scale(float scale) { return scale > 0.f ? div(1.f, scale) : 0.f; }

// How a state buffer is stored: S is float, c10::BFloat16, the param's half type, or int8_t
// (codes; then `scale` per block). `sqrt_coded` for the second moments.
template <typename S>
TORCHEXT_HD float load_state(const S* s, int64_t i, const float* scales, int64_t block, bool sqrt_coded) {
  if constexpr (std::is_same_v<S, int8_t>) {
    const float x = decode(s[i], scales[block]);
    return sqrt_coded ? mul(x, x) : x;
  } else {
    (void)scales;
    (void)block;
    (void)sqrt_coded;
    return static_cast<float>(s[i]);
  }
}

// ---------------------------------------------------------------- the updates
// Per-tensor constants, formed in double from the step's arguments as the default kernels form
// them, then rounded to float.
struct AdamC {
  float one_minus_beta1, beta2, one_minus_beta2, eps, step_size, inv_bc2_sqrt, lr_wd, l2, grad_factor;
};

TORCHEXT_HD AdamC adam_constants(double lr, double beta1, double beta2, double eps, double weight_decay,
                                 bool decoupled, bool maximize, double step, double inv_scale) {
  const double bc1 = 1.0 - pow(beta1, step);
  const double bc2 = 1.0 - pow(beta2, step);
  AdamC c;
  c.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  c.beta2 = static_cast<float>(beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  c.eps = static_cast<float>(eps);
  c.step_size = static_cast<float>(lr / bc1);
  c.inv_bc2_sqrt = div(1.f, static_cast<float>(sqrt(bc2)));
  c.lr_wd = decoupled ? static_cast<float>(lr * weight_decay) : 0.f;
  c.l2 = decoupled ? 0.f : static_cast<float>(weight_decay);
  c.grad_factor = static_cast<float>(maximize ? -inv_scale : inv_scale);
  return c;
}

// The change of p (its decay included) from one Adam step; m, v (and vmax with amsgrad) updated.
TORCHEXT_HD float adam_delta(float p, float g, float& m, float& v, float& vmax, bool amsgrad, const AdamC& c) {
  float gv = mul(g, c.grad_factor);
  // Only when there is L2 decay, as in torch: 0 * p would turn an infinite parameter into NaN.
  if (c.l2 != 0.f) gv = add(gv, mul(c.l2, p));
  m = add(m, mul(c.one_minus_beta1, sub(gv, m)));
  v = add(mul(c.beta2, v), mul(mul(c.one_minus_beta2, gv), gv));
  float vd = v;
  if (amsgrad) {
    vmax = vmax > v ? vmax : v;
    vd = vmax;
  }
  const float step = div(mul(c.step_size, m), add(mul(root(vd), c.inv_bc2_sqrt), c.eps));
  return c.lr_wd != 0.f ? sub(-mul(c.lr_wd, p), step) : -step;
}

struct SgdC {
  float lr, wd, momentum, keep, take, grad_factor;
  bool first, nesterov, use_momentum;
};

TORCHEXT_HD SgdC sgd_constants(double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                               bool maximize, bool first, double inv_scale) {
  SgdC c;
  c.lr = static_cast<float>(lr);
  c.wd = static_cast<float>(weight_decay);
  c.momentum = static_cast<float>(momentum);
  c.keep = static_cast<float>(momentum);
  c.take = static_cast<float>(1.0 - dampening);
  c.grad_factor = static_cast<float>(maximize ? -inv_scale : inv_scale);
  c.first = first;
  c.nesterov = nesterov;
  c.use_momentum = momentum != 0.0;
  return c;
}

TORCHEXT_HD float sgd_delta(float p, float g, float& buf, const SgdC& c) {
  float gv = mul(g, c.grad_factor);
  if (c.wd != 0.f) gv = add(gv, mul(c.wd, p));
  if (c.use_momentum) {
    buf = c.first ? gv : add(mul(c.keep, buf), mul(c.take, gv));
    gv = c.nesterov ? add(gv, mul(c.momentum, buf)) : buf;
  }
  return -mul(c.lr, gv);
}

// The new value of a param (old value p, change delta) in its type T, and its compensation:
//  - master: the fp32 master (p is its value) takes p + delta, the param its rounding;
//  - kahan: comp carries what earlier roundings lost (torch-optimi's compensated update): y =
//    delta + comp, the param takes round(p + y), comp the part of y that did not land;
//  - stochastic rounding rounds up or down at random, else to nearest.
template <typename T>
struct Applied {
  T param;
  float master;
  float comp;
};

template <typename T>
TORCHEXT_HD Applied<T> apply_delta(float p, float delta, float comp, bool kahan, bool stochastic, uint32_t r) {
  Applied<T> out;
  const float y = kahan ? add(delta, comp) : delta;
  const float s = add(p, y);
  out.master = s;
  out.param = stochastic ? round_stochastic<T>(s, r) : round_nearest<T>(s);
  out.comp = kahan ? sub(y, sub(static_cast<float>(out.param), p)) : 0.f;
  return out;
}

}  // namespace lowmem
}  // namespace torchext
