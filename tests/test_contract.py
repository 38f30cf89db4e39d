"""torch's contract for every torch.optim.Optimizer and torch.nn.Module method torchext overrides or
wraps, one test per contract point, each run on torch's class and on torchext's side by side.

Optimizers (SGD, Adam, AdamW): where the step pre/post hooks and the global optimizer hooks run
and what they may change (validation of the grads comes after the pre-hooks); state_dict and
load_state_dict pre/post hooks, their order and what they see; the profiler labels of step and
zero_grad; the class-level step patch; LR-scheduler bookkeeping (_opt_called and the warning for a
scheduler stepped first), with GradScaler skipping a step; __repr__; add_param_group's defaults and
errors; deepcopy and pickling; __setstate__ of a pickle from an older release; zero_grad; the
per-param state keys.

Modules (Linear, LinearReLU, ReLU, MSELoss): forward and backward hooks, state_dict and
load_state_dict with prefixes, strict=False, missing / unexpected keys and their errors,
extra_repr, reset_parameters, in-place ReLU, legacy MSELoss arguments, pickling and __setstate__
of a pickle from an older release.

Where torchext differs on purpose (README, "Where results differ from torch's by design"), the
test asserts the documented difference.
"""
import copy
import pickle
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import StepLR
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import torchext

LIBS = ["torch", "torchext"]
NAMES = ["SGD", "Adam", "AdamW"]
KWARGS = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.1), "AdamW": dict(lr=0.1)}
# State keys only torchext keeps per param (never in state_dict()): SGD's count of momentum steps,
# which lets a GradScaler-skipped first step stay the first without a host sync.
PRIVATE_STATE = {"momentum_count"}


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))]


def _optimizer(lib, name, params, **kw):
    kw = dict(KWARGS[name], **kw)
    if lib == "torch":
        kw.setdefault("foreach", False)
        return getattr(torch.optim, name)(params, **kw)
    return getattr(torchext.optim, name)(params, **kw)


def _fresh_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _train(opt, params, steps, seed=1):
    for i in range(steps):
        _fresh_grads(params, seed + i)
        opt.step()


# ------------------------------------------------------------------------------------- step hooks

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_step_hooks_run_where_torch_runs_them(lib, name):
    # Global pre-hooks, then the optimizer's, the step itself (here its closure), the optimizer's
    # post-hooks, then the global ones; every hook gets (optimizer, args, kwargs) with self in args.
    params = _params()
    opt = _optimizer(lib, name, params)
    calls = []

    def closure():
        calls.append("step")
        _fresh_grads(params, 3)
        return torch.tensor(1.0)

    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global_pre", o is opt, len(a)))),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global_post", o is opt, len(a)))),
               opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", a[0] is opt, len(a)))),
               opt.register_step_post_hook(lambda o, a, k: calls.append(("post", a[0] is opt, len(a))))]
    try:
        opt.step(closure)
    finally:
        for h in handles:
            h.remove()
    assert calls == [("global_pre", True, 2), ("pre", True, 2), "step", ("post", True, 2), ("global_post", True, 2)]
    calls.clear()
    opt.step(closure)
    assert calls == ["step"]  # removed hooks stay removed


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_step_pre_hook_can_replace_the_arguments(lib, name):
    # A pre-hook returning (args, kwargs) changes what step() receives: here it passes a closure,
    # whose loss step() returns. Anything else it returns is refused with torch's RuntimeError.
    params = _params()
    opt = _optimizer(lib, name, params)
    before = [p.detach().clone() for p in params]

    def closure():
        _fresh_grads(params, 5)
        return torch.tensor(42.0)

    handle = opt.register_step_pre_hook(lambda o, args, kwargs: ((args[0], closure), {}))
    assert opt.step().item() == 42.0
    assert all(not torch.equal(b, p) for b, p in zip(before, params))
    handle.remove()
    opt.register_step_pre_hook(lambda o, args, kwargs: 5)
    with pytest.raises(RuntimeError, match="must return None or a tuple of"):
        opt.step()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_step_checks_the_grads_after_the_pre_hooks(lib, name):
    # The grads are looked at only once the pre-hooks have run: a hook may supply them, or replace
    # one that the step would refuse (here a grad of the wrong shape, set through .data).
    params = _params()
    opt = _optimizer(lib, name, params)
    before = [p.detach().clone() for p in params]
    opt.register_step_pre_hook(lambda o, a, k: _fresh_grads(params, 7))
    opt.step()  # no grads when step() was called
    assert all(not torch.equal(b, p) for b, p in zip(before, params))
    params[0].grad.data = torch.randn(params[0].numel() + 1, dtype=params[0].dtype)
    opt.step()
    assert params[0].grad.shape == params[0].shape


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_step_post_hooks_see_the_updated_params(lib, name):
    params = _params()
    opt = _optimizer(lib, name, params)
    before = params[0].detach().clone()
    seen = []
    opt.register_step_post_hook(lambda o, a, k: seen.append(params[0].detach().clone()))
    _train(opt, params, 1)
    assert len(seen) == 1 and not torch.equal(seen[0], before) and torch.equal(seen[0], params[0].detach())


