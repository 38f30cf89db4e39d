"""What SGD and Adam share: gathering a step's work, validating it before anything is written,
GradScaler plumbing, fp32 master weights and torch-compatible state_dict handling."""
from collections import defaultdict
from itertools import chain

import torch
from torch.optim import Optimizer

_HALF = (torch.float16, torch.bfloat16)
_SUPPORTED = (torch.float64, torch.float32) + _HALF

# State keys that exist only in torchext: hidden from state_dict() so torch reads ours unchanged.
_PRIVATE_KEYS = ("momentum_count",)


class FusedOptimizer(Optimizer):
    """Base of torchext's optimizers. Subclasses set `_name` and `_buffer_keys` (the per-param state
    tensors the update reads and writes), implement `_init_state(p, state, group)`,
    `_state_tensors(p, state, group)` (state key -> tensor to validate) and `_launch(group,
    device_params, lr_tensor, grad_scale, found_inf)`."""

    _name = "Optimizer"
    _buffer_keys = ()

    def __init__(self, params, defaults, *, differentiable, fused, foreach, master_weights):
        if differentiable:
            raise NotImplementedError(
                "torchext.optim.%s does not support differentiable=True; use torch.optim.%s for "
                "differentiating through the optimizer step" % (self._name, self._name))
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        defaults["master_weights"] = bool(master_weights)
        super().__init__(params, defaults)
        # GradScaler hands us grad_scale / found_inf instead of unscaling and syncing on the host.
        self._step_supports_amp_scaling = True

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("master_weights", False)

    # ---------------------------------------------------------------- step
    def _gather(self):
        """Params with grads per group, validated before any state is created or written."""
        work = []
        for gi, group in enumerate(self.param_groups):
            items = []
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse or g.layout != torch.strided:
                    raise RuntimeError(
                        "torchext.optim.%s does not support sparse gradients (param group %d)" % (self._name, gi))
                if p.dtype not in _SUPPORTED:
                    raise RuntimeError("torchext.optim.%s: params must be float64, float32, float16 or bfloat16, "
                                       "but got %s" % (self._name, p.dtype))
                if g.shape != p.shape:
                    raise RuntimeError("torchext.optim.%s: the grad of a param of shape %s has shape %s"
                                       % (self._name, tuple(p.shape), tuple(g.shape)))
                if g.dtype != p.dtype:
                    raise RuntimeError("torchext.optim.%s: the grad of a %s param has dtype %s"
                                       % (self._name, p.dtype, g.dtype))
                if g.device != p.device:
                    raise RuntimeError("torchext.optim.%s: the grad of a param on %s is on %s"
                                       % (self._name, p.device, g.device))
                if not _dense(p):
                    raise RuntimeError("torchext.optim.%s: params must be dense and non-overlapping (got a param "
                                       "with shape %s and strides %s)" % (self._name, tuple(p.shape), p.stride()))
                items.append(p)
            work.append((group, items))
        return work

    @staticmethod
    def _state_dtype(p, group):
        """The dtype of p's buffers (moments, momentum buffer): float32 beside master weights, where
        a float16 second moment would underflow for gradients below about 5e-3; else p's dtype,
        as torch keeps them."""
        return torch.float32 if group["master_weights"] and p.dtype in _HALF else p.dtype

    def _check_state(self, work):
        for group, items in work:
            for p in items:
                for name, t in self._state_tensors(p, self.state.get(p, {}), group).items():
                    want = torch.float32 if name == "master_param" else self._state_dtype(p, group)
                    if t.shape != p.shape or t.dtype != want or t.device != p.device:
                        raise RuntimeError(
                            "torchext.optim.%s: state '%s' of a %s param of shape %s on %s is %s of shape %s on %s"
                            % (self._name, name, p.dtype, tuple(p.shape), p.device, t.dtype, tuple(t.shape),
                               t.device))

    @torch.no_grad()
    def step(self, closure=None, *, grad_scale=None, found_inf=None):
        """One fused update of every param that has a grad. grad_scale / found_inf follow torch's
        fused optimizers (GradScaler sets them as attributes): grads are divided by grad_scale and
        nothing changes at all when found_inf is nonzero, without a host synchronisation."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        work = self._gather()
        for group, items in work:
            for p in items:
                state = self.state[p]
                self._init_state(p, state, group)
                if group["master_weights"] and p.dtype in _HALF and "master_param" not in state:
                    state["master_param"] = p.detach().to(torch.float32, copy=True)
                elif not group["master_weights"]:  # switched off: the param carries on alone
                    state.pop("master_param", None)
                # Buffers from a torch state_dict, or from before master_weights was switched on
                # or off, are converted to the dtype this group keeps them in.
                want = self._state_dtype(p, group)
                for key in self._buffer_keys:
                    t = state.get(key)
                    if isinstance(t, torch.Tensor) and t.dtype != want:
                        state[key] = t.to(want)
                if not state:  # like torch, a param needing no state gets no entry
                    del self.state[p]
        self._check_state(work)
        for group, items in work:
            buckets = defaultdict(list)
            for p in items:
                buckets[(p.device, p.dtype)].append(p)
            for (device, _), ps in buckets.items():
                lr = group["lr"]
                lr_tensor = lr if isinstance(lr, torch.Tensor) else None
                if lr_tensor is not None and lr_tensor.device != device and lr_tensor.device.type != "cpu":
                    lr_tensor = lr_tensor.to(device)
                gs = _on(grad_scale, device)
                fi = _on(found_inf, device)
                self._launch(group, ps, lr_tensor, gs, fi)
        return loss

    def _masters(self, params):
        masters = [self.state.get(p, {}).get("master_param") for p in params]
        if all(m is None for m in masters):
            return []
        if any(m is None for m in masters):  # e.g. a group switched master_weights on after a load
            raise RuntimeError("torchext.optim.%s: master_param missing for some params" % self._name)
        return masters

    @staticmethod
    def _grads(params):
        # The kernels walk grads in the param's memory order; a grad laid out differently is copied.
        out = []
        for p in params:
            g = p.grad
            if g.stride() != p.stride() and p.numel() > 1:
                g = torch.empty_like(p).copy_(g)
            out.append(g)
        return out

    def __repr__(self):
        # torch's printout, without our one extra group key while it is at its default.
        return super().__repr__().replace("    master_weights: False\n", "")

    def zero_grad(self, set_to_none=True):
        """torch.optim.Optimizer.zero_grad's semantics, written so dynamo can trace it (torch's is
        excluded from tracing), which keeps a compiled training step a single graph."""
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if g.grad_fn is not None:
                    g.detach_()
                else:
                    g.requires_grad_(False)
                g.zero_()

    # ---------------------------------------------------------------- state_dict
    def state_dict(self):
        sd = super().state_dict()
        groups = {i: g for g in sd["param_groups"] for i in g["params"]}
        state = {}
        for idx, entry in sd["state"].items():
            entry = dict(entry)  # torch's packed state shares the live per-param dicts
            self._export_entry(entry, groups.get(idx, {}))
            for k in _PRIVATE_KEYS:
                entry.pop(k, None)
            if entry:
                state[idx] = entry
        sd["state"] = state
        return sd

    def _export_entry(self, entry, group):
        pass

    def load_state_dict(self, state_dict):
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        # A torch optimizer's groups have no master_weights: each group keeps its own setting.
        saved_groups = [g if "master_weights" in g else dict(g, master_weights=own["master_weights"])
                        for g, own in zip(saved_groups, self.param_groups)]
        state_dict = dict(state_dict, param_groups=saved_groups)
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        # Validate every state tensor against its param before anything is replaced.
        float32_state = {}
        for idx, entry in state_dict["state"].items():
            p = id_map.get(idx)
            if p is None:
                continue
            for k, v in entry.items():
                if isinstance(v, torch.Tensor) and k != "step" and v.shape != p.shape:
                    raise ValueError("torchext.optim.%s.load_state_dict: state '%s' of param %s has shape %s, "
                                     "but the param has shape %s" % (self._name, k, idx, tuple(v.shape),
                                                                     tuple(p.shape)))
            float32_state[idx] = {k: v for k, v in entry.items()
                                  if k in ("master_param",) + self._buffer_keys and isinstance(v, torch.Tensor)}
        super().load_state_dict(state_dict)
        # torch casts every state tensor to the param dtype. Master weights stay float32, and so do
        # the buffers of a group that keeps master weights (from the saved values, not the cast).
        groups = {p: g for g in self.param_groups for p in g["params"]}
        for idx, saved in float32_state.items():
            p = id_map[idx]
            state = self.state[p]
            for k, v in saved.items():
                if k == "master_param" or self._state_dtype(p, groups[p]) == torch.float32:
                    state[k] = v.to(device=p.device, dtype=torch.float32, copy=True)


def _dense(t):
    return t.is_contiguous() or _ops_dense(t)


def _ops_dense(t):
    from .._ops._util import is_non_overlapping_and_dense
    return is_non_overlapping_and_dense(t)


def _on(t, device):
    if t is None:
        return None
    if t.device != device:
        t = t.to(device, non_blocking=True)
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.reshape(())
