"""Adam and AdamW, one fused kernel launch per device and dtype."""
import torch

from .. import _C, _distributed
from .._ops.optim import ADAM_LOWMEM_STEP_ARGS, ADAM_STEP_ARGS, step_args
from ._base import FusedOptimizer, validate_like_torch

_ops = torch.ops.torchext


def _to_scalar(x):
    return x.item() if isinstance(x, torch.Tensor) else x


class Adam(FusedOptimizer):
    """Drop-in for torch.optim.Adam (same arguments, defaults, equations and state_dict layout).

    `step` is a 0-dim float32 tensor; on CUDA it lives on the param's device (the kernel reads and
    bumps it there) and state_dict() reports it on the CPU unless capturable, as torch does.
    Extra keyword: master_weights (see torchext.optim.SGD); with it, exp_avg, exp_avg_sq and
    max_exp_avg_sq of float16/bfloat16 params are float32 too. foreach and fused are accepted and
    ignored: every step is fused. Complex params are updated as their real and imaginary parts, as
    torch does; sparse grads are refused with torch's error.
    """

    _name = "Adam"
    _op = _ops.adam_step_
    _eager_op = staticmethod(_C.adam_step_eager)
    _check_op = staticmethod(_C.check_adam_step_args)
    _buffer_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _lowmem_ops = (_ops.adam_lowmem_step_, _C.adam_lowmem_step_eager, _C.check_adam_lowmem_step_args)
    _sparse_error = "Adam does not support sparse gradients, please consider SparseAdam instead"  # torch's words

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, master_weights=False, stochastic_rounding=False,
                 kahan_summation=False, state_dtype=None, generator=None):
        # Whatever torch.optim.Adam refuses is refused here, with its exception and message.
        validate_like_torch(torch.optim.Adam, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                            maximize=maximize, capturable=capturable, differentiable=differentiable, fused=fused,
                            decoupled_weight_decay=decoupled_weight_decay)
        betas = (_to_scalar(betas[0]), _to_scalar(betas[1]))
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
                    "maximize": maximize, "foreach": foreach, "capturable": capturable,
                    "differentiable": differentiable, "fused": fused,
                    "decoupled_weight_decay": decoupled_weight_decay}
        super().__init__(params, defaults, differentiable=differentiable, fused=fused, foreach=foreach,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         kahan_summation=kahan_summation, state_dtype=state_dtype, generator=generator)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("fused", None)

    def _init_state(self, p, state, group, buffer_dtype):
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=buffer_dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=buffer_dtype, memory_format=torch.preserve_format)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=buffer_dtype, memory_format=torch.preserve_format)

    def _after_load(self, p, state):
        # The kernels keep `step` as a 0-dim float32 tensor on the param's device; a torch
        # (non-capturable) state_dict keeps CUDA params' steps on the CPU, older ones as numbers.
        step = state.get("step")
        if step is None:
            return
        dtensor = _distributed.DTensor
        if dtensor is not None and isinstance(step, dtensor):  # torch keeps `step` whole, even beside DTensors
            step = state["step"] = step.full_tensor()
        if not isinstance(step, torch.Tensor):
            state["step"] = torch.tensor(float(step), dtype=torch.float32, device=p.device)
        elif step.device != p.device or step.dtype != torch.float32 or step.dim() != 0:
            state["step"] = step.to(device=p.device, dtype=torch.float32).reshape(())

    def _export_entry(self, entry, group):
        step = entry.get("step")
        if isinstance(step, torch.Tensor) and step.device.type != "cpu" and not group.get("capturable", False):
            entry["step"] = step.to("cpu")

    def _step_call(self, group, params, grads, states, lr_tensor, grad_scale, found_inf):
        beta1, beta2 = group["betas"]
        amsgrad = bool(group["amsgrad"])
        return step_args(ADAM_STEP_ARGS, params=params, grads=grads, exp_avgs=[s["exp_avg"] for s in states],
                         exp_avg_sqs=[s["exp_avg_sq"] for s in states],
                         max_exp_avg_sqs=[s["max_exp_avg_sq"] for s in states] if amsgrad else [],
                         state_steps=[s["step"] for s in states], master_params=self._masters(group, params, states),
                         lr=0.0 if lr_tensor is not None else float(group["lr"]), beta1=float(_to_scalar(beta1)),
                         beta2=float(_to_scalar(beta2)), eps=float(group["eps"]),
                         weight_decay=float(_to_scalar(group["weight_decay"])), amsgrad=amsgrad,
                         maximize=bool(group["maximize"]), decoupled_weight_decay=bool(group["decoupled_weight_decay"]),
                         lr_tensor=lr_tensor, grad_scale=grad_scale, found_inf=found_inf)


    def _lowmem_call(self, group, params, grads, states, lr_tensor, grad_scale, found_inf):
        comps, sr = self._lowmem_extras(group, params, states)
        base = self._step_call(group, params, grads, states, lr_tensor, grad_scale, found_inf)
        return base + (self._scales(states, "exp_avg"), self._scales(states, "exp_avg_sq"), comps, sr)


class AdamW(Adam):
    """Drop-in for torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""

    _name = "AdamW"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 master_weights=False, stochastic_rounding=False, kahan_summation=False, state_dtype=None,
                 generator=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype, generator=generator)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