# --------------------------------------------------------------------- profiler labels and patching

def _profiled_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("Optimizer.")]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_profiler_labels_are_torchs(lib, name):
    # torch's labels, once per call: the class-level step patch (_patch_step_function) wraps the
    # class's step once however many optimizers are made or re-patched.
    params = _params()
    opt = _optimizer(lib, name, params)
    _optimizer(lib, name, _params(1))._patch_step_function()
    opt._patch_step_function()
    step = type(opt).step
    assert step.hooked is True and not hasattr(step.__wrapped__, "hooked")

    def two_steps():
        for i in range(2):
            _fresh_grads(params, i)
            opt.step()
            opt.zero_grad()

    labels = ["Optimizer.step#%s.step" % name, "Optimizer.zero_grad#%s.zero_grad" % name]
    assert _profiled_names(two_steps) == labels * 2


# ------------------------------------------------------------------------------ state_dict hooks

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_state_dict_hooks_run_in_order_and_see_torchs_layout(lib, name):
    params = _params()
    opt = _optimizer(lib, name, params)
    _train(opt, params, 2)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
    # A pre-hook runs before anything is packed: its edit of a group shows in the result.
    opt.register_state_dict_pre_hook(lambda o: (calls.append("pre_first"), o.param_groups[0].update(lr=0.125)),
                                     prepend=True)

    def record(o, sd):
        # What a post-hook gets: torch's layout, integer ids, no private state.
        calls.append(("post", sorted(sd["state"]), sorted(sd["state"][0])))

    def replace(o, sd):
        calls.append("replace")
        return dict(sd, extra="from the hook")

    opt.register_state_dict_post_hook(record)
    opt.register_state_dict_post_hook(replace)
    sd = opt.state_dict()
    keys = sorted({"SGD": ["momentum_buffer"]}.get(name, ["exp_avg", "exp_avg_sq", "step"]))
    assert calls == ["pre_first", "pre", ("post", [0, 1], keys), "replace"]
    assert sd["extra"] == "from the hook" and sd["param_groups"][0]["lr"] == 0.125


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_load_state_dict_hooks_run_before_the_checks_and_after_the_load(lib, name):
    params = _params()
    src = _optimizer(lib, name, params)
    _train(src, params, 2)
    saved = src.state_dict()
    dst = _optimizer(lib, name, _params(3))
    calls = []

    def fix(o, sd):
        # Gets a shallow copy of the caller's dict; returns the one to load, which is checked only
        # now: the dict passed in has one param group too many.
        calls.append(("fix", sd is broken))
        return dict(sd, param_groups=[dict(sd["param_groups"][0], lr=0.25)])

    def post(o):
        calls.append(("post", o.param_groups[0]["lr"], sorted(o.state[o.param_groups[0]["params"][0]])))

    dst.register_load_state_dict_pre_hook(lambda o, sd: calls.append("pre"))
    dst.register_load_state_dict_pre_hook(fix, prepend=True)
    dst.register_load_state_dict_post_hook(post)
    dst.register_load_state_dict_post_hook(lambda o: calls.append("post_first"), prepend=True)
    broken = dict(saved, param_groups=saved["param_groups"] * 2)
    dst.load_state_dict(broken)
    keys = sorted({"SGD": ["momentum_buffer"]}.get(name, ["exp_avg", "exp_avg_sq", "step"]))
    assert calls == [("fix", False), "pre", "post_first", ("post", 0.25, keys)]
    assert len(broken["param_groups"]) == 2  # the caller's dict is left as it was
    with pytest.raises(ValueError, match="loaded state dict has a different number of parameter groups"):
        _optimizer(lib, name, _params(3)).load_state_dict(broken)


