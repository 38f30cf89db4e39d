"""What SGD and Adam share: gathering a step's work, validating it before anything is written,
GradScaler plumbing, fp32 master weights, DTensor params and torch-compatible state_dict handling."""
from collections import OrderedDict
from itertools import chain

import torch
from torch.optim import Optimizer

from .. import _distributed
from . import _lowmem

_HALF = (torch.float16, torch.bfloat16)
_COMPLEX = (torch.complex64, torch.complex128)
_SUPPORTED = (torch.float64, torch.float32) + _HALF + _COMPLEX

# Types of tensors that are certainly not DTensors: testing a list's types against them costs a
# fraction of isinstance(t, DTensor) per tensor, which matters for steps over thousands of params.
_PLAIN = frozenset((torch.Tensor, torch.nn.Parameter))

# State keys that exist only in torchext: hidden from state_dict() so torch reads ours unchanged.
_PRIVATE_KEYS = ("momentum_count",)


class FusedOptimizer(Optimizer):
    """Base of torchext's optimizers. Subclasses set `_name` and `_buffer_keys` (the per-param state
    tensors the update reads and writes) and implement `_init_state(p, state, group, buffer_dtype)`
    and `_step_call(group, params, grads, states, lr_tensor, grad_scale, found_inf)`, which returns the
    arguments of one launch of `_op` (the torch.ops op, traced by torch.compile), `_eager_op` (the
    same op called from C++, for eager steps) and `_check_op` (its argument checks alone);
    `_after_load(p, state)` may fix up state that load_state_dict brought in. DTensor params (FSDP2,
    tensor parallelism) are stepped through their local shards, their state kept as DTensors split
    as the param (see _local_shards)."""

    _name = "Optimizer"
    _buffer_keys = ()
    # GradScaler hands us grad_scale / found_inf instead of unscaling and syncing on the host. A
    # class attribute, so that a deepcopied or unpickled optimizer keeps it (torch's fused
    # optimizers set it on the instance, and their copies lose it: __getstate__ leaves it out).
    _step_supports_amp_scaling = True

    # The groups live in `_groups`, and `param_groups` is a property over it, so that torchext's own
    # zero_grad() and step() can reach them without dynamo's special handling of an optimizer's
    # `param_groups`: under torch.compile, reaching params through `optimizer.param_groups` marks
    # them as static graph attributes, and a Tensor.backward traced after that (dynamo's
    # trace_autograd_ops) no longer counts them as leaves. It accumulates no grads, and the step that
    # follows does nothing, silently. torch.optim's own zero_grad() avoids this by breaking the graph.
    @property
    def param_groups(self):
        return self._groups

    @param_groups.setter
    def param_groups(self, groups):
        self._groups = groups

    def __init__(self, params, defaults, *, differentiable, fused, foreach, master_weights,
                 stochastic_rounding=False, kahan_summation=False, state_dtype=None, generator=None):
        if differentiable:
            raise NotImplementedError(
                "torchext.optim.%s does not support differentiable=True; use torch.optim.%s for "
                "differentiating through the optimizer step" % (self._name, self._name))
        defaults["master_weights"] = bool(master_weights)
        # The low-memory options join the defaults only when set, so a default optimizer is torch's.
        defaults.update(_lowmem.options(stochastic_rounding, kahan_summation, state_dtype))
        # Stochastic rounding's seed, drawn from the default generator (or `generator`) once; the
        # offset per device lives on that device (see _sr_state).
        self._sr_seed = (int(torch.randint(0, 2**62, (), generator=generator)) if stochastic_rounding else None)
        self._sr_states = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        """torch.optim.Optimizer.add_param_group (same checks, defaults and duplicate warning). A
        param listed twice in one group is then kept once: torch's for-loop would update it twice
        per step and its fused kernels would race on it; ours update it once. (A step's kernels
        refuse a list holding one param twice.)"""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _lowmem.check_group(self._name, group)
            if group.get("stochastic_rounding"):
                if getattr(self, "_sr_seed", None) is None:
                    self._sr_seed = int(torch.randint(0, 2**62, ()))
                if getattr(self, "_sr_states", None) is None:
                    self._sr_states = {}
                for p in group["params"]:  # made here, not inside a compiled step
                    self._sr_state(p.device)
        except ValueError:
            self.param_groups.pop()
            raise
        params = group["params"]
        if len(set(params)) != len(params):
            first = {}
            for i, p in enumerate(params):
                first.setdefault(p, i)
            keep = sorted(first.values())
            group["params"] = [params[i] for i in keep]
            if "param_names" in group:  # named parameters: the names follow their params
                group["param_names"] = [group["param_names"][i] for i in keep]

    _sr_seed = None  # stochastic rounding's seed (None: off); pickles from before it had none
    _sr_states = None

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.__dict__.get("_sr_states") is None:
            self._sr_states = {}
        # torch's __setstate__ writes param_groups into the instance dict, under the property.
        if "param_groups" in self.__dict__:
            self._groups = self.__dict__.pop("param_groups")
        for group in self.param_groups:
            group.setdefault("master_weights", False)
        # A pickle from an older torch or torchext may hold state the kernels cannot take as it is
        # (Adam's `step` as a number): bring it to their layout, as load_state_dict does.
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    self._after_load(p, state)

    # ---------------------------------------------------------------- step
    @staticmethod
    def _keeps_master(group, dtype):
        """Whether params of `dtype` in `group` have fp32 master weights. Their buffers (moments,
        momentum buffer) are then float32 too, since a float16 second moment would underflow for
        gradients below about 5e-3; otherwise buffers have the param's dtype, as torch keeps them."""
        return bool(group["master_weights"]) and dtype in _HALF

    @torch.no_grad()
    def step(self, closure=None, *, grad_scale=None, found_inf=None):
        """One fused update of every param that has a grad. grad_scale / found_inf follow torch's
        fused optimizers (GradScaler sets them as attributes): grads are divided by grad_scale and
        nothing changes at all when found_inf is nonzero, without a host synchronisation.

        DTensor params (FSDP2, tensor parallelism) are updated through their local shards, in the
        same launches as plain tensors of their device and dtype (see _local_shards).

        The kernels validate every list (grads, state, counters) before writing anything; when a
        step needs several launches (groups, devices, dtypes), all of them are validated before
        the first one runs (in eager mode; under torch.compile each launch checks its own). A step
        that raises writes no param and no state value, and state it created for params seen for
        the first time is removed again."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        fresh = []  # params whose state this step creates
        sparse = []  # (group, param, grad) with a sparse grad, for an optimizer that takes them
        dtensor = _distributed.DTensor  # None until torch.distributed.tensor is imported: no DTensors then
        try:
            calls = []
            for gi, group in enumerate(self._groups):  # not param_groups: see there
                buckets = {}
                for p in group["params"]:
                    g = p.grad
                    if g is not None:
                        if g.is_sparse:
                            self._check_sparse(group, p)  # raises where torch's optimizer would
                            sparse.append((group, p, g))
                            continue
                        # A DTensor's device and dtype are its local shard's: shards of any mesh and
                        # placement join plain tensors in one launch, as the update is elementwise.
                        bucket = buckets.get((p.device, p.dtype))
                        if bucket is None:
                            bucket = buckets[(p.device, p.dtype)] = ([], [])
                        bucket[0].append(p)
                        bucket[1].append(g)
                for (device, dtype), (ps, grads) in buckets.items():
                    if dtype not in _SUPPORTED:
                        raise RuntimeError("torchext.optim.%s: params must be float64, float32, float16, bfloat16, "
                                           "complex64 or complex128, but param group %d has %s params"
                                           % (self._name, gi, dtype))
                    states = self._prepare_state(group, dtype, ps, fresh)
                    if dtensor is not None and not (_PLAIN.issuperset(map(type, ps))
                                                    and _PLAIN.issuperset(map(type, grads))):
                        if _lowmem.active(group):  # params made DTensors after construction
                            _lowmem.check_dtensors(self._name, group, ps)
                        ps, grads, states = self._local_shards(gi, group, ps, grads, states)
                    if dtype in _COMPLEX:
                        ps, grads, states = self._as_real(ps, grads, states)
                    lr = group["lr"]
                    lr_tensor = lr if isinstance(lr, torch.Tensor) else None
                    if lr_tensor is not None and lr_tensor.device != device and lr_tensor.device.type != "cpu":
                        lr_tensor = lr_tensor.to(device)
                    if _lowmem.active(group):
                        for sub in self._split_by_state(ps, grads, states):
                            calls.append((self._lowmem_ops,) + (self._lowmem_call(
                                group, *sub, lr_tensor, _on(grad_scale, device), _on(found_inf, device)),))
                    else:
                        calls.append((self._ops, self._step_call(group, ps, grads, states, lr_tensor,
                                                                 _on(grad_scale, device), _on(found_inf, device))))
            compiling = torch.compiler.is_compiling()
            if not compiling:
                if len(calls) == 1:
                    ops, args = calls.pop()
                    ops[1](*args)  # validates everything before its first write
                for ops, args in calls:
                    ops[2](*args)
        except Exception:
            for p in fresh:
                self.state.pop(p, None)
            raise
        # traced: each launch validates its own arguments
        for ops, args in calls:
            (ops[0] if compiling else ops[1])(*args)
        if sparse:
            self._sparse_step(sparse, grad_scale, found_inf)
        return loss

    _sparse_error = None  # torch's error for sparse grads, where it refuses them

    @property
    def _ops(self):
        return (self._op, self._eager_op, self._check_op)

    def _split_by_state(self, params, grads, states):
        """One launch's lists per state storage dtype (int8 state leaves small params in float32)."""
        by = {}
        for p, g, s in zip(params, grads, states):
            buf = next((s[k] for k in self._buffer_keys if isinstance(s.get(k), torch.Tensor)), None)
            key = buf.dtype if buf is not None else None
            lists = by.setdefault(key, ([], [], []))
            lists[0].append(p)
            lists[1].append(g)
            lists[2].append(s)
        return list(by.values())

    def _sr_state(self, device):
        """The stochastic-rounding state on `device`: int64 (seed, offset), the offset counting the
        launches the kernels made there (bumped on the device, not by a skipped step)."""
        st = self._sr_states.get(device)
        if st is None:
            st = self._sr_states[device] = torch.tensor([self._sr_seed, 0], dtype=torch.int64, device=device)
        return st

    def _lowmem_extras(self, group, params, states):
        """kahan_comps and sr_state of a low-memory launch."""
        half = params[0].dtype in _HALF
        comps = [s["kahan_comp"] for s in states] if group.get("kahan_summation") and half else []
        sr = self._sr_state(params[0].device) if group.get("stochastic_rounding") and half else None
        return comps, sr

    @staticmethod
    def _scales(states, key):
        return [s[key + "_scale"] for s in states] if states and key + "_scale" in states[0] else []

    def _check_sparse(self, group, p):
        raise RuntimeError(self._sparse_error)

    def _sparse_step(self, items, grad_scale, found_inf):
        raise NotImplementedError

    def _prepare_state(self, group, dtype, params, fresh):
        """The state dicts of params of one dtype in one group, creating what is missing (and the
        fp32 masters). When master weights are switched on or off for a param, its buffers move
        to the dtype the group now keeps them in."""
        master = self._keeps_master(group, dtype)
        want = torch.float32 if master else dtype
        state_of = self.state
        init = self._init_state
        states = []
        for p in params:
            state = state_of.get(p)
            if state is None:
                fresh.append(p)
                state = state_of[p] = {}
            if _lowmem.active(group):
                init(p, state, group, _lowmem.buffer_dtype(group, p, want))
                _lowmem.prepare(group, p, state, self._buffer_keys)
            else:
                init(p, state, group, want)
            if master:
                if "master_param" not in state:
                    state["master_param"] = p.detach().to(torch.float32, copy=True)
                    self._convert_buffers(state, want)
            elif "master_param" in state:  # switched off: the param carries on alone
                del state["master_param"]
                self._convert_buffers(state, want)
            if not state:  # like torch, a param needing no state gets no entry
                del state_of[p]
            states.append(state)
        return states

    def _local_shards(self, gi, group, params, grads, states):
        """The local shards of DTensor params, their grads and state, for the kernels, which update
        them in place and so the DTensors. An elementwise update of every shard is the update of the
        whole tensor when the param, its grad and each state tensor are split alike: the same mesh
        and placements, which this checks (before anything is written). Sharded, replicated and
        mixed placements all qualify; partial values (Partial) do not, as the update is not linear."""
        dtensor = _distributed.DTensor
        owned = ("master_param",) + self._buffer_keys  # state tensors shaped and split like the param
        local_params, local_grads, local_states = [], [], []
        for p, g, state in zip(params, grads, states):
            if not isinstance(p, dtensor):
                if isinstance(g, dtensor):
                    raise RuntimeError("torchext.optim.%s: %s is a plain tensor but its grad is a DTensor (%s on %s)"
                                       % (self._name, _describe(gi, group, p), g.placements, g.device_mesh))
                for k, v in state.items():
                    if isinstance(v, dtensor):
                        raise RuntimeError("torchext.optim.%s: %s is a plain tensor but its state '%s' is a DTensor"
                                           % (self._name, _describe(gi, group, p), k))
                local_params.append(p)
                local_grads.append(g)
                local_states.append(state)
                continue
            mesh, placements = p.device_mesh, p.placements
            if any(pl.is_partial() for pl in placements):
                raise RuntimeError("torchext.optim.%s: %s has placements %s; a param holding partial values cannot be "
                                   "updated shard by shard" % (self._name, _describe(gi, group, p), placements))
            if not isinstance(g, dtensor):
                raise RuntimeError("torchext.optim.%s: %s is a DTensor (%s on %s) but its grad is a plain tensor"
                                   % (self._name, _describe(gi, group, p), placements, mesh))
            if g.device_mesh != mesh or g.placements != placements:
                raise RuntimeError("torchext.optim.%s: the grad of %s has placements %s on %s, but the param has %s on "
                                   "%s; the grad must be split as its param is"
                                   % (self._name, _describe(gi, group, p), g.placements, g.device_mesh, placements,
                                      mesh))
            local = {}
            for k, v in state.items():
                if isinstance(v, dtensor):
                    if v.device_mesh != mesh or v.placements != placements:
                        raise RuntimeError("torchext.optim.%s: state '%s' of %s has placements %s on %s, but the param "
                                           "has %s on %s" % (self._name, k, _describe(gi, group, p), v.placements,
                                                             v.device_mesh, placements, mesh))
                    v = v.to_local()
                elif k in owned and isinstance(v, torch.Tensor):
                    raise RuntimeError("torchext.optim.%s: %s is a DTensor but its state '%s' is a plain tensor"
                                       % (self._name, _describe(gi, group, p), k))
                local[k] = v
            local_params.append(p.to_local())
            local_grads.append(g.to_local())
            local_states.append(local)
        return local_params, local_grads, local_states

    def _as_real(self, params, grads, states):
        """Complex params, their grads and buffers as real views ([..., 2], real and imaginary parts
        side by side), which the kernels update in place: torch's optimizers treat a complex param
        as its real and imaginary parts too (each part its own second moment), and keep the buffers
        complex in the state, as these stay."""
        real = torch.view_as_real
        keys = self._buffer_keys
        return ([real(p) for p in params], [real(g.resolve_conj()) for g in grads],
                [{k: (real(v) if k in keys else v) for k, v in s.items()} for s in states])

    def _convert_buffers(self, state, dtype):
        for key in self._buffer_keys:
            t = state.get(key)
            if isinstance(t, torch.Tensor) and t.dtype != dtype and t.dtype != torch.int8:
                state[key] = t.to(dtype)

    def _masters(self, group, params, states):
        """The fp32 masters of params (one dtype) if their group keeps master weights, else []."""
        if not self._keeps_master(group, params[0].dtype):
            return []
        return [s["master_param"] for s in states]

    def __repr__(self):
        # torch's printout, without our one extra group key while it is at its default.
        return super().__repr__().replace("    master_weights: False\n", "")

    def zero_grad(self, set_to_none=True):
        """torch.optim.Optimizer.zero_grad's semantics and profiler label, written so dynamo can trace
        it (torch's is excluded from tracing), which keeps a compiled training step a single graph.
        It reaches the params through `_groups`, not `param_groups` (see there): called before the
        forward pass of a compiled step, the latter would leave that step's backward without leaves."""
        if not hasattr(self, "_zero_grad_profile_name"):
            self._patch_step_function()
        with torch.autograd.profiler.record_function(self._zero_grad_profile_name):
            for group in self._groups:
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
    # torch.optim.Optimizer's state_dict() and load_state_dict() with torchext's conversions in the
    # places torch's hooks expect them: state_dict's post-hooks see (and may replace) the final,
    # torch-layout dict, and load_state_dict's pre-hooks run on the dict as given, before anything
    # is checked, and its post-hooks after everything is in place.
    @torch._disable_dynamo
    def state_dict(self):
        post_hooks = self._optimizer_state_dict_post_hooks
        self._optimizer_state_dict_post_hooks = OrderedDict()
        try:
            sd = super().state_dict()  # runs the pre-hooks
        finally:
            self._optimizer_state_dict_post_hooks = post_hooks
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
        # master_weights at its default is left out, so that the dict is key for key a torch
        # optimizer's: torch.distributed.checkpoint loads a checkpoint only when it holds every key of
        # the dict it fills (from state_dict()), and one written by torch.optim has no master_weights.
        # load_state_dict keeps a group's own setting when the key is absent.
        for group in sd["param_groups"]:
            if not group.get("master_weights", True):
                del group["master_weights"]
        if self._sr_seed is not None:
            sd[_lowmem.SR_KEY] = {"seed": self._sr_seed,
                                  "offsets": {str(d): int(t[1]) for d, t in self._sr_states.items()}}
        for hook in post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def _export_entry(self, entry, group):
        pass

    @torch._disable_dynamo
    def load_state_dict(self, state_dict):
        state_dict = state_dict.copy()  # shallow, as torch's
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        sr = state_dict.pop(_lowmem.SR_KEY, None)
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        # A group saved without master_weights (by torch.optim, or by torchext at its default) keeps
        # its own setting.
        saved_groups = [g if "master_weights" in g else dict(g, master_weights=own["master_weights"])
                        for g, own in zip(saved_groups, self.param_groups)]
        state_dict = dict(state_dict, param_groups=saved_groups)
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        # Validate every state tensor against its param before anything is replaced.
        dtensor = _distributed.DTensor
        float32_state = {}
        for idx, entry in state_dict["state"].items():
            p = id_map.get(idx)
            if p is None:
                continue
            for k, v in entry.items():
                if isinstance(v, torch.Tensor) and k != "step" and not k.endswith("_scale") and v.shape != p.shape:
                    raise ValueError("torchext.optim.%s.load_state_dict: state '%s' of param %s has shape %s, "
                                     "but the param has shape %s" % (self._name, k, idx, tuple(v.shape),
                                                                     tuple(p.shape)))
                if (dtensor is not None and isinstance(v, dtensor) and isinstance(p, dtensor)
                        and v.device_mesh != p.device_mesh):
                    raise ValueError("torchext.optim.%s.load_state_dict: state '%s' of param %s is on %s, but the "
                                     "param is on %s" % (self._name, k, idx, v.device_mesh, p.device_mesh))
            float32_state[idx] = {k: v for k, v in entry.items()
                                  if (k in ("master_param", "kahan_comp") + self._buffer_keys or k.endswith("_scale"))
                                  and isinstance(v, torch.Tensor)}
        pre_hooks, post_hooks = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = OrderedDict(), OrderedDict()
        try:
            super().load_state_dict(state_dict)  # the hooks have run (pre) or run below (post)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = pre_hooks, post_hooks
        # torch casts every state tensor to the param dtype. Master weights stay float32, and so do
        # the buffers of a group that keeps master weights (from the saved values, not the cast).
        groups = {p: g for g in self.param_groups for p in g["params"]}
        for idx, saved in float32_state.items():
            p = id_map[idx]
            state = self.state[p]
            for k, v in saved.items():
                if _lowmem.active(groups[p]):  # stored as saved: codes, scales, bfloat16 state
                    state[k] = v.to(device=p.device, copy=True)
                elif k == "master_param" or self._keeps_master(groups[p], p.dtype):
                    state[k] = v.to(device=p.device, dtype=torch.float32, copy=True)
        for p in id_map.values():
            if p in self.state:
                if dtensor is not None:
                    self._match_split(p, self.state[p])
                self._match_layout(p, self.state[p])
                self._after_load(p, self.state[p])
        if sr is not None:
            self._sr_seed = int(sr["seed"])
            self._sr_states = {}
            for d, off in sr.get("offsets", {}).items():
                self._sr_state(torch.device(d))[1] = int(off)
        for hook in post_hooks.values():
            hook(self)

    def _match_split(self, p, state):
        """Loaded buffers and master weights split over ranks as p is: a DTensor param's state as a
        DTensor with its mesh and placements (a whole tensor, which every rank then holds, is cut into
        the local shard; another placement is redistributed), a plain param's as a whole tensor. The
        kernels update the local shards of param and state side by side."""
        dtensor = _distributed.DTensor
        for k in ("master_param",) + self._buffer_keys:
            v = state.get(k)
            if not isinstance(v, torch.Tensor):
                continue
            if isinstance(p, dtensor):
                if not isinstance(v, dtensor):
                    from torch.distributed.tensor import distribute_tensor
                    state[k] = distribute_tensor(v, p.device_mesh, p.placements, src_data_rank=None)
                elif v.placements != p.placements:
                    state[k] = v.redistribute(p.device_mesh, p.placements)
            elif isinstance(v, dtensor):
                state[k] = v.full_tensor()

    def _match_layout(self, p, state):
        """Loaded buffers and master weights in the layout the kernels expect beside p, whatever layout
        they were saved in: that of torch.empty_like(p), p's strides when p is dense, else contiguous
        (for a DTensor, of its local shard)."""
        dtensor = _distributed.DTensor
        split = dtensor is not None and isinstance(p, dtensor)
        for k in ("master_param",) + self._buffer_keys:
            v = state.get(k)
            if not isinstance(v, torch.Tensor) or v.is_sparse:
                continue
            local = v.to_local() if split else v
            if local.numel() <= 1:
                continue
            like = torch.empty_like(p.to_local() if split else p, dtype=v.dtype, device=v.device)
            if local.stride() != like.stride():
                like.copy_(local)
                state[k] = dtensor.from_local(like, p.device_mesh, p.placements, run_check=False, shape=v.shape,
                                              stride=v.stride()) if split else like

    def _after_load(self, p, state):
        pass


def validate_like_torch(torch_cls, *args, **kwargs):
    """Runs torch_cls's constructor (torch.optim.SGD, Adam) on a stand-in param with the arguments a
    torchext optimizer was given, so that every value or flag combination torch refuses (foreach
    with a tensor lr, fused with foreach, a negative eps, ...) is refused with torch's exception and
    message, in the release installed."""
    torch_cls([torch.empty(0, requires_grad=True)], *args, **kwargs)


def _describe(gi, group, p):
    """A param in an error message: its name where the group has them, else its index."""
    i = next(i for i, q in enumerate(group["params"]) if q is p)
    names = group.get("param_names")
    return "param '%s' (group %d)" % (names[i], gi) if names else "params[%d] of param group %d" % (i, gi)


def _on(t, device):
    if t is None:
        return None
    if t.device != device:
        t = t.to(device, non_blocking=True)
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.reshape(())
