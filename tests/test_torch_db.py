"""torchext run through PyTorch's own test databases, against torch.

optim_db (torch.testing._internal.common_optimizers), for SGD, Adam and AdamW on the CPU in
float64 and float32: every OptimizerInput, with the flag combinations torch's tests add to it
(fused; differentiable is skipped by name, torchext refuses it, see the README), steps torch's
for-loop optimizer and torchext's on params laid out as torch's own optimizer tests lay them out
(contiguous, views with gaps, a column slice, a transposed view, a 0-dim and an empty param, in two
groups), through the same closure; losses, params and state must agree, each step must be one
fused launch per group, and the loss must move the right way. Every ErrorOptimizerInput must make
torchext raise (or warn) what torch does, matching torch's regex, with torch's message, at the
same point (construction or step).

module_db (torch.testing._internal.common_modules), for Linear, ReLU and MSELoss in float64 and
float32: every ModuleInput builds torch's module and torchext's (and LinearReLU against Linear then
ReLU) with the same parameters; forward outputs (values, dtype, strides), input and parameter
gradients must agree to torch.testing's default tolerances, for contiguous inputs, inputs with
gaps, and channels_last inputs where torch's input asks for them.
"""
import copy
import re
import warnings

import pytest
import torch

# torch's test utilities freeze torch.backends' global flags when imported (torch's own suites set
# them through context managers only); torch's context manager for changing them restores the
# setting this suite runs with once the import is done.
with getattr(torch.backends, "__allow_nonbracketed_mutation")():
    from torch.testing._internal.common_modules import module_db
    from torch.testing._internal.common_optimizers import (
        OptimizerErrorEnum, _get_optim_inputs_including_global_cliquey_kwargs, optim_db)

import torchext  # noqa: E402
from optim_common import PARITY_TOL  # noqa: E402

OPTIMIZERS = ("SGD", "Adam", "AdamW")
OPTIM_INFO = {info.optim_cls.__name__: info for info in optim_db if info.optim_cls.__name__ in OPTIMIZERS}
DTYPES = (torch.float64, torch.float32)
STEPS = 5

# OptimizerInputs skipped by name, with the reason.
SKIPPED = {
    "& differentiable": "torchext refuses differentiable=True (NotImplementedError): its fused kernels are not "
                        "differentiable; test_differentiable_inputs_are_refused checks the refusal",
}


def _optim_inputs(name, dtype):
    return _get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, OPTIM_INFO[name])


def _skip_reason(desc):
    return next((reason for key, reason in SKIPPED.items() if key in desc), None)


def _optim_cases(only_skipped=False):
    """Every input of optim_db for our optimizers (skipped ones marked with their reason), or only
    the skipped ones."""
    cases = []
    for name in OPTIMIZERS:
        for dtype in DTYPES:
            for i, inp in enumerate(_optim_inputs(name, dtype)):
                reason = _skip_reason(inp.desc)
                if only_skipped and reason is None:
                    continue
                marks = [pytest.mark.skip(reason=reason)] if reason and not only_skipped else []
                cases.append(pytest.param(name, dtype, i, marks=marks,
                                          id="%s-%s-%s" % (name, str(dtype)[6:], inp.desc)))
    return cases