# ------------------------------------------------------------------------------ LR schedulers

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_lr_scheduler_bookkeeping_is_torchs(lib, name):
    # A scheduler wraps the instance's step to set _opt_called, and warns when it is stepped
    # before the optimizer ever was.
    params = _params()
    opt = _optimizer(lib, name, params)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    assert opt.step._wrapped_by_lr_sched and not getattr(opt, "_opt_called", False)
    with pytest.warns(UserWarning, match=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"):
        sched.step()

    opt = _optimizer(lib, name, params)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            _train(opt, params, 1)
            sched.step()
    assert opt._opt_called is True
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)
    assert sched.state_dict()["_step_count"] == 4


@pytest.mark.parametrize("lib", ["torch", "torch_fused", "torchext"])
def test_grad_scaler_skipped_first_step_and_the_scheduler(lib):
    # GradScaler leaves out the optimizer.step() call of an overflowing step for torch's
    # for-loop optimizers, so a scheduler stepped after it warns that the optimizer was never
    # stepped. Optimizers that take grad_scale / found_inf (torch's fused ones, all of torchext's)
    # get the call and skip on the device: no warning. torchext documents it as torch's fused do.
    p = torch.nn.Parameter(torch.randn(4))
    opt = {"torch": lambda: torch.optim.Adam([p], foreach=False),
           "torch_fused": lambda: torch.optim.Adam([p], fused=True),
           "torchext": lambda: torchext.optim.Adam([p])}[lib]()
    sched = StepLR(opt, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    scaler.scale((p * 1e3).sum()).backward()  # overflows at this scale
    before = p.detach().clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaler.step(opt)
        scaler.update()
        sched.step()
    warned = any("before `optimizer.step()`" in str(w.message) for w in caught)
    assert warned == (lib == "torch")
    assert torch.equal(p.detach(), before)  # skipped either way
    assert scaler.get_scale() == 2.0 ** 126


# ----------------------------------------------------------------------- repr, add_param_group

@pytest.mark.parametrize("name", NAMES)
def test_repr_is_torchs(name):
    a, b = _params(), _params()
    extra = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))
    ref = getattr(torch.optim, name)([{"params": a}, {"params": [extra], "lr": 0.5}], lr=0.01)
    ours = getattr(torchext.optim, name)([{"params": b}, {"params": [extra.detach().clone().requires_grad_()],
                                                          "lr": 0.5}], lr=0.01)
    assert repr(ours) == repr(ref)
    # master_weights (torchext's one extra group key) is printed only when switched on, in its
    # sorted place in its group.
    ours.param_groups[1]["master_weights"] = True
    group1 = repr(ours).split("Parameter Group 1\n")[1]
    assert "    lr: 0.5\n    master_weights: True\n    maximize:" in group1
    assert repr(ours).replace("    master_weights: True\n", "") == repr(ref)


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_fills_defaults_and_refuses_like_torch(name):
    opts = {lib: _optimizer(lib, name, _params()) for lib in LIBS}
    for lib, opt in opts.items():
        p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
        opt.add_param_group({"params": p, "lr": 0.5})  # a lone tensor becomes a list
        group = opt.param_groups[-1]
        assert group["params"] == [p] and group["lr"] == 0.5
    groups = {lib: {k: v for k, v in opt.param_groups[-1].items() if k != "params"} for lib, opt in opts.items()}
    assert groups["torchext"].pop("master_weights") is False
    assert groups["torchext"] == dict(groups["torch"], foreach=None)

    shared = torch.nn.Parameter(torch.randn(2))
    bad = [7, {"params": {shared}}, {"params": [torch.randn(2, requires_grad=True) * 2]},
           {"params": [("w", torch.nn.Parameter(torch.randn(2))), torch.nn.Parameter(torch.randn(2))]},
           {"params": [("w", torch.nn.Parameter(torch.randn(2)))]}, {"params": [3.0]}]
    for group in bad:
        raised = {}
        for lib, opt in opts.items():
            with pytest.raises((TypeError, ValueError)) as info:
                opt.add_param_group(copy.copy(group) if isinstance(group, dict) else group)
            raised[lib] = (type(info.value), str(info.value))
        assert raised["torchext"] == raised["torch"], group
    for opt in opts.values():
        opt.add_param_group({"params": [shared]})
        with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
            opt.add_param_group({"params": [shared]})
        assert len(opt.param_groups) == 3  # the refused groups were not added


