"""torchext.optim.SGD against torch.optim.SGD (foreach=False, the reference loop)."""
import pytest
import torch

import torchext
from conftest import ALL_DTYPES, DEVICES
from optim_common import (spoil_grad, NO_GRAD, PARITY_TOL, STEPS, assert_bitwise_equal, assert_params_close, clone_params, make_params,
                          set_grads, snapshot)

CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.05),
    dict(lr=0.1, momentum=0.8, dampening=0.1, weight_decay=0.05, maximize=True),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True),
]


def _run_pair(kw, dtype, device, steps=STEPS, ours_kw=None):
    ref = make_params(dtype, device)
    ours = clone_params(ref)
    opt_ref = torch.optim.SGD(ref, foreach=False, **kw)
    opt = torchext.optim.SGD(ours, **kw, **(ours_kw or {}))
    for _ in range(steps):
        set_grads(ref, ours)
        opt_ref.step()
        opt.step()
    return ref, ours, opt_ref, opt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join("%s=%s" % kv for kv in kw.items()))
def test_steps_match_torch(kw, dtype, device):
    ref, ours, opt_ref, opt = _run_pair(kw, dtype, device)
    assert_params_close(ours, ref, dtype)
    for p, q in zip(ours, ref):
        assert (p in opt.state) == (q in opt_ref.state)
        if q in opt_ref.state:
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], opt_ref.state[q]["momentum_buffer"],
                                       **PARITY_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_param_without_grad_untouched(device):
    ref, ours, _, opt = _run_pair(dict(lr=0.1, momentum=0.9), torch.float32, device)
    assert ours[NO_GRAD] not in opt.state
    torch.testing.assert_close(ours[NO_GRAD], ref[NO_GRAD], atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_lr(device):
    lr = torch.tensor(0.05, dtype=torch.float64)
    ref, ours, _, _ = _run_pair(dict(lr=lr, momentum=0.9), torch.float64, device)
    assert_params_close(ours, ref, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_param_groups_and_lr_edits(device):
    ref_a, ref_b = make_params(torch.float64, device), make_params(torch.float64, device, [(5, 5), (9,)])
    ours_a, ours_b = clone_params(ref_a), clone_params(ref_b)
    groups = lambda a, b: [{"params": a}, {"params": b, "lr": 0.3, "momentum": 0.5, "nesterov": True}]
    opt_ref = torch.optim.SGD(groups(ref_a, ref_b), lr=0.1, momentum=0.9, foreach=False)
    opt = torchext.optim.SGD(groups(ours_a, ours_b), lr=0.1, momentum=0.9)
    for step in range(4):
        if step == 2:
            for o in (opt_ref, opt):
                o.param_groups[0]["lr"] = 0.01
                o.param_groups[1]["weight_decay"] = 0.1
        set_grads(ref_a + ref_b, ours_a + ours_b, skip=())
        opt_ref.step()
        opt.step()
    assert_params_close(ours_a + ours_b, ref_a + ref_b, torch.float64)
    assert "Parameter Group 1" in repr(opt) and "nesterov: True" in repr(opt)


def test_mixed_dtypes_in_one_group():
    ref = make_params(torch.float64, "cpu", [(5,), (6,)]) + make_params(torch.float32, "cpu", [(7,), (0,)])
    ours = clone_params(ref)
    opt_ref = torch.optim.SGD(ref, lr=0.1, momentum=0.9, foreach=False)
    opt = torchext.optim.SGD(ours, lr=0.1, momentum=0.9)
    for _ in range(3):
        set_grads(ref, ours, skip=())
        opt_ref.step()
        opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_zero_grad_sets_none():
    ps = make_params(torch.float32, "cpu")
    opt = torchext.optim.SGD(ps, lr=0.1)
    set_grads(ps)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


@pytest.mark.parametrize("kw", [dict(lr=-1.0), dict(momentum=-0.1), dict(weight_decay=-1e-3),
                                dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.1),
                                dict(lr=torch.tensor([0.1, 0.2]))])
def test_constructor_errors_match_torch(kw):
    ps = make_params(torch.float32, "cpu")
    with pytest.raises(Exception) as ref:
        torch.optim.SGD(ps, **kw)
    with pytest.raises(type(ref.value), match=str(ref.value).replace("[", r"\[").replace("]", r"\]")):
        torchext.optim.SGD(ps, **kw)


def test_defaults_match_torch():
    ps = make_params(torch.float32, "cpu")
    ours = dict(torchext.optim.SGD(ps).defaults)
    assert ours.pop("master_weights") is False
    assert ours == torch.optim.SGD(ps).defaults


def test_differentiable_is_refused():
    with pytest.raises(NotImplementedError, match="differentiable"):
        torchext.optim.SGD(make_params(torch.float32, "cpu"), differentiable=True)




# (A sparse grad is not a failure for SGD, which takes them as torch's does; see test_optim_special_values.py.)
@pytest.mark.parametrize("case", ["shape", "dtype"])
def test_failed_step_changes_nothing(case):
    # The bad grad sits in the second group, so the first group must not be stepped either.
    a, b = make_params(torch.float32, "cpu", [(4, 4)]), make_params(torch.float32, "cpu", [(3, 5)])
    opt = torchext.optim.SGD([{"params": a}, {"params": b}], lr=0.1, momentum=0.9)
    set_grads(a + b, skip=())
    opt.step()
    set_grads(a + b, skip=())
    before = snapshot(opt, a + b)
    spoil_grad(b[0], case)
    with pytest.raises(RuntimeError):
        opt.step()
    assert_bitwise_equal(before, snapshot(opt, a + b))