def _layouts(dtype, seed):
    """The params torch's optimizer tests step (weight and bias, contiguous and as views with gaps),
    beside a column slice, a transposed view, a 0-dim and an empty param: two groups. The same
    seed gives the same values in the same layouts."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    P = torch.nn.Parameter
    first = [P(r(10, 5)), P(r(10)), P(r(10, 5, 2)[..., 0]), P(r(10, 2)[..., 0])]
    second = [P(r(10, 10)[:, :5]), P(r(5, 10).t()), P(r(())), P(r(0, 5))]
    return first, second


def _loss(params, x):
    weight, bias, weight_gaps, bias_gaps, columns, transposed, scalar, empty = params
    return ((weight.mv(x) + bias).pow(2).sum() + (weight_gaps.mv(x) + bias_gaps).pow(2).sum()
            + (columns.mv(x) - transposed.mv(x).sin()).pow(2).sum() + (scalar - 0.5).pow(2) + empty.sum())


def _run(opt, params, x, steps):
    def closure():
        opt.zero_grad()
        loss = _loss(params, x)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(steps)]
    with torch.no_grad():
        return losses, _loss(params, x).item()


def _assert_close(actual, expected, tol):
    # The absolute tolerance scales with the tensor's largest value: a rounding difference in one
    # step moves a small element of a large momentum buffer by a few ulps of the large ones.
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=tol["atol"] * scale, rtol=tol["rtol"])


@pytest.mark.parametrize("name, dtype, index", _optim_cases())
def test_optim_db_inputs_step_like_torch(name, dtype, index):
    inp = _optim_inputs(name, dtype)[index]
    seed = int(torch.randint(2 ** 30, ()))
    ref_first, ref_second = _layouts(dtype, seed)
    ours = [p for group in _layouts(dtype, seed) for p in group]
    assert [p.stride() for p in ours[2:4]] == [(10, 2), (2,)]  # views with gaps, as torch's tests make
    x = torch.randn(5, dtype=dtype)

    # torch's for-loop optimizer is the reference, as in torch's own correctness tests.
    ref_kwargs = {k: v for k, v in copy.deepcopy(inp.kwargs).items() if k != "fused"}
    ref = getattr(torch.optim, name)([{"params": ref_first}, {"params": ref_second, "lr": 0.01}],
                                     foreach=False, **ref_kwargs)
    opt = getattr(torchext.optim, name)([{"params": ours[:4]}, {"params": ours[4:], "lr": 0.01}],
                                        **copy.deepcopy(inp.kwargs))
    launches = []
    eager_op = opt._eager_op
    opt._eager_op = lambda *args: (launches.append(len(args[0])), eager_op(*args))[1]

    with torch.no_grad():
        start = _loss(ref_first + ref_second, x).item()
    ref_losses, ref_end = _run(ref, ref_first + ref_second, x, STEPS)
    losses, end = _run(opt, ours, x, STEPS)

    tol = PARITY_TOL[dtype]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), **tol)
    for p, q in zip(ours, ref_first + ref_second):
        _assert_close(p.detach(), q.detach(), tol)
        assert p.stride() == q.stride()  # stepped in place: a view keeps its layout
        state, ref_state = opt.state.get(p, {}), ref.state.get(q, {})  # (.get: state is a defaultdict)
        assert set(state) - {"momentum_count"} == set(ref_state)
        for key, value in ref_state.items():
            _assert_close(state[key], value, tol)
    # Every step is one fused launch per group, over all of the group's params (the empty and
    # 0-dim ones included), never a silent no-op.
    assert launches == [4, 4] * STEPS
    # The loss moves the way the optimizer is asked to move it, as torch's tests check.
    maximize = inp.kwargs.get("maximize", False)
    assert (end > start) if maximize else (end < start)
    assert (ref_end > start) if maximize else (ref_end < start)

    sd, sd_ref = opt.state_dict(), ref.state_dict()
    assert sd["state"].keys() == sd_ref["state"].keys()
    for i, entry in sd_ref["state"].items():
        assert {k: (v.shape, v.dtype) for k, v in sd["state"][i].items()} == \
               {k: (v.shape, v.dtype) for k, v in entry.items()}
    assert [set(g) - {"master_weights"} for g in sd["param_groups"]] == [set(g) for g in sd_ref["param_groups"]]


@pytest.mark.parametrize("name, dtype, index", _optim_cases(only_skipped=True))
def test_differentiable_inputs_are_refused(name, dtype, index):
    # The documented exception: what torch steps differentiably, torchext refuses outright
    # rather than stepping without a graph.
    inp = _optim_inputs(name, dtype)[index]
    assert inp.kwargs["differentiable"] is True
    first, second = _layouts(dtype, 0)
    getattr(torch.optim, name)(first + second, **copy.deepcopy(inp.kwargs))  # torch takes it
    with pytest.raises(NotImplementedError, match="differentiable=True"):
        getattr(torchext.optim, name)(first + second, **copy.deepcopy(inp.kwargs))


def _error_inputs(name):
    inputs = OPTIM_INFO[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)
    # torch lists these two under CUDA only; on the CPU torch refuses them the same way.
    param = torch.nn.Parameter(torch.randn(2))
    for kwargs, regex in (({"foreach": True, "fused": True}, "`fused` and `foreach` cannot be `True` together"),
                          ({"fused": True, "differentiable": True}, "`fused` does not support `differentiable`")):
        inputs.append(type(inputs[0])(type(inputs[0].optimizer_error_input)(params=[param], kwargs=kwargs, desc=regex),
                                      error_type=RuntimeError, error_regex=regex))
    return inputs


def _error_cases():
    return [pytest.param(name, i, id="%s-%s" % (name, e.optimizer_error_input.desc))
            for name in OPTIMIZERS for i, e in enumerate(_error_inputs(name))]


def _raised(cls, error_input):
    """(where, exception type, message) for the first error or matching warning: where is
    'construction' or 'step', as torch's ErrorOptimizerInput distinguishes them."""
    inp = error_input.optimizer_error_input
    wanted = error_input.error_type
    for where in ("construction", "step"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if where == "construction":
                    opt = cls(inp.params, **inp.kwargs)
                else:
                    opt.step()
            except Exception as e:  # noqa: BLE001  (any exception is an outcome to compare)
                return where, type(e), str(e)
        for w in caught:
            if issubclass(wanted, Warning) and issubclass(w.category, wanted):
                return where, w.category, str(w.message)
    return None, None, None


@pytest.mark.parametrize("name, index", _error_cases())
def test_optim_db_error_inputs_raise_like_torch(name, index):
    # Each side gets fresh inputs (the db builds new params on every call).
    ref_input, our_input = _error_inputs(name)[index], _error_inputs(name)[index]
    expected = "step" if ref_input.error_on == OptimizerErrorEnum.STEP_ERROR else "construction"
    ref = _raised(getattr(torch.optim, name), ref_input)
    ours = _raised(getattr(torchext.optim, name), our_input)
    assert ref[0] == expected and issubclass(ref[1], ref_input.error_type) and re.search(ref_input.error_regex, ref[2])
    assert ours == ref


# ====================================================================================== modules

MODULES = {torch.nn.Linear: torchext.nn.Linear, torch.nn.ReLU: torchext.nn.ReLU, torch.nn.MSELoss: torchext.nn.MSELoss}
MODULE_INFO = {info.module_cls: info for info in module_db if info.module_cls in MODULES}


def _module_inputs(cls, dtype):
    info = MODULE_INFO[cls]
    return info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=True)


