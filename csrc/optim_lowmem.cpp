// The low-memory SGD / Adam / AdamW steps on CPU (torchext::sgd_lowmem_step_, adam_lowmem_step_):
// stochastic rounding of half params, Kahan compensation, and state in bfloat16 or 8-bit blockwise
// codes, in one pass per 256-element block: read p, g, each state buffer (1 byte per element for
// int8 codes, plus one fp32 scale per block), update, write them back, requantizing the block from
// its new values. The math is csrc/optim_lowmem.h's, shared with the CUDA twin, so both write the
// same bits. The element loop is compiled for each SIMD level (csrc/cpu/dispatch.h) and vectorised
// by the compiler, with FMA contraction off for this whole file: vector IEEE add, mul, div and sqrt
// round as the scalar ones (and the GPU's _rn intrinsics) do, so every level writes the same bits.
// The Philox words of a block are formed first, in a loop of their own.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/optim.h"
#include "optim_args.h"
#include "optim_checks.h"
#include "optim_lowmem.h"
#include "optim_lowmem_checks.h"

namespace torchext {
namespace {

using lowmem::kQuantBlock;

// One launch's tensor t: where its lists are (null where absent), as the CUDA engine's metadata.
template <typename T, typename S>
struct Slot {
  T* p;
  const T* g;
  S* buf[3];
  float* scale[3];
  float* master;
  T* comp;
  int64_t numel;
};

// The rules: the change of p from one step, updating the K state values b[0..K).
struct SgdRule {
  lowmem::SgdC c;
  TORCHEXT_INLINE float operator()(float p, float g, float* b) const { return lowmem::sgd_delta(p, g, b[0], c); }
};
template <bool kAmsgrad>
struct AdamRule {
  lowmem::AdamC c;
  TORCHEXT_INLINE float operator()(float p, float g, float* b) const {
    return lowmem::adam_delta(p, g, b[0], b[1], b[2], kAmsgrad, c);
  }
};

// What a variant of the block loop is compiled for: param type T, state storage S, K state
// buffers, those in kSqrtMask (bit k) stored through their square root, kStochastic: stochastic
// rounding, and the update rule.
template <typename T_, typename S_, int K_, unsigned kSqrtMask_, bool kStochastic_, typename Rule_>
struct BlockConfig {
  using T = T_;
  using S = S_;
  using Rule = Rule_;
  static constexpr int K = K_;
  static constexpr unsigned kSqrtMask = kSqrtMask_;
  static constexpr bool kStochastic = kStochastic_;
};

// Blocks [first_block, last_block) of one tensor.
template <typename Cfg>
TORCHEXT_INLINE void lowmem_blocks_impl(const Slot<typename Cfg::T, typename Cfg::S>* slot,
                                        const typename Cfg::Rule* rule_of_tensor, uint32_t t, int64_t first_block,
                                        int64_t last_block, uint64_t seed, uint64_t offset) {
  using T = typename Cfg::T;
  using S = typename Cfg::S;
  constexpr int K = Cfg::K;
  constexpr unsigned kSqrtMask = Cfg::kSqrtMask;
  constexpr bool kStochastic = Cfg::kStochastic;
  const Slot<T, S>& s = *slot;
  const typename Cfg::Rule rule = *rule_of_tensor;  // a local copy: no store to the tensors can change it
  constexpr bool kCodes = std::is_same_v<S, int8_t>;
  constexpr int kBufs = K > 0 ? K : 1;
  alignas(64) float nb[kBufs][kQuantBlock];
  alignas(64) uint32_t words[kQuantBlock];
  T* const __restrict__ p = s.p;
  const T* const __restrict__ g = s.g;
  float* const __restrict__ master = s.master;
  T* const __restrict__ comp = s.comp;
  for (int64_t blk = first_block; blk < last_block; ++blk) {
    const int64_t begin = blk * kQuantBlock, n = std::min<int64_t>(kQuantBlock, s.numel - begin);
    if constexpr (kStochastic) {  // begin is a multiple of 4: element begin + j takes word j
      for (int64_t q = 0; q < (n + 3) / 4; ++q) {
        const lowmem::Philox w = lowmem::random_quad(seed, offset, t, static_cast<uint64_t>(begin / 4 + q));
        for (int l = 0; l < 4; ++l) words[4 * q + l] = w.v[l];
      }
    }
    float scale[kBufs];
    const S* buf[kBufs];
    for (int k = 0; k < K; ++k) {
      buf[k] = s.buf[k] + begin;
      scale[k] = kCodes ? s.scale[k][blk] : 0.f;
    }
    const T* const pb = p + begin;
    const T* const gb = g + begin;
    for (int64_t j = 0; j < n; ++j) {
      const float pv = master ? master[begin + j] : static_cast<float>(pb[j]);
      float b[3] = {0.f, 0.f, 0.f};
      // (the block's scales are read from the local copy: scale[k] is "block" k of it)
      for (int k = 0; k < K; ++k) b[k] = lowmem::load_state(buf[k], j, scale, k, (kSqrtMask >> k) & 1u);
      const float delta = rule(pv, static_cast<float>(gb[j]), b);
      const auto a = lowmem::apply_delta<T>(pv, delta, comp ? static_cast<float>(comp[begin + j]) : 0.f,
                                            comp != nullptr, kStochastic, kStochastic ? words[j] : 0u);
      p[begin + j] = a.param;
      if (master) master[begin + j] = a.master;
      if (comp) comp[begin + j] = static_cast<T>(a.comp);
      for (int k = 0; k < K; ++k) nb[k][j] = b[k];
    }
    for (int k = 0; k < K; ++k) {
      S* const out = s.buf[k] + begin;
      if constexpr (kCodes) {
        const bool sq = (kSqrtMask >> k) & 1u;
        float amax = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          const float x = sq ? lowmem::root(nb[k][j]) : std::fabs(nb[k][j]);
          nb[k][j] = sq ? x : nb[k][j];
          amax = x > amax ? x : amax;
        }
        s.scale[k][blk] = amax;
        const float inv = lowmem::inverse_scale(amax);
        for (int64_t j = 0; j < n; ++j) out[j] = lowmem::encode(nb[k][j], inv);
      } else {
        for (int64_t j = 0; j < n; ++j) out[j] = static_cast<S>(nb[k][j]);
      }
    }
  }
}

TORCHEXT_CPU_DISPATCH(lowmem_blocks_at_level, lowmem_blocks_impl)

// Stochastic rounding is compiled in only where it changes something (half params).
template <typename T, typename S, int K, unsigned M, typename Rule>
void lowmem_blocks(const Slot<T, S>& s, const Rule& rule, uint32_t t, int64_t first_block, int64_t last_block,
                   bool stochastic, uint64_t seed, uint64_t offset) {
  if constexpr (!std::is_same_v<T, float>) {
    if (stochastic) {
      return lowmem_blocks_at_level<BlockConfig<T, S, K, M, true, Rule>>(&s, &rule, t, first_block, last_block, seed,
                                                                          offset);
    }
  }
  lowmem_blocks_at_level<BlockConfig<T, S, K, M, false, Rule>>(&s, &rule, t, first_block, last_block, seed, offset);
}

// Runs the blocks of every tensor over the threads (a block never straddles two workers).
template <int K, unsigned M, typename T, typename S, typename Rule>
void lowmem_launch(const std::vector<Slot<T, S>>& slots, const std::vector<Rule>& rules, bool stochastic,
                   uint64_t seed, uint64_t offset) {
  std::vector<int64_t> offsets(slots.size() + 1, 0);
  for (size_t i = 0; i < slots.size(); ++i) offsets[i + 1] = offsets[i] + (slots[i].numel + kQuantBlock - 1) / kQuantBlock;
  at::parallel_for(0, offsets.back(), 64, [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    while (begin < end) {
      const int64_t stop = std::min(end, offsets[t + 1]);
      if (stop > begin) {
        lowmem_blocks<T, S, K, M>(slots[t], rules[t], static_cast<uint32_t>(t), begin - offsets[t],
                                  stop - offsets[t], stochastic, seed, offset);
      }
      begin = stop;
      ++t;
    }
  });
}

template <typename T, typename S>
std::vector<Slot<T, S>> make_slots(at::TensorList params, at::TensorList grads,
                                   std::initializer_list<at::TensorList> bufs,
                                   std::initializer_list<at::TensorList> scales, at::TensorList master,
                                   at::TensorList comps) {
  std::vector<Slot<T, S>> slots(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    Slot<T, S>& s = slots[i];
    s.p = params[i].mutable_data_ptr<T>();
    s.g = grads[i].const_data_ptr<T>();
    int k = 0;
    for (const auto& b : bufs) s.buf[k++] = b.empty() ? nullptr : b[i].mutable_data_ptr<S>();
    for (; k < 3; ++k) s.buf[k] = nullptr;
    k = 0;
    for (const auto& sc : scales) s.scale[k++] = sc.empty() ? nullptr : sc[i].mutable_data_ptr<float>();
    for (; k < 3; ++k) s.scale[k] = nullptr;
    s.master = master.empty() ? nullptr : master[i].mutable_data_ptr<float>();
    s.comp = comps.empty() ? nullptr : comps[i].mutable_data_ptr<T>();
    s.numel = params[i].numel();
  }
  return slots;
}

// Reads the launch's seed and offset and bumps the offset (after the update, unless skipped).
struct SrState {
  bool on = false;
  uint64_t seed = 0, offset = 0;
  explicit SrState(const c10::optional<at::Tensor>& st) {
    if (!st.has_value()) return;
    on = true;
    const int64_t* v = st->const_data_ptr<int64_t>();
    seed = static_cast<uint64_t>(v[0]);
    offset = static_cast<uint64_t>(v[1]);
  }
  static void bump(const c10::optional<at::Tensor>& st) {
    if (st.has_value()) st->mutable_data_ptr<int64_t>()[1] += 1;
  }
};

void sgd_lowmem_step_cpu(TORCHEXT_KERNEL_PARAMS(TORCHEXT_SGD_LOWMEM_STEP_ARGS)) {
  if (params.empty()) return;
  const bool use_momentum = momentum != 0.0;
  check_sgd_lowmem_step(params, grads, momentum_buffers, momentum_counts, master_params, use_momentum,
                        momentum_buffer_scales, kahan_comps, sr_state, grad_scale, found_inf, lr_tensor);
  if (lr_tensor.has_value()) lr = lr_tensor->item<double>();
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return;  // skipped step: touch nothing
  DenseParams dense;
  params = dense.gather(params);
  std::vector<at::Tensor> grad_copies;
  grads = grads_in_param_layout(params, grads, grad_copies);
  const double inv_scale = grad_scale.has_value() ? 1.0 / static_cast<double>(grad_scale->item<float>()) : 1.0;
  std::vector<SgdRule> rules(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const bool first = use_momentum && cpu::counter_value(momentum_counts[i]) == 0.f;
    rules[i].c = lowmem::sgd_constants(lr, momentum, dampening, weight_decay, nesterov, maximize, first, inv_scale);
  }
  const SrState sr(sr_state);
  const at::ScalarType state_type = use_momentum ? momentum_buffers[0].scalar_type() : at::kFloat;
  dispatch_lowmem_types(params[0].scalar_type(), state_type, "torchext::sgd_lowmem_step_", [&](auto tp, auto sp) {
    using T = decltype(tp);
    using S = decltype(sp);
    const auto slots = make_slots<T, S>(params, grads, {use_momentum ? momentum_buffers : at::TensorList()},
                                        {momentum_buffer_scales}, master_params, kahan_comps);
    if (use_momentum) {
      lowmem_launch<1, 0u>(slots, rules, sr.on, sr.seed, sr.offset);
    } else {
      lowmem_launch<0, 0u>(slots, rules, sr.on, sr.seed, sr.offset);
    }
  });
  cpu::bump_counters(momentum_counts);
  SrState::bump(sr_state);
  dense.scatter();
}

void adam_lowmem_step_cpu(TORCHEXT_KERNEL_PARAMS(TORCHEXT_ADAM_LOWMEM_STEP_ARGS)) {
  if (params.empty()) return;
  check_adam_lowmem_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params, amsgrad,
                         exp_avg_scales, exp_avg_sq_scales, kahan_comps, sr_state, grad_scale, found_inf, lr_tensor);
  if (lr_tensor.has_value()) lr = lr_tensor->item<double>();
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return;
  DenseParams dense;
  params = dense.gather(params);
  std::vector<at::Tensor> grad_copies;
  grads = grads_in_param_layout(params, grads, grad_copies);
  const double inv_scale = grad_scale.has_value() ? 1.0 / static_cast<double>(grad_scale->item<float>()) : 1.0;
  std::vector<lowmem::AdamC> consts(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const double step = static_cast<double>(cpu::counter_value(state_steps[i]) + 1.f);
    consts[i] = lowmem::adam_constants(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, step,
                                       inv_scale);
  }
  const SrState sr(sr_state);
  // The second moments (and their maximum) are stored through their square root: mask 0b110.
  dispatch_lowmem_types(params[0].scalar_type(), exp_avgs[0].scalar_type(), "torchext::adam_lowmem_step_",
                        [&](auto tp, auto sp) {
    using T = decltype(tp);
    using S = decltype(sp);
    const auto slots = make_slots<T, S>(params, grads, {exp_avgs, exp_avg_sqs, amsgrad ? max_exp_avg_sqs : at::TensorList()},
                                        {exp_avg_scales, exp_avg_sq_scales}, master_params, kahan_comps);
    auto launch = [&](auto ams) {
      constexpr bool kAms = decltype(ams)::value;
      std::vector<AdamRule<kAms>> rules(consts.size());
      for (size_t i = 0; i < consts.size(); ++i) rules[i].c = consts[i];
      lowmem_launch<kAms ? 3 : 2, 6u>(slots, rules, sr.on, sr.seed, sr.offset);
    };
    if (amsgrad) {
      launch(std::true_type());
    } else {
      launch(std::false_type());
    }
  });
  cpu::bump_counters(state_steps);
  SrState::bump(sr_state);
  dense.scatter();
}

}  // namespace
}  // namespace torchext

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("sgd_lowmem_step_", &torchext::sgd_lowmem_step_cpu);
  m.impl("adam_lowmem_step_", &torchext::adam_lowmem_step_cpu);
}