# ------------------------------------------------------------------ deepcopy, pickle, __setstate__

@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_copies_continue_exactly_like_the_original(lib, name, how):
    # A copy carries defaults, groups and state (its own params), drops the hooks (torch's
    # __getstate__ leaves them out) and keeps the class's GradScaler protocol.
    params = _params()
    opt = _optimizer(lib, name, params)
    _train(opt, params, 2)
    opt.register_step_pre_hook(lambda o, a, k: None)
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    assert all(q is not p and torch.equal(q, p) for p, q in zip(params, twin_params))
    assert {k for k in vars(twin) if not k.startswith("_")} == {k for k in vars(opt) if not k.startswith("_")}
    assert not twin._optimizer_step_pre_hooks
    assert getattr(twin, "_step_supports_amp_scaling", False) == (lib == "torchext")
    assert [sorted(s) for s in twin.state.values()] == [sorted(s) for s in opt.state.values()]
    for i in range(3):
        _fresh_grads(params, 10 + i)
        _fresh_grads(twin_params, 10 + i)
        opt.step()
        twin.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twin_params))
    assert twin.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


_OLD_GROUPS = {  # the group keys of releases before maximize / foreach / capturable / differentiable / fused
    "SGD": dict(lr=0.1, momentum=0.9, dampening=0, weight_decay=0, nesterov=False),
    "Adam": dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False),
    "AdamW": dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
}


def _old_state(name, p):
    if name == "SGD":
        return {"momentum_buffer": torch.full_like(p, 0.5)}
    # `step` as a plain number, as releases before 1.12 kept it.
    return {"step": 3, "exp_avg": torch.full_like(p, 0.1), "exp_avg_sq": torch.full_like(p, 0.01)}


@pytest.mark.parametrize("name", NAMES)
def test_setstate_of_an_older_pickle_is_torchs(name):
    # What pickle.load does with an optimizer pickled by an older release: a bare instance, then
    # __setstate__ with that release's dict. The missing group keys get torch's defaults, and the
    # next steps are torch's.
    results = {}
    for lib in LIBS:
        cls = getattr(torch.optim if lib == "torch" else torchext.optim, name)
        p = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64))
        opt = cls.__new__(cls)
        opt.__setstate__({"defaults": dict(_OLD_GROUPS[name]), "state": {p: _old_state(name, p)},
                          "param_groups": [dict(_OLD_GROUPS[name], params=[p])]})
        for i in range(2):
            p.grad = torch.linspace(0.5, -0.2 * i, 6, dtype=torch.float64)
            opt.step()
        results[lib] = (p.detach(), opt.state_dict(), {k: v for k, v in opt.param_groups[0].items() if k != "params"},
                        opt.defaults, repr(opt))
    p_ref, sd_ref, group_ref, defaults_ref, repr_ref = results["torch"]
    p, sd, group, defaults, rep = results["torchext"]
    torch.testing.assert_close(p, p_ref, atol=1e-12, rtol=1e-12)
    assert group.pop("master_weights") is False and group == group_ref
    assert defaults == defaults_ref and rep == repr_ref
    assert sd["state"].keys() == sd_ref["state"].keys()
    for k, v in sd_ref["state"][0].items():
        torch.testing.assert_close(sd["state"][0][k], v, atol=1e-12, rtol=1e-12)