def _module_cases():
    cases = []
    for cls, ours in MODULES.items():
        targets = [ours] + ([torchext.nn.LinearReLU] if cls is torch.nn.Linear else [])
        for target in targets:
            for dtype in DTYPES:
                for i, inp in enumerate(_module_inputs(cls, dtype)):
                    for layout in ("contiguous", "with_gaps"):
                        cases.append(pytest.param(cls, target, dtype, i, layout, id="%s-%s-%s-%s" % (
                            target.__name__, str(dtype)[6:], inp.desc or "default", layout)))
    return cases


def _arrange(t, layout, desc):
    """A copy of t as torch's module tests vary it: channels_last where the input's name asks for
    it, or spread out with gaps between its elements (torch's test_non_contiguous_tensors)."""
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach()
    if layout == "with_gaps" and t.dim() > 0:
        spread = torch.empty(t.shape + (2,), dtype=t.dtype)
        spread[..., 0] = t
        spread[..., 1] = float("nan")  # would show up if a kernel read a gap
        t = spread[..., 0]
    elif "channels_last_3d" in desc:
        t = t.contiguous(memory_format=torch.channels_last_3d)
    elif "channels_last" in desc:
        t = t.contiguous(memory_format=torch.channels_last)
    else:
        t = t.clone()
    return t.requires_grad_()


@pytest.mark.parametrize("cls, target, dtype, index, layout", _module_cases())
def test_module_db_inputs_match_torch(cls, target, dtype, index, layout):
    inp = _module_inputs(cls, dtype)[index]
    args, kwargs = inp.constructor_input.args, inp.constructor_input.kwargs
    ref = cls(*args, **kwargs).to(dtype)
    ours = target(*args, **kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict())
    fwd_args, fwd_kwargs = inp.forward_input.args, inp.forward_input.kwargs
    originals = list(fwd_args) + list(fwd_kwargs.values())
    ref_inputs = [_arrange(t, layout, inp.desc) for t in originals]
    our_inputs = [_arrange(t, layout, inp.desc) for t in originals]
    assert all(a.stride() == b.stride() for a, b in zip(ref_inputs, our_inputs))
    names = list(fwd_kwargs)

    def call(module, inputs):
        positional = inputs[:len(fwd_args)]
        return module(*positional, **dict(zip(names, inputs[len(fwd_args):])))

    out_ref = call(ref, ref_inputs)
    if target is torchext.nn.LinearReLU:
        out_ref = torch.relu(out_ref)  # what LinearReLU fuses
    out = call(ours, our_inputs)
    assert out.dtype == out_ref.dtype and out.shape == out_ref.shape
    if out_ref.numel() > 1:
        assert out.stride() == out_ref.stride()  # the memory format torch's output has
    torch.testing.assert_close(out, out_ref)

    grad_out = torch.randn_like(out_ref)
    out_ref.backward(grad_out)
    out.backward(grad_out)
    ref_grads = [t.grad for t in ref_inputs] + [p.grad for p in ref.parameters()]
    grads = [t.grad for t in our_inputs] + [p.grad for p in ours.parameters()]
    assert all(g is not None for g in ref_grads) and len(grads) == len(ref_grads)
    torch.testing.assert_close(grads, ref_grads)
