"""Optimizer state for torchext.optim.SGD, Adam and AdamW: state_dict compatibility with
torch.optim both ways, GradScaler's grad_scale / found_inf protocol (with torch's GradScaler), fp32
master weights (their math, state_dict round trips, taking over a torch half state, switching them on
and off), and that a failed load_state_dict or first step leaves no trace."""
import copy

import pytest
import torch

import torchext
from conftest import DEVICES
from optim_common import (BUFFER_KEYS, STATE_CASES, STATE_IDS, assert_bitwise_equal, assert_params_close,
                          clone_params, make_params, optimizer_pair, set_grads, snapshot, spoil_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
@pytest.mark.parametrize("direction", ["torch_to_torchext", "torchext_to_torch"])
def test_state_dict_cross_load_continues_identically(direction, case, device):
    name, kw = case
    ref, ours, opt_ref, opt = optimizer_pair(name, kw, device)
    for _ in range(3):
        set_grads(ref, ours)
        opt_ref.step()
        opt.step()
    # A fresh optimizer of the other kind takes over from the saved state.
    if direction == "torch_to_torchext":
        src_params, src_opt = ref, opt_ref
        dst_params = clone_params(ref)
        dst_opt = getattr(torchext.optim, name)(dst_params, **kw)
    else:
        src_params, src_opt = ours, opt
        dst_params = clone_params(ours)
        dst_opt = getattr(torch.optim, name)(dst_params, foreach=False, **kw)
    dst_opt.load_state_dict(copy.deepcopy(src_opt.state_dict()))
    for _ in range(3):
        set_grads(src_params, dst_params)
        src_opt.step()
        dst_opt.step()
    assert_params_close(dst_params, src_params, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
def test_state_dict_layout_matches_torch(case, device):
    name, kw = case
    ref, ours, opt_ref, opt = optimizer_pair(name, kw, device)
    set_grads(ref, ours)
    opt_ref.step()
    opt.step()
    sd_ref, sd = opt_ref.state_dict(), opt.state_dict()
    assert sd["state"].keys() == sd_ref["state"].keys()
    for i in sd_ref["state"]:
        assert sd["state"][i].keys() == sd_ref["state"][i].keys()
        for k, v in sd_ref["state"][i].items():
            assert sd["state"][i][k].dtype == v.dtype and sd["state"][i][k].shape == v.shape
            assert sd["state"][i][k].device == v.device, k
    # Key for key torch's, master_weights (at its default) included: torch.distributed.checkpoint
    # loads a torch.optim checkpoint into a torchext optimizer only if every key of ours is in it.
    assert [g.keys() for g in sd["param_groups"]] == [g.keys() for g in sd_ref["param_groups"]]


@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
def test_state_dict_reports_master_weights_when_kept(case):
    name, kw = case
    params = make_params(torch.bfloat16, "cpu")
    opt = getattr(torchext.optim, name)([{"params": params[:2], "master_weights": True}, {"params": params[2:]}],
                                        **kw)
    groups = opt.state_dict()["param_groups"]
    assert groups[0]["master_weights"] is True and "master_weights" not in groups[1]
    # A group saved without the key (at the default, or by torch.optim) keeps the loading group's setting.
    other = getattr(torchext.optim, name)([{"params": clone_params(params[:2])},
                                           {"params": clone_params(params[2:]), "master_weights": True}], **kw)
    other.load_state_dict(opt.state_dict())
    assert [g["master_weights"] for g in other.param_groups] == [True, True]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
@pytest.mark.parametrize("when", ["first_step", "later_step"])
def test_found_inf_leaves_everything_bit_identical(when, case, device):
    name, kw = case
    ref, ours, opt_ref, opt = optimizer_pair(name, kw, device)
    if when == "later_step":
        for _ in range(2):
            set_grads(ref, ours)
            opt_ref.step()
            opt.step()
    set_grads(ours)
    before = snapshot(opt, ours)
    sd_before = opt.state_dict()
    found_inf = torch.ones((), device=device)
    opt.step(grad_scale=torch.full((), 4.0, device=device), found_inf=found_inf)
    after = snapshot(opt, ours)
    if when == "later_step":
        assert_bitwise_equal(before, after)
    else:
        # Params untouched; the state the skipped step created is still pristine (zeros, count 0).
        for a, b in zip(before[0], after[0]):
            assert torch.equal(a, b)
        for entry in after[1].values():
            assert all(not t.any() for t in entry.values())
    if name == "SGD":  # a never-applied momentum buffer is not exported, as torch has none yet
        assert opt.state_dict()["state"].keys() == sd_before["state"].keys()
    # The skipped step did not count: the next real step is torch's next step (the first SGD step
    # still initialises the momentum buffer with the gradient).
    for _ in range(2):
        set_grads(ref, ours)
        opt_ref.step()
        opt.step(found_inf=torch.zeros((), device=device))
    assert_params_close(ours, ref, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
def test_grad_scale_unscales_gradients(case, device):
    name, kw = case
    ref, ours, opt_ref, opt = optimizer_pair(name, kw, device)
    scale = 1024.0
    for _ in range(3):
        set_grads(ref, ours)
        for p in ours:
            if p.grad is not None:
                p.grad.mul_(scale)
        opt_ref.step()
        opt.step(grad_scale=torch.full((), scale, device=device), found_inf=torch.zeros((), device=device))
    assert_params_close(ours, ref, torch.float64)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_with_torch_grad_scaler(name):
    # GradScaler hands grad_scale / found_inf to optimizers that declare _step_supports_amp_scaling.
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).double()
    model_ref = copy.deepcopy(model)
    kw = dict(lr=1e-2, momentum=0.9) if name == "SGD" else dict(lr=1e-2)
    opt = getattr(torchext.optim, name)(model.parameters(), **kw)
    opt_ref = getattr(torch.optim, name)(model_ref.parameters(), foreach=False, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    assert opt._step_supports_amp_scaling
    x, y = torch.randn(16, 8, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    for step in range(4):
        opt.zero_grad()
        opt_ref.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step == 1:  # an overflow: this step must be skipped entirely
            next(model.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        if step != 1:
            torch.nn.functional.mse_loss(model_ref(x), y).backward()
            opt_ref.step()
    for p, q in zip(model.parameters(), model_ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
@pytest.mark.parametrize("grad_scale", [1.0, 1e-4], ids=["grads~1", "grads~1e-4"])
def test_master_weights_follow_float32_math(grad_scale, case, dtype, device):
    # With master weights the whole update (params and buffers) is float32 math on the half grads,
    # so a float32 torch optimizer fed the same grads is the reference. Grads ~1e-4 put Adam's
    # second moment (~1e-11) far below float16's smallest subnormal (6e-8): stored in float16 it
    # would flush to zero and the step would become lr * m / eps.
    name, kw = case
    ours = make_params(dtype, device)
    ref = clone_params(ours, torch.float32)
    opt = getattr(torchext.optim, name)(ours, master_weights=True, **kw)
    opt_ref = getattr(torch.optim, name)(ref, foreach=False, **kw)
    # Adam's L2 term can cancel the gradient: where g + wd * p comes within a few float32 ulps of 0
    # the step is lr * (rounding noise) / (|rounding noise| + eps), which depends on whether the sum
    # was fused; those elements (a few per thousand runs, mostly bfloat16) are left out below.
    l2 = kw.get("weight_decay", 0.0) if name == "Adam" else 0.0
    ill = [torch.zeros(p.shape, dtype=torch.bool, device=device) for p in ours]
    for _ in range(5):
        set_grads(ours, ref, scale=grad_scale)
        for i, q in enumerate(ref):
            if q.grad is not None and l2:
                ill[i] |= (q.grad.double() + l2 * q.detach().double()).abs() < 1e-5
        opt.step()
        opt_ref.step()
    assert sum(int(m.sum()) for m in ill) < 20
    for p, q, bad in zip(ours, ref, ill):
        if p.grad is None:
            assert p not in opt.state
            continue
        state, state_ref = opt.state[p], opt_ref.state[q]
        master = state["master_param"]
        assert master.dtype == torch.float32
        assert torch.equal(p.detach(), master.to(dtype))  # the param is the master's rounding
        # Left: float32 rounding of a differently ordered formula (a few ulps after 5 steps).
        torch.testing.assert_close(master[~bad], q.detach()[~bad], atol=2e-6, rtol=2e-5)
        for key in BUFFER_KEYS:
            if key in state_ref:
                assert state[key].dtype == torch.float32, key
                atol = 2e-6 * grad_scale ** (2 if key.endswith("_sq") else 1)
                torch.testing.assert_close(state[key][~bad], state_ref[key][~bad], atol=atol, rtol=1e-5,
                                           msg=lambda m, key=key: "%s: %s" % (key, m))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
def test_master_weights_take_over_a_torch_half_state(case, device):
    # A torch optimizer on float16 params keeps float16 buffers; loaded into a master-weights
    # optimizer they become float32 (exactly: every float16 value is a float32 value).
    name, kw = case
    if name != "SGD":  # torch's float16 Adam rounds eps=1e-8 to 0 and can produce 0/0
        kw = dict(kw, eps=1e-3)
    src = make_params(torch.float16, device)
    opt_src = getattr(torch.optim, name)(src, foreach=False, **kw)
    for _ in range(2):
        set_grads(src)
        opt_src.step()
    ours = clone_params(src)
    opt = getattr(torchext.optim, name)(ours, master_weights=True, **kw)
    opt.load_state_dict(copy.deepcopy(opt_src.state_dict()))
    for p, q in zip(ours, src):
        for key in BUFFER_KEYS:
            if key in opt_src.state.get(q, {}):
                assert opt.state[p][key].dtype == torch.float32, key
                assert torch.equal(opt.state[p][key], opt_src.state[q][key].float()), key
    set_grads(ours)
    opt.step()
    for p in ours:
        if p in opt.state and "master_param" in opt.state[p]:
            assert torch.equal(p.detach(), opt.state[p]["master_param"].to(p.dtype))
    # And back: a torch optimizer takes our float32 buffers, cast to its param dtype.
    back = clone_params(ours)
    opt_back = getattr(torch.optim, name)(back, foreach=False, **kw)
    opt_back.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, q in zip(back, ours):
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in opt.state.get(q, {}):
                assert torch.equal(opt_back.state[p][key], opt.state[q][key].to(torch.float16)), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
def test_master_weights_round_trip_through_state_dict(case, device):
    name, kw = case
    ours = make_params(torch.bfloat16, device)
    opt = getattr(torchext.optim, name)(ours, master_weights=True, **kw)
    for _ in range(2):
        set_grads(ours)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    assert all(e["master_param"].dtype == torch.float32 for e in sd["state"].values())
    assert all(v.dtype == torch.float32 for e in sd["state"].values() for k, v in e.items() if k != "step")
    other = clone_params(ours)
    opt2 = getattr(torchext.optim, name)(other, master_weights=True, **kw)
    opt2.load_state_dict(sd)
    for p in other:
        if p in opt2.state:
            assert all(v.dtype == torch.float32 for v in opt2.state[p].values())
    for _ in range(3):
        set_grads(ours, other)
        opt.step()
        opt2.step()
    for p, q in zip(ours, other):
        assert torch.equal(p, q)
        if p in opt.state:
            assert torch.equal(opt.state[p]["master_param"], opt2.state[q]["master_param"])


@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
def test_switching_master_weights_converts_the_state(case):
    # Turning master_weights on for a group mid-training starts masters from the params and moves
    # the existing buffers to float32 (exactly); turning it off moves them back to the param dtype.
    name, kw = case
    ours = make_params(torch.bfloat16, "cpu")
    opt = getattr(torchext.optim, name)(ours, **kw)
    set_grads(ours)
    opt.step()
    half_state = {p: {k: v.clone() for k, v in opt.state[p].items() if k in BUFFER_KEYS} for p in opt.state}
    params_before = [p.detach().clone() for p in ours]
    opt.param_groups[0]["master_weights"] = True
    set_grads(ours)
    opt.step()
    for p, p0 in zip(ours, params_before):
        if p not in opt.state:
            continue
        state = opt.state[p]
        assert state["master_param"].dtype == torch.float32
        assert torch.equal(p.detach(), state["master_param"].to(p.dtype))
        assert not torch.equal(state["master_param"], p0.float()) or p.numel() == 0  # the step applied
        for k in half_state[p]:
            assert state[k].dtype == torch.float32, k
    opt.param_groups[0]["master_weights"] = False
    set_grads(ours)
    opt.step()
    for p in opt.state:
        assert "master_param" not in opt.state[p]
        for k in half_state[p]:
            assert opt.state[p][k].dtype == torch.bfloat16, k


@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
def test_failed_load_state_dict_changes_nothing(case):
    name, kw = case
    _, ours, _, opt = optimizer_pair(name, kw, "cpu")
    set_grads(ours)
    opt.step()
    bad = copy.deepcopy(opt.state_dict())
    entry = next(iter(bad["state"].values()))
    key = "momentum_buffer" if name == "SGD" else "exp_avg"
    entry[key] = torch.zeros(entry[key].numel() + 1, dtype=entry[key].dtype)
    before = snapshot(opt, ours)
    with pytest.raises(ValueError, match=key):
        opt.load_state_dict(bad)
    assert_bitwise_equal(before, snapshot(opt, ours))
    bad_groups = copy.deepcopy(opt.state_dict())
    bad_groups["param_groups"][0]["params"] = bad_groups["param_groups"][0]["params"][:-1]
    with pytest.raises(ValueError):
        opt.load_state_dict(bad_groups)
    assert_bitwise_equal(before, snapshot(opt, ours))


@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
@pytest.mark.parametrize("layout", ["one_launch", "two_groups", "two_dtypes"])
def test_failed_first_step_creates_no_state(layout, case):
    # The kernels refuse the bad grad before writing; with several launches every launch is
    # checked before the first runs; the state this step created is removed again.
    name, kw = case
    a = make_params(torch.float32, "cpu", [(4, 3), (5,)])
    b = make_params(torch.float64 if layout == "two_dtypes" else torch.float32, "cpu", [(6,), (2, 2)])
    groups = [{"params": a}, {"params": b}] if layout == "two_groups" else [{"params": a + b}]
    opt = getattr(torchext.optim, name)(groups, **kw)
    set_grads(a + b, skip=())
    spoil_grad(b[-1], "dtype")  # wrong dtype for its param, in the last launch
    before = [p.detach().clone() for p in a + b]
    with pytest.raises(RuntimeError, match="grads"):
        opt.step()
    assert len(opt.state) == 0
    assert all(torch.equal(p, q) for p, q in zip(a + b, before))
    # Fixed, the step runs as torch's first step.
    ref = clone_params(a + b)
    b[-1].grad = b[-1].grad.to(b[-1].dtype)
    for p, q in zip(a + b, ref):
        q.grad = p.grad.clone()
    opt_ref = getattr(torch.optim, name)(ref, foreach=False, **kw)
    opt.step()
    opt_ref.step()
    assert_params_close(a + b, ref, torch.float32)
