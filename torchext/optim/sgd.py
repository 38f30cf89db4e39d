"""SGD with momentum / Nesterov / weight decay, one fused kernel launch per device and dtype."""
import torch
from torch.optim.sgd import sgd as _torch_sgd

from .. import _C
from .._ops.optim import SGD_LOWMEM_STEP_ARGS, SGD_STEP_ARGS, step_args
from ._base import FusedOptimizer, validate_like_torch

_ops = torch.ops.torchext


class SGD(FusedOptimizer):
    """Drop-in for torch.optim.SGD (same arguments, defaults, equations and state_dict layout).

    Low-memory keywords (the same on Adam and AdamW; torchext/optim/_lowmem.py): stochastic_rounding=True
    rounds each update of a float16/bfloat16 param stochastically (seeded from `generator`, else torch's
    default generator); kahan_summation=True keeps a compensation buffer (state 'kahan_comp') in the
    param dtype; state_dtype=torch.float32, torch.bfloat16 or "int8" (blockwise 8-bit codes) sets the
    momentum buffer's storage. torchext.optim.to_torch_state_dict turns such a state_dict into torch's.

    Extra keyword: master_weights=True keeps a float32 copy of every float16/bfloat16 param in
    state['master_param'], updates it and writes its rounding to the param; those params'
    momentum buffers are float32 too. state_dict() saves both, load_state_dict() restores them in
    float32 (a torch optimizer loading the state casts them to the param dtype). foreach and fused are
    accepted and ignored: every step is fused. Complex params are updated as their real and
    imaginary parts, as torch does. Sparse grads (nn.Embedding(sparse=True)) take torch's own SGD
    math, so they behave exactly as there, including its errors (no weight_decay with them).
    """

    _name = "SGD"
    _op = _ops.sgd_step_
    _eager_op = staticmethod(_C.sgd_step_eager)
    _check_op = staticmethod(_C.check_sgd_step_args)
    _buffer_keys = ("momentum_buffer",)
    _lowmem_ops = (_ops.sgd_lowmem_step_, _C.sgd_lowmem_step_eager, _C.check_sgd_lowmem_step_args)

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, master_weights=False,
                 stochastic_rounding=False, kahan_summation=False, state_dtype=None, generator=None):
        # Whatever torch.optim.SGD refuses is refused here, with its exception and message.
        validate_like_torch(torch.optim.SGD, lr, momentum, dampening, weight_decay, nesterov, maximize=maximize,
                            foreach=foreach, differentiable=differentiable, fused=fused)
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": maximize, "foreach": foreach,
                    "differentiable": differentiable, "fused": fused}
        super().__init__(params, defaults, differentiable=differentiable, fused=fused, foreach=foreach,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         kahan_summation=kahan_summation, state_dtype=state_dtype, generator=generator)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def _init_state(self, p, state, group, buffer_dtype):
        if group["momentum"] == 0:
            return
        buf = state.get("momentum_buffer")
        if buf is not None and buf.is_sparse:  # left by a step with a sparse grad
            state["momentum_buffer"] = buf.to_dense()
        if buf is None:
            # Zero-filled with a count of 0 rather than a clone of the grad, so that a step skipped
            # by GradScaler (decided on the device) leaves the next step still the first one.
            state["momentum_buffer"] = torch.zeros_like(p, dtype=buffer_dtype, memory_format=torch.preserve_format)
            state["momentum_count"] = torch.zeros((), dtype=torch.float32, device=p.device)
        elif "momentum_count" not in state:  # a buffer loaded from a state_dict carries history
            state["momentum_count"] = torch.ones((), dtype=torch.float32, device=p.device)

    def _check_sparse(self, group, p):
        # What torch's SGD does with a sparse grad, refused before anything is written.
        if group["weight_decay"] != 0:
            raise RuntimeError("add(sparse, dense) is not supported. Use add(dense, sparse) instead.")
        if self._keeps_master(group, p.dtype):
            raise NotImplementedError("torchext.optim.SGD: master_weights=True does not support sparse gradients")

    def _sparse_step(self, items, grad_scale, found_inf):
        """Params with sparse grads (e.g. from nn.Embedding(sparse=True)) take torch's own SGD math,
        one param at a time, so that they behave exactly as in torch (its momentum buffer of such a
        param is sparse as well); the fused kernels take dense grads. GradScaler's found_inf is read
        on the host here, as torch's non-fused optimizers do."""
        if found_inf is not None and bool(found_inf.item()):
            return
        for group, p, g in items:
            if grad_scale is not None:
                g = g / grad_scale.to(g.device)
            momentum = group["momentum"]
            state = self.state[p]
            bufs = [None]
            if momentum != 0 and float(state.get("momentum_count", 1)) != 0:
                bufs[0] = state.get("momentum_buffer")
            lr = group["lr"]
            _torch_sgd([p], [g], bufs, has_sparse_grad=True, foreach=False, fused=False,
                       weight_decay=0.0, momentum=momentum,
                       lr=float(lr) if isinstance(lr, torch.Tensor) else lr,
                       dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
            if momentum != 0:
                state["momentum_buffer"] = bufs[0]
                state["momentum_count"] = torch.ones((), dtype=torch.float32, device=p.device)

    def _export_entry(self, entry, group):
        count = entry.get("momentum_count")
        if count is not None and float(count) == 0.0:
            entry.pop("momentum_buffer", None)  # never stepped: torch would have no buffer either

    def _step_call(self, group, params, grads, states, lr_tensor, grad_scale, found_inf):
        use_momentum = group["momentum"] != 0
        bufs = [s["momentum_buffer"] for s in states] if use_momentum else []
        counts = [s["momentum_count"] for s in states] if use_momentum else []
        return step_args(SGD_STEP_ARGS, params=params, grads=grads, momentum_buffers=bufs, momentum_counts=counts,
                         master_params=self._masters(group, params, states),
                         lr=0.0 if lr_tensor is not None else float(group["lr"]),
                         momentum=float(group["momentum"]), dampening=float(group["dampening"]),
                         weight_decay=float(group["weight_decay"]), nesterov=bool(group["nesterov"]),
                         maximize=bool(group["maximize"]), lr_tensor=lr_tensor, grad_scale=grad_scale,
                         found_inf=found_inf)

    def _lowmem_call(self, group, params, grads, states, lr_tensor, grad_scale, found_inf):
        use_momentum = group["momentum"] != 0
        comps, sr = self._lowmem_extras(group, params, states)
        base = self._step_call(group, params, grads, states, lr_tensor, grad_scale, found_inf)
        return base + (self._scales(states, "momentum_buffer") if use_momentum else [], comps, sr)
