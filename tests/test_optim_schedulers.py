"""How an optimizer step is driven, against torch.optim: LR schedulers (which rewrite lr and
momentum / betas in param_groups) with the step pre/post hooks, step(closure), and the
torch.ops path that torch.compile traces, bit-identical to the eager path."""
import pytest
import torch

import torchext
from conftest import DEVICES
from optim_common import (STATE_CASES, STATE_IDS, assert_params_close, clone_params, make_params, optimizer_pair,
                          set_grads)


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    # Cycles momentum too: SGD's 'momentum', Adam's betas[0], rewritten in param_groups each step.
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=12),
    "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(o, 1e-3, 5e-2, step_size_up=2),
    "CosineAnnealingWarmRestarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 4),
    "SWALR": lambda o: torch.optim.swa_utils.SWALR(o, swa_lr=0.02, anneal_epochs=3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_lr_schedulers_and_step_hooks_match_torch(scheduler, case, device):
    # Schedulers edit param_groups between steps (lr, and momentum / betas for the cyclic ones);
    # the step hooks fire in the same order around each step; the params follow torch's.
    name, kw = case
    a, b, ref, ours = optimizer_pair(name, kw, device)
    sched_ref, sched_ours = SCHEDULERS[scheduler](ref), SCHEDULERS[scheduler](ours)
    calls = {id(ref): [], id(ours): []}
    for opt in (ref, ours):
        opt.register_step_pre_hook(lambda o, args, kwargs: calls[id(o)].append(("pre", o.param_groups[0]["lr"])))
        opt.register_step_post_hook(lambda o, args, kwargs: calls[id(o)].append(("post", o.param_groups[0]["lr"])))
    for _ in range(10):
        set_grads(a, b)
        ref.step()
        ours.step()
        sched_ref.step()
        sched_ours.step()
        assert ours.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
    assert calls[id(ours)] == calls[id(ref)] and len(calls[id(ours)]) == 20
    assert_params_close(b, a, torch.float64)
    assert sched_ours.state_dict() == sched_ref.state_dict()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
def test_step_with_closure_returns_its_loss_and_matches_torch(case, device):
    # step(closure): the closure runs with grad enabled (even when step is called under no_grad),
    # its loss comes back, and the update uses the grads it produced.
    name, kw = case
    a, b, ref, ours = optimizer_pair(name, kw, device)
    target = torch.randn(7, 13, dtype=torch.float64, device=device)
    returned = []
    for params, opt in ((a, ref), (b, ours)):
        def closure():
            opt.zero_grad()
            loss = ((params[0] - target) ** 2).sum() + params[-1].square().mean()
            loss.backward()
            return loss
        losses = []
        for _ in range(4):
            with torch.no_grad():
                losses.append(opt.step(closure))
        returned.append(torch.stack(losses))
    torch.testing.assert_close(returned[1], returned[0], atol=1e-12, rtol=1e-12)
    assert_params_close(b, a, torch.float64)
    assert ours.step() is None


@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
def test_traced_op_path_matches_eager_path(case, monkeypatch):
    # Eager steps call the ops from C++; under torch.compile the step calls torch.ops.torchext.*
    # (what dynamo traces). Both reach the same kernels: results are bit-identical, here for two
    # groups and two dtypes (three launches).
    name, kw = case
    a = make_params(torch.float32, "cpu", [(4, 3), (5,)]) + make_params(torch.float64, "cpu", [(6,)])
    b = make_params(torch.float32, "cpu", [(2, 2), (9,)])
    a2, b2 = clone_params(a), clone_params(b)
    eager = getattr(torchext.optim, name)([{"params": a}, {"params": b, "lr": 0.05}], **kw)
    traced = getattr(torchext.optim, name)([{"params": a2}, {"params": b2, "lr": 0.05}], **kw)
    for _ in range(3):
        set_grads(a + b, a2 + b2, skip=())
        eager.step()
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, "is_compiling", lambda: True)
            traced.step()
    for p, q in zip(a + b, a2 + b2):
        assert torch.equal(p, q)
