// Argument checks of the low-memory optimizer steps (csrc/optim_lowmem.h), shared by the CPU and
// CUDA entry points, and the dispatch over (param type, state storage type) they both use. Every
// check runs before the first write.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <vector>

#include "optim_checks.h"
#include "optim_lowmem.h"

namespace torchext {

inline const at::TensorList kNoTensors{};

// The state buffers of one launch: all of one storage type, float32, bfloat16, the param's half
// type or int8 codes (then with one float32 scale per 256-element block, contiguous), each with
// the shape, strides and device of its param.
inline void check_lowmem_state(const char* op, const at::TensorList& params, const std::vector<StateList>& buffers,
                               const std::vector<StateList>& scales, const at::TensorList& kahan_comps,
                               const at::TensorList& master_params, const c10::optional<at::Tensor>& sr_state) {
  const at::ScalarType pt = params[0].scalar_type();
  TORCH_CHECK(pt == at::kFloat || pt == at::kHalf || pt == at::kBFloat16, "torchext.", op,
              ": the low-memory modes take float32, float16 or bfloat16 params, but got ", pt);
  c10::optional<at::ScalarType> st;
  for (const auto& l : buffers) {
    for (size_t i = 0; i < l.tensors->size(); ++i) {
      const at::Tensor& s = (*l.tensors)[i];
      const at::Tensor& p = params[i];
      if (!st.has_value()) st = s.scalar_type();
      TORCH_CHECK(s.scalar_type() == *st, "torchext.", op, ": every state buffer of a launch must have one dtype; ",
                  l.name, "[", i, "] is ", s.scalar_type(), " but another is ", *st);
      const bool dense = p.is_non_overlapping_and_dense();
      TORCH_CHECK(s.sizes() == p.sizes() && (dense ? s.strides() == p.strides() : s.is_contiguous()) &&
                      s.device() == p.device(),
                  "torchext.", op, ": ", l.name, "[", i, "] must have the shape and device of params[", i, "] (",
                  p.sizes(), " on ", p.device(), ") and ", dense ? "its strides" : "be contiguous", ", but got ",
                  s.sizes(), " with strides ", s.strides(), " on ", s.device());
    }
  }
  if (st.has_value()) {
    TORCH_CHECK(*st == at::kFloat || *st == at::kBFloat16 || *st == at::kChar || *st == pt, "torchext.", op,
                ": state must be float32, bfloat16, int8 codes or the param dtype, but got ", *st);
  }
  const bool codes = st.has_value() && *st == at::kChar;
  for (size_t k = 0; k < scales.size(); ++k) {
    const auto& l = scales[k];
    const auto& owner = buffers[k];
    const bool want = codes && !owner.tensors->empty();
    TORCH_CHECK(want ? l.tensors->size() == params.size() : l.tensors->empty(), "torchext.", op, ": '", l.name,
                "' must hold one scale tensor per param with int8 state, and be empty otherwise");
    for (size_t i = 0; i < l.tensors->size(); ++i) {
      const at::Tensor& s = (*l.tensors)[i];
      const int64_t blocks = (params[i].numel() + lowmem::kQuantBlock - 1) / lowmem::kQuantBlock;
      TORCH_CHECK(s.scalar_type() == at::kFloat && s.numel() == blocks && s.is_contiguous() &&
                      s.device() == params[i].device(),
                  "torchext.", op, ": ", l.name, "[", i, "] must be a contiguous float32 tensor of ", blocks,
                  " elements (one per 256 of params[", i, "]) on ", params[i].device(), ", but got ", s.scalar_type(),
                  " with ", s.numel(), " elements on ", s.device());
    }
  }
  TORCH_CHECK(kahan_comps.empty() || kahan_comps.size() == params.size(), "torchext.", op,
              ": expected 'kahan_comps' to be empty or hold one tensor per param");
  TORCH_CHECK(kahan_comps.empty() || pt != at::kFloat, "torchext.", op,
              ": Kahan compensation is for float16 and bfloat16 params");
  TORCH_CHECK(kahan_comps.empty() || master_params.empty(), "torchext.", op,
              ": Kahan compensation and fp32 master weights exclude each other");
  for (size_t i = 0; i < kahan_comps.size(); ++i) {
    const at::Tensor& c = kahan_comps[i];
    const at::Tensor& p = params[i];
    const bool dense = p.is_non_overlapping_and_dense();
    TORCH_CHECK(c.scalar_type() == pt && c.sizes() == p.sizes() && (dense ? c.strides() == p.strides() : c.is_contiguous()) &&
                    c.device() == p.device(),
                "torchext.", op, ": kahan_comps[", i, "] must be ", pt, " with the shape, strides and device of params[",
                i, "]");
  }
  if (sr_state.has_value()) {
    TORCH_CHECK(sr_state->scalar_type() == at::kLong && sr_state->numel() == 2 && sr_state->is_contiguous() &&
                    sr_state->device() == params[0].device(),
                "torchext.", op, ": expected 'sr_state' to be a contiguous int64 tensor of 2 elements (seed, offset) on ",
                params[0].device(), ", but got ", sr_state->scalar_type(), " with ", sr_state->numel(),
                " elements on ", sr_state->device());
  }
}

inline void check_sgd_lowmem_step(const at::TensorList& params, const at::TensorList& grads,
                                  const at::TensorList& momentum_buffers, const at::TensorList& momentum_counts,
                                  const at::TensorList& master_params, bool use_momentum,
                                  const at::TensorList& momentum_buffer_scales, const at::TensorList& kahan_comps,
                                  const c10::optional<at::Tensor>& sr_state,
                                  const c10::optional<at::Tensor>& grad_scale,
                                  const c10::optional<at::Tensor>& found_inf,
                                  const c10::optional<at::Tensor>& lr_tensor) {
  const char* op = "sgd_lowmem_step_";
  check_optimizer_lists(op, params, grads, {{"master_params", &master_params, true}});
  check_sgd_state(op, params, momentum_buffers, momentum_counts, master_params, use_momentum);
  check_lowmem_state(op, params, {{"momentum_buffers", use_momentum ? &momentum_buffers : &kNoTensors, false}},
                     {{"momentum_buffer_scales", &momentum_buffer_scales, true}}, kahan_comps, master_params, sr_state);
  check_step_scalars(op, params[0].device(), grad_scale, found_inf, lr_tensor);
}

inline void check_adam_lowmem_step(const at::TensorList& params, const at::TensorList& grads,
                                   const at::TensorList& exp_avgs, const at::TensorList& exp_avg_sqs,
                                   const at::TensorList& max_exp_avg_sqs, const at::TensorList& state_steps,
                                   const at::TensorList& master_params, bool amsgrad,
                                   const at::TensorList& exp_avg_scales, const at::TensorList& exp_avg_sq_scales,
                                   const at::TensorList& kahan_comps, const c10::optional<at::Tensor>& sr_state,
                                   const c10::optional<at::Tensor>& grad_scale,
                                   const c10::optional<at::Tensor>& found_inf,
                                   const c10::optional<at::Tensor>& lr_tensor) {
  const char* op = "adam_lowmem_step_";
  check_optimizer_lists(op, params, grads, {{"master_params", &master_params, true}});
  check_adam_state(op, params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params, amsgrad);
  TORCH_CHECK(amsgrad || max_exp_avg_sqs.empty(), "torchext.", op, ": max_exp_avg_sqs must be empty without amsgrad");
  TORCH_CHECK(!amsgrad || exp_avgs[0].scalar_type() != at::kChar, "torchext.", op,
              ": amsgrad is not supported with int8 state");
  check_lowmem_state(op, params,
                     {{"exp_avgs", &exp_avgs, false}, {"exp_avg_sqs", &exp_avg_sqs, false},
                      {"max_exp_avg_sqs", &max_exp_avg_sqs, false}},
                     {{"exp_avg_scales", &exp_avg_scales, true}, {"exp_avg_sq_scales", &exp_avg_sq_scales, true}},
                     kahan_comps, master_params, sr_state);
  check_step_scalars(op, params[0].device(), grad_scale, found_inf, lr_tensor);
}

// f(T(), S()) for param type T (float, Half, BFloat16) and state storage S (float, BFloat16, T, int8).
template <typename F>
void dispatch_lowmem_types(at::ScalarType param, at::ScalarType state, const char* name, const F& f) {
  auto with_state = [&](auto t) {
    using T = decltype(t);
    switch (state) {
      case at::kFloat: return f(T(), float());
      case at::kBFloat16: return f(T(), c10::BFloat16());
      case at::kChar: return f(T(), int8_t());
      case at::kHalf: return f(T(), c10::Half());
      default: TORCH_CHECK(false, name, ": unsupported state dtype ", state);
    }
  };
  switch (param) {
    case at::kFloat: return with_state(float());
    case at::kBFloat16: return with_state(c10::BFloat16());
    case at::kHalf: return with_state(c10::Half());
    default: TORCH_CHECK(false, name, ": unsupported param dtype ", param);
  }
}

}  // namespace torchext