# ------------------------------------------------------------------------------- zero_grad, state

@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")  # the cycle is the point
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lib", LIBS)
def test_zero_grad_is_torchs(lib, name):
    params = _params()
    opt = _optimizer(lib, name, params)
    # A grad with history (backward with create_graph=True) is detached, in place.
    (params[0].square().sum() + params[1].sum()).backward(create_graph=True)
    grads = [p.grad for p in params]
    assert grads[0].grad_fn is not None
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g and g.grad_fn is None and not g.requires_grad and not g.any() for p, g in zip(params, grads))
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    opt.zero_grad()  # nothing to do


@pytest.mark.parametrize("name", NAMES)
def test_per_param_state_keys_are_torchs(name):
    # The live state torch keeps per param, plus torchext's documented private keys.
    keys = {}
    for lib in LIBS:
        params = _params()
        opt = _optimizer(lib, name, params)
        _train(opt, params, 2)
        keys[lib] = [set(opt.state[p]) for p in params]
    assert [k - PRIVATE_STATE for k in keys["torchext"]] == keys["torch"]
    assert all(k - keys["torch"][0] <= PRIVATE_STATE for k in keys["torchext"])


# ====================================================================================== modules

class _TorchLinearReLU(torch.nn.Linear):
    """What LinearReLU replaces, written with torch's own pieces: torch.nn.Linear's parameters and
    state_dict, then a ReLU."""

    def forward(self, input):
        return torch.relu(super().forward(input))


def _module(lib, kind, **kw):
    nn = torch.nn if lib == "torch" else torchext.nn
    if kind == "Linear":
        return nn.Linear(5, 3, dtype=torch.float64, **kw)
    if kind == "LinearReLU":
        return (_TorchLinearReLU if lib == "torch" else torchext.nn.LinearReLU)(5, 3, dtype=torch.float64, **kw)
    if kind == "ReLU":
        return nn.ReLU(**kw)
    return nn.MSELoss(**kw)


def _pair(kind, **kw):
    torch.manual_seed(0)
    ref = _module("torch", kind, **kw)
    ours = _module("torchext", kind, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _inputs(kind):
    g = torch.Generator().manual_seed(4)
    if kind == "MSELoss":
        return [torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True),
                torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)]
    return [torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)]


def _clone(tensors):
    return [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]


KINDS = ["Linear", "LinearReLU", "ReLU", "MSELoss"]
WITH_PARAMS = ["Linear", "LinearReLU"]


@pytest.mark.parametrize("kind", KINDS)
def test_module_is_a_drop_in_of_torchs_class(kind):
    # isinstance checks written for torch's class hold for torchext's.
    ref, ours = _pair(kind)
    assert isinstance(ours, torch.nn.Linear if kind == "LinearReLU" else type(ref))


# Inputs each forward refuses (after the pre-hook above doubles them).
_BAD_INPUTS = {"Linear": [torch.randn(2, 7)], "LinearReLU": [torch.randn(2, 7)], "ReLU": [3],
               "MSELoss": [torch.randn(2, 7), torch.randn(3, 7)]}


