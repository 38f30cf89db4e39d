// The optimizer ops' argument lists, declared once. Every spelling of an optimizer op's signature is
// generated from these lists: its schema (csrc/ops.cpp), the C++ parameter lists of the CPU and CUDA
// entry points and of the Python-facing shims, and the dispatcher's typed<> signature. Python reads
// the names back from the registered schema (torchext/_ops/optim.py checks its argument tuples
// against torch.ops.torchext.<op>._schema at import), so a list edited here cannot disagree with
// any other spelling at run time: C++ fails to compile, Python fails to import.
//
// Each list is ARGS(FIRST, NEXT): FIRST(kind, name, alias) for the first argument, NEXT(...) for
// the others (a separator-free X-macro). `alias` is the schema's alias letter of a list written in
// place (`Tensor(a!)[]`); `_` where there is none. Kinds:
//   MUT_LIST  Tensor(alias!)[]  written in place        LIST   Tensor[]  read only
//   FLOAT     float (C++ double)                        BOOL   bool
//   OPT       Tensor?           an optional tensor      MUT_OPT  Tensor(alias!)?  one written in place
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

#define TORCHEXT_SGD_STEP_ARGS(FIRST, NEXT)                                                              \
  FIRST(MUT_LIST, params, a) NEXT(LIST, grads, _) NEXT(MUT_LIST, momentum_buffers, b)                     \
  NEXT(MUT_LIST, momentum_counts, c) NEXT(MUT_LIST, master_params, d) NEXT(FLOAT, lr, _)                  \
  NEXT(FLOAT, momentum, _) NEXT(FLOAT, dampening, _) NEXT(FLOAT, weight_decay, _) NEXT(BOOL, nesterov, _) \
  NEXT(BOOL, maximize, _) NEXT(OPT, lr_tensor, _) NEXT(OPT, grad_scale, _) NEXT(OPT, found_inf, _)

#define TORCHEXT_ADAM_STEP_ARGS(FIRST, NEXT)                                                             \
  FIRST(MUT_LIST, params, a) NEXT(LIST, grads, _) NEXT(MUT_LIST, exp_avgs, b)                             \
  NEXT(MUT_LIST, exp_avg_sqs, c) NEXT(MUT_LIST, max_exp_avg_sqs, d) NEXT(MUT_LIST, state_steps, e)        \
  NEXT(MUT_LIST, master_params, f) NEXT(FLOAT, lr, _) NEXT(FLOAT, beta1, _) NEXT(FLOAT, beta2, _)         \
  NEXT(FLOAT, eps, _) NEXT(FLOAT, weight_decay, _) NEXT(BOOL, amsgrad, _) NEXT(BOOL, maximize, _)         \
  NEXT(BOOL, decoupled_weight_decay, _) NEXT(OPT, lr_tensor, _) NEXT(OPT, grad_scale, _)                  \
  NEXT(OPT, found_inf, _)

// The low-memory steps (csrc/optim_lowmem.h) take the same arguments and then: the per-block scales
// of int8 state (empty for other state dtypes), the Kahan compensation buffers (empty: none) and
// the stochastic-rounding state, int64 (seed, launch offset) on the params' device (None: round to
// nearest).
#define TORCHEXT_SGD_LOWMEM_STEP_ARGS(FIRST, NEXT)                                                       \
  TORCHEXT_SGD_STEP_ARGS(FIRST, NEXT) NEXT(MUT_LIST, momentum_buffer_scales, e)                           \
  NEXT(MUT_LIST, kahan_comps, f) NEXT(MUT_OPT, sr_state, g)

#define TORCHEXT_ADAM_LOWMEM_STEP_ARGS(FIRST, NEXT)                                                      \
  TORCHEXT_ADAM_STEP_ARGS(FIRST, NEXT) NEXT(MUT_LIST, exp_avg_scales, g)                                  \
  NEXT(MUT_LIST, exp_avg_sq_scales, h) NEXT(MUT_LIST, kahan_comps, i) NEXT(MUT_OPT, sr_state, j)