@pytest.mark.filterwarnings("ignore:Using a target size")  # the MSELoss inputs meant to fail
@pytest.mark.parametrize("kind", KINDS)
def test_forward_hooks_are_torchs(kind):
    # Pre-hooks (with kwargs) may replace the input, forward hooks the output; always_call hooks
    # run even when the forward raises.
    results = {}
    for lib, module in zip(LIBS, _pair(kind)):
        calls = []

        def pre(m, args, kwargs):
            calls.append(("pre", sorted(kwargs)))
            return tuple(a * 2 for a in args), kwargs

        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(lambda m, args, out: (calls.append("hook"), out + 1)[1])
        module.register_forward_hook(lambda m, args, out: calls.append("always"), always_call=True)
        out = module(*_inputs(kind))
        with pytest.raises(Exception) as err:  # the forward raises
            module(*_BAD_INPUTS[kind])
        results[lib] = out, calls, type(err.value)
    (out_ref, calls_ref, err_ref), (out, calls, err) = results["torch"], results["torchext"]
    torch.testing.assert_close(out, out_ref, atol=1e-12, rtol=1e-12)
    assert calls == calls_ref and calls_ref[:3] == [("pre", []), "hook", "always"] and calls_ref[-1] == "always"
    assert err is err_ref


@pytest.mark.parametrize("kind", KINDS)
def test_backward_hooks_are_torchs(kind):
    results = {}
    for lib, module in zip(LIBS, _pair(kind)):
        calls = []
        module.register_full_backward_pre_hook(lambda m, grad_out: calls.append(("pre", [g.clone() for g in grad_out])))
        module.register_full_backward_hook(lambda m, grad_in, grad_out: calls.append(
            ("hook", [None if g is None else g.clone() for g in grad_in], [g.clone() for g in grad_out])))
        inputs = _inputs(kind)
        out = module(*inputs)
        out.backward(torch.ones_like(out) * 0.5)
        results[lib] = calls, [t.grad for t in inputs] + [p.grad for p in module.parameters()]
    (calls_ref, grads_ref), (calls, grads) = results["torch"], results["torchext"]
    assert [c[0] for c in calls] == [c[0] for c in calls_ref] == ["pre", "hook"]
    torch.testing.assert_close([c[1:] for c in calls], [c[1:] for c in calls_ref], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grads, grads_ref, atol=1e-12, rtol=1e-12)


def test_inplace_relu_is_torchs():
    # In place: the input object comes back, bumped once; a full backward hook refuses it.
    for lib in LIBS:
        relu = _module(lib, "ReLU", inplace=True)
        x = torch.randn(6)
        version = x._version
        assert relu(x) is x and x._version == version + 1 and (x >= 0).all()
        relu.register_full_backward_hook(lambda *a: None)
        with pytest.raises(RuntimeError, match="BackwardHookFunction is a view and is being modified inplace"):
            relu(torch.randn(3, requires_grad=True) * 1)


@pytest.mark.parametrize("kind", WITH_PARAMS)
def test_state_dict_and_loading_with_prefixes_are_torchs(kind):
    # Inside a parent (keys with a prefix): the keys, the hooks' arguments, strict=False's
    # missing / unexpected keys, and strict=True's and a shape mismatch's errors.
    results = {}
    for lib in LIBS:
        torch.manual_seed(0)
        parent = torch.nn.Sequential()
        parent.add_module("block", _module(lib, kind))
        calls = []
        child = parent.block
        child.register_state_dict_post_hook(lambda m, sd, prefix, local: calls.append(("sd_post", prefix, sorted(sd))))
        child.register_load_state_dict_pre_hook(lambda m, sd, prefix, *rest: calls.append(("load_pre", prefix)))
        child.register_load_state_dict_post_hook(lambda m, keys: calls.append(
            ("load_post", sorted(keys.missing_keys), sorted(keys.unexpected_keys))))
        sd = parent.state_dict()
        partial = {"block.weight": torch.zeros(3, 5, dtype=torch.float64), "block.scale": torch.ones(1)}
        keys = parent.load_state_dict(partial, strict=False)
        errors = []
        for bad in (partial, {"block.weight": torch.zeros(2, 5), "block.bias": torch.zeros(3)}):
            with pytest.raises(RuntimeError) as info:
                parent.load_state_dict(bad)
            errors.append(str(info.value))
        results[lib] = (list(sd), calls, sorted(keys.missing_keys), sorted(keys.unexpected_keys), errors,
                        child.weight.detach().clone())
    ref, ours = results["torch"], results["torchext"]
    assert ref[0] == ["block.weight", "block.bias"] and ref[2] == ["block.bias"] and ref[3] == ["block.scale"]
    assert ours[:5] == ref[:5]
    assert torch.equal(ours[5], ref[5]) and not ours[5].any()  # strict=False loaded what it had