// ---- the schema: a string literal, "Tensor(a!)[] params, Tensor[] grads, ..."
#define TORCHEXT_SCHEMA_MUT_LIST(alias) "Tensor(" #alias "!)[]"
#define TORCHEXT_SCHEMA_LIST(alias) "Tensor[]"
#define TORCHEXT_SCHEMA_FLOAT(alias) "float"
#define TORCHEXT_SCHEMA_BOOL(alias) "bool"
#define TORCHEXT_SCHEMA_OPT(alias) "Tensor?"
#define TORCHEXT_SCHEMA_MUT_OPT(alias) "Tensor(" #alias "!)?"
#define TORCHEXT_SCHEMA_FIRST(kind, name, alias) TORCHEXT_SCHEMA_##kind(alias) " " #name
#define TORCHEXT_SCHEMA_NEXT(kind, name, alias) ", " TORCHEXT_SCHEMA_FIRST(kind, name, alias)
// "op(args) -> ()"
#define TORCHEXT_OPTIM_SCHEMA(op, ARGS) #op "(" ARGS(TORCHEXT_SCHEMA_FIRST, TORCHEXT_SCHEMA_NEXT) ") -> ()"

// ---- kernel parameters, as the dispatcher passes them (entry points, typed<>)
#define TORCHEXT_KTYPE_MUT_LIST at::TensorList
#define TORCHEXT_KTYPE_LIST at::TensorList
#define TORCHEXT_KTYPE_FLOAT double
#define TORCHEXT_KTYPE_BOOL bool
#define TORCHEXT_KTYPE_OPT const c10::optional<at::Tensor>&
#define TORCHEXT_KTYPE_MUT_OPT const c10::optional<at::Tensor>&
#define TORCHEXT_KPARAM_FIRST(kind, name, alias) TORCHEXT_KTYPE_##kind name
#define TORCHEXT_KPARAM_NEXT(kind, name, alias) , TORCHEXT_KPARAM_FIRST(kind, name, alias)
#define TORCHEXT_KTYPE_FIRST(kind, name, alias) TORCHEXT_KTYPE_##kind
#define TORCHEXT_KTYPE_NEXT(kind, name, alias) , TORCHEXT_KTYPE_##kind
// void entry(ARGS): the parameter list of a kernel entry point
#define TORCHEXT_KERNEL_PARAMS(ARGS) ARGS(TORCHEXT_KPARAM_FIRST, TORCHEXT_KPARAM_NEXT)
// The function type the dispatcher's typed<>() takes.
#define TORCHEXT_KERNEL_SIGNATURE(ARGS) void(ARGS(TORCHEXT_KTYPE_FIRST, TORCHEXT_KTYPE_NEXT))

// ---- parameters of the pybind shims (lists arrive as std::vector, converted once)
#define TORCHEXT_PYTYPE_MUT_LIST const std::vector<at::Tensor>&
#define TORCHEXT_PYTYPE_LIST const std::vector<at::Tensor>&
#define TORCHEXT_PYTYPE_FLOAT double
#define TORCHEXT_PYTYPE_BOOL bool
#define TORCHEXT_PYTYPE_OPT const c10::optional<at::Tensor>&
#define TORCHEXT_PYTYPE_MUT_OPT const c10::optional<at::Tensor>&
#define TORCHEXT_PYPARAM_FIRST(kind, name, alias) TORCHEXT_PYTYPE_##kind name
#define TORCHEXT_PYPARAM_NEXT(kind, name, alias) , TORCHEXT_PYPARAM_FIRST(kind, name, alias)
#define TORCHEXT_SHIM_PARAMS(ARGS) ARGS(TORCHEXT_PYPARAM_FIRST, TORCHEXT_PYPARAM_NEXT)

// ---- the names, comma-separated: forwards every argument in order
#define TORCHEXT_NAME_FIRST(kind, name, alias) name
#define TORCHEXT_NAME_NEXT(kind, name, alias) , name
#define TORCHEXT_ARG_NAMES(ARGS) ARGS(TORCHEXT_NAME_FIRST, TORCHEXT_NAME_NEXT)