@pytest.mark.parametrize("kind", ["ReLU", "MSELoss"])
def test_parameterless_modules_load_like_torchs(kind):
    outcome = {}
    for lib in LIBS:
        m = _module(lib, kind)
        keys = m.load_state_dict({"stray": torch.ones(1)}, strict=False)
        with pytest.raises(RuntimeError) as info:
            m.load_state_dict({"stray": torch.ones(1)})
        outcome[lib] = m.state_dict(), keys.unexpected_keys, str(info.value)
    assert outcome["torchext"] == outcome["torch"]
    assert outcome["torch"][:2] == ({}, ["stray"])


@pytest.mark.parametrize("kw", [{}, {"bias": False}])
@pytest.mark.parametrize("kind", KINDS)
def test_repr_is_torchs_but_for_the_class_name(kind, kw):
    if kind not in WITH_PARAMS and kw:
        kw = {"inplace": True} if kind == "ReLU" else {"reduction": "sum"}
    ref, ours = _module("torch", kind, **kw), _module("torchext", kind, **kw)
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]
    assert ours.extra_repr() == ref.extra_repr()


@pytest.mark.parametrize("kind", WITH_PARAMS)
def test_init_and_reset_parameters_are_torchs(kind):
    ref, ours = _module("torch", kind), _module("torchext", kind)
    for seed in (1, 2):
        torch.manual_seed(seed)
        ref.reset_parameters()
        torch.manual_seed(seed)
        ours.reset_parameters()
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))
    torch.manual_seed(3)
    fresh_ref = _module("torch", kind)
    torch.manual_seed(3)
    fresh = _module("torchext", kind)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), fresh_ref.parameters()))


def test_mse_loss_legacy_arguments_are_torchs():
    for size_average, reduce in [(False, None), (None, False), (True, True)]:
        with pytest.warns(UserWarning) as ref_warnings:
            ref = torch.nn.MSELoss(size_average=size_average, reduce=reduce)
        with pytest.warns(UserWarning) as our_warnings:
            ours = torchext.nn.MSELoss(size_average=size_average, reduce=reduce)
        assert ours.reduction == ref.reduction
        assert [str(w.message) for w in our_warnings] == [str(w.message) for w in ref_warnings]


# Attributes torch.nn.Module gained over the releases (hooks with kwargs, always-called hooks,
# backward pre-hooks, state_dict pre-hooks, ...): a module pickled by an older release lacks them.
_NEWER_MODULE_ATTRS = ["_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
                       "_backward_pre_hooks", "_state_dict_pre_hooks", "_load_state_dict_post_hooks",
                       "_non_persistent_buffers_set", "_is_full_backward_hook"]


@pytest.mark.parametrize("kind", KINDS)
def test_unpickling_is_torchs_including_older_pickles(kind):
    results = {}
    for lib, module in zip(LIBS, _pair(kind)):
        round_trip = pickle.loads(pickle.dumps(module))
        # A copy of the module's dict (its own hook dicts and params), without the newer attributes.
        old_state = {k: v for k, v in copy.deepcopy(module).__dict__.items() if k not in _NEWER_MODULE_ATTRS}
        old = type(module).__new__(type(module))
        old.__setstate__(old_state)  # what unpickling an older release's pickle does
        old.register_forward_hook(lambda m, a, out: out * 3)  # the hook dicts are back
        inputs = _inputs(kind)
        results[lib] = [m(*inputs) for m in (module, round_trip, old)], set(vars(old))
    (outs_ref, attrs_ref), (outs, attrs) = results["torch"], results["torchext"]
    assert attrs == attrs_ref  # the same attributes restored
    torch.testing.assert_close(outs, outs_ref, atol=1e-12, rtol=1e-12)
    out, round_trip, old = outs
    assert torch.equal(round_trip, out) and torch.equal(old, out * 3)
