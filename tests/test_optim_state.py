"""state_dict compatibility with torch.optim, GradScaler's grad_scale / found_inf protocol and fp32
master weights, for torchext.optim.SGD, Adam and AdamW."""
import copy

import pytest
import torch

import torchext
from conftest import DEVICES
from optim_common import (BUFFER_KEYS, PARITY_TOL, assert_bitwise_equal, assert_params_close, clone_params,
                          make_params, set_grads, snapshot, spoil_grad)

CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2)),
]
IDS = ["%s-%d" % (c[0], i) for i, c in enumerate(CASES)]


def _pair(name, kw, device, dtype=torch.float64):
    a = make_params(dtype, device)
    b = clone_params(a)
    return a, b, getattr(torch.optim, name)(a, foreach=False, **kw), getattr(torchext.optim, name)(b, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("direction", ["torch_to_torchext", "torchext_to_torch"])
def test_state_dict_cross_load_continues_identically(direction, case, device):
    name, kw = case
    ref, ours, opt_ref, opt = _pair(name, kw, device)
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
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_layout_matches_torch(case, device):
    name, kw = case
    ref, ours, opt_ref, opt = _pair(name, kw, device)
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


@pytest.mark.parametrize("case", CASES, ids=IDS)
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
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("when", ["first_step", "later_step"])
def test_found_inf_leaves_everything_bit_identical(when, case, device):
    name, kw = case
    ref, ours, opt_ref, opt = _pair(name, kw, device)
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
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_grad_scale_unscales_gradients(case, device):
    name, kw = case
    ref, ours, opt_ref, opt = _pair(name, kw, device)
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
@pytest.mark.parametrize("case", CASES, ids=IDS)
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
@pytest.mark.parametrize("case", CASES, ids=IDS)
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
@pytest.mark.parametrize("case", CASES, ids=IDS)
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


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_failed_load_state_dict_changes_nothing(case):
    name, kw = case
    _, ours, _, opt = _pair(name, kw, "cpu")
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["adam_step_", "sgd_step_"])
def test_ops_pass_opcheck(op, device):
    # Schema mutation annotations, fake kernels and dispatch agree, so torch.compile can trace a step.
    ps = make_params(torch.float32, device, [(5, 3), (0,), (7,)])
    ps = [p.detach() for p in ps]
    grads = [torch.randn_like(p) for p in ps]
    zeros = lambda: [torch.zeros_like(p) for p in ps]
    counters = [torch.zeros((), device=device) for _ in ps]
    if op == "adam_step_":
        args = (ps, grads, zeros(), zeros(), zeros(), counters, [], 1e-3, 0.9, 0.999, 1e-8, 0.1, True, False, True,
                None, None, torch.zeros((), device=device))
    else:
        args = (ps, grads, zeros(), counters, [], 1e-2, 0.9, 0.0, 0.0, True, False, None,
                torch.ones((), device=device), None)
    torch.library.opcheck(getattr(torch.ops.torchext, op).default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_ops_refuse_half_buffers_beside_master_weights(device):
    # The kernels read float32 buffers when master weights are passed; half ones are refused by name
    # before anything is written.
    ps = [p.detach() for p in make_params(torch.bfloat16, device, [(5, 3), (9,)])]
    grads = [torch.randn_like(p) for p in ps]
    masters = [p.float() for p in ps]
    counters = [torch.zeros((), device=device) for _ in ps]
    before = [p.clone() for p in ps]
    half = lambda: [torch.zeros_like(p) for p in ps]  # noqa: E731
    with pytest.raises(RuntimeError, match="exp_avgs"):
        torch.ops.torchext.adam_step_(ps, grads, half(), half(), [], counters, masters, 1e-3, 0.9, 0.999, 1e-8,
                                      0.0, False, False, False, None, None, None)
    with pytest.raises(RuntimeError, match="momentum_buffers"):
        torch.ops.torchext.sgd_step_(ps, grads, half(), counters, masters, 1e-2, 0.9, 0.0, 0.0, False, False,
                                     None, None, None)
    assert all(torch.equal(a, b) for a, b in zip(ps, before))
    assert all(float(c) == 0 for c in counters)


@pytest.mark.parametrize("device", DEVICES)
def test_ops_refuse_a_param_listed_twice(device):
    # Two workers of one launch would update the same memory at once: refused by name, nothing written.
    a, b = (p.detach() for p in make_params(torch.float32, device, [(5, 3), (9,)]))
    ps = [a, b, a]
    grads = [torch.randn_like(p) for p in ps]
    zeros = lambda: [torch.zeros_like(p) for p in ps]  # noqa: E731
    counters = [torch.zeros((), device=device) for _ in ps]
    before = [a.clone(), b.clone()]
    with pytest.raises(RuntimeError, match=r"params\[0\] and params\[2\] share memory"):
        torch.ops.torchext.adam_step_(ps, grads, zeros(), zeros(), [], counters, [], 1e-3, 0.9, 0.999, 1e-8,
                                      0.0, False, False, False, None, None, None)
    with pytest.raises(RuntimeError, match=r"params\[0\] and params\[2\] share memory"):
        torch.ops.torchext.sgd_step_(ps, grads, zeros(), counters, [], 1e-2, 0.9, 0.0, 0.0, False, False,
                                     None, None, None)
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
    assert all(float(c) == 0 for c in counters)
    # Overlapping views of one storage, in any order: refused the same way.
    base = torch.randn(40, device=device)
    views = [base[30:], base[:20], base[10:25]]
    grads = [torch.randn_like(v) for v in views]
    with pytest.raises(RuntimeError, match=r"params\[1\] and params\[2\] share memory"):
        torch.ops.torchext.sgd_step_(views, grads, [], [], [], 1e-2, 0.0, 0.0, 0.0, False, False, None, None, None)
    # Views of one storage that share no element are fine, and so are empty params listed twice.
    expected = base - 1e-2 * torch.cat(grads[1:2] + [torch.zeros(10, device=device)] + grads[:1])
    torch.ops.torchext.sgd_step_([views[0], views[1]], [grads[0], grads[1]], [], [], [], 1e-2, 0.0, 0.0, 0.0,
                                 False, False, None, None, None)
    torch.testing.assert_close(base, expected)
    e = torch.empty(0, device=device)
    torch.ops.torchext.sgd_step_([e, e], [e, e], [], [], [], 1e-2, 0.0, 0.0, 0.0, False, False, None, None, None)


@pytest.mark.parametrize("device", DEVICES)
def test_op_counters_bumped_once_per_param(device):
    # A counter tensor shared by two params gets two increments (CUDA bumps atomically), and SGD's
    # counters are bumped whenever they are passed, momentum or not, on every device alike.
    ps = [p.detach() for p in make_params(torch.float32, device, [(4,), (6,)])]
    grads = [torch.randn_like(p) for p in ps]
    shared = torch.zeros((), device=device)
    torch.ops.torchext.adam_step_(ps, grads, [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps],
                                  [], [shared, shared], [], 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False,
                                  None, None, None)
    assert float(shared) == 2.0
    counts = [torch.full((), 3.0, device=device) for _ in ps]
    torch.ops.torchext.sgd_step_(ps, grads, [], counts, [], 1e-2, 0.0, 0.0, 0.0, False, False, None, None, None)
    assert [float(c) for c in counts] == [4.0, 4.0]


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_param_listed_twice_is_updated_once(name):
    # torch warns about duplicates (its for-loop then updates the param twice, its fused kernels race);
    # ours keeps the param once in its group and updates it once per step.
    x = torch.randn(7, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    kw = {"lr": 0.1, "momentum": 0.9} if name == "SGD" else {"lr": 0.1}
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = getattr(torchext.optim, name)([x, x], **kw)
    ref = getattr(torch.optim, name)([y], **kw)
    assert len(opt.param_groups[0]["params"]) == 1
    for _ in range(3):
        g = torch.randn(7)
        x.grad, y.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    # Named params: the names follow the params that are kept.
    z = torch.randn(2, requires_grad=True)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        named = getattr(torchext.optim, name)([("x", x), ("z", z), ("x_again", x)], **kw)
    assert named.param_groups[0]["param_names"] == ["x", "z"]
    assert named.param_groups[0]["params"][0] is x and named.param_groups[0]["params"][1] is z


@pytest.mark.parametrize("case", CASES, ids=IDS)
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


@pytest.mark.parametrize("case", CASES, ids=IDS)
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_params_and_grads_in_different_layouts(case, device):
    # A transposed (dense, non-contiguous) param with a contiguous grad, and a contiguous param
    # with a transposed grad: the kernels walk memory in the param's order, so such grads are
    # copied into the param's layout first. The state follows the param's layout.
    name, kw = case
    ours = [torch.nn.Parameter(torch.randn(7, 5, dtype=torch.float64, device=device).t()),
            torch.nn.Parameter(torch.randn(4, 6, dtype=torch.float64, device=device)),
            torch.nn.Parameter(torch.randn(3, 8, dtype=torch.float64, device=device))]
    ref = clone_params(ours)
    opt = getattr(torchext.optim, name)(ours, **kw)
    opt_ref = getattr(torch.optim, name)(ref, foreach=False, **kw)
    for _ in range(3):
        grads = [torch.randn(5, 7, dtype=torch.float64, device=device),
                 torch.randn(6, 4, dtype=torch.float64, device=device).t(),
                 torch.randn(3, 8, dtype=torch.float64, device=device)]
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g, g.clone()
        assert ours[0].grad.stride() != ours[0].stride() and ours[1].grad.stride() != ours[1].stride()
        opt.step()
        opt_ref.step()
    assert_params_close(ours, ref, torch.float64)
    assert ours[0].stride() == (1, 5)


def _views_with_gaps(dtype, device):
    """Params that are views with gaps in memory, as torch's own optimizer tests use them, beside a
    transposed one, a 0-dim one and an empty one; each with its base, to check the gaps."""
    bases = [torch.randn(10, 5, 2, dtype=dtype, device=device), torch.randn(10, 10, dtype=dtype, device=device),
             torch.randn(6, 9, dtype=dtype, device=device)]
    views = [bases[0][..., 0], bases[1][:, :5], bases[2][::2, 1::3]]
    others = [torch.randn(5, 7, dtype=dtype, device=device).t(), torch.randn((), dtype=dtype, device=device),
              torch.randn(0, 3, dtype=dtype, device=device)[:, :2]]
    return bases, [torch.nn.Parameter(v) for v in views] + [torch.nn.Parameter(o) for o in others]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES + [("Adam", dict(lr=1e-2))], ids=IDS + ["Adam-default"])
def test_params_with_gaps_step_like_torch(case, dtype, device):
    # torch's optimizers step views with gaps (w[:, :5], t[..., 0]); torchext steps them through
    # dense copies in the same fused launch, writing back only the view's elements.
    name, kw = case
    bases, ours = _views_with_gaps(dtype, device)
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    gaps_before = [b.clone() for b in bases]
    opt = getattr(torchext.optim, name)(ours, **kw)
    opt_ref = getattr(torch.optim, name)(ref, foreach=False, **kw)
    for _ in range(3):
        set_grads(ours, ref, skip=())
        opt.step()
        opt_ref.step()
    assert_params_close(ours, ref, dtype)
    for base, before, view in zip(bases, gaps_before, ours[:3]):
        untouched = torch.ones_like(base, dtype=torch.bool)
        untouched.as_strided(view.shape, view.stride(), view.storage_offset() - base.storage_offset()).fill_(False)
        assert torch.equal(base[untouched], before[untouched])  # the gaps keep their values
        assert not torch.equal(base, before)
    # A step GradScaler skips leaves everything bit for bit.
    set_grads(ours, skip=())
    before = snapshot(opt, ours)
    opt.step(grad_scale=torch.ones((), device=device), found_inf=torch.ones((), device=device))
    assert_bitwise_equal(before, snapshot(opt, ours))


def test_expanded_param_is_refused():
    p = torch.nn.Parameter(torch.randn(3, 1).expand(3, 4))
    p.grad = torch.randn(3, 4)
    opt = torchext.optim.SGD([p], lr=0.1)
    with pytest.raises(RuntimeError, match="share memory"):
        opt.step()


@pytest.mark.parametrize("case", CASES, ids=IDS)
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


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    # Cycles momentum too: SGD's 'momentum', Adam's betas[0], rewritten in param_groups each step.
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=12),
    "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(o, 1e-3, 5e-2, step_size_up=2),
    "CosineAnnealingWarmRestarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 4),
    "SWALR": lambda o: torch.optim.swa_utils.SWALR(o, swa_lr=0.02, anneal_epochs=3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_lr_schedulers_and_step_hooks_match_torch(scheduler, case, device):
    # Schedulers edit param_groups between steps (lr, and momentum / betas for the cyclic ones);
    # the step hooks fire in the same order around each step; the params follow torch's.
    name, kw = case
    a, b, ref, ours = _pair(name, kw, device)
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
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_step_with_closure_returns_its_loss_and_matches_torch(case, device):
    # step(closure): the closure runs with grad enabled (even when step is called under no_grad),
    # its loss comes back, and the update uses the grads it produced.
    name, kw = case
    a, b, ref, ours = _pair(name, kw, device)
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("case", CASES + [("SGD", dict(lr=0.1)), ("AdamW", dict(lr=1e-2, maximize=True, amsgrad=True))],
                         ids=IDS + ["SGD-plain", "AdamW-maximize"])
def test_complex_params_match_torch(case, dtype, device):
    # torch updates a complex param as its real and imaginary parts (view_as_real), with complex
    # state; so do the kernels, through the same views. Mixed with a real param in the group.
    name, kw = case
    real_dtype = torch.float32 if dtype == torch.complex64 else torch.float64
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.complex64 else dict(atol=1e-12, rtol=1e-12)
    base = [torch.randn(7, 13, dtype=dtype, device=device), torch.randn(33, dtype=dtype, device=device),
            torch.randn(5, dtype=real_dtype, device=device)]
    ref = [torch.nn.Parameter(b.clone()) for b in base]
    ours = [torch.nn.Parameter(b.clone()) for b in base]
    opt_ref = getattr(torch.optim, name)(ref, foreach=False, **kw)
    opt = getattr(torchext.optim, name)(ours, **kw)

    def steps(n):
        for _ in range(n):
            for a, b in zip(ref, ours):
                g = torch.randn_like(a)
                a.grad, b.grad = g, g.clone()
            opt_ref.step()
            opt.step()
        for a, b in zip(ref, ours):
            torch.testing.assert_close(b.detach(), a.detach(), **tol)
        for a, b in zip(ref, ours):
            for key in BUFFER_KEYS:
                if key in opt_ref.state[a]:
                    assert opt.state[b][key].dtype == a.dtype  # complex state, as torch keeps it
                    torch.testing.assert_close(opt.state[b][key], opt_ref.state[a][key], **tol)

    steps(4)
    # Both ways through state_dict, then on.
    opt.load_state_dict(copy.deepcopy(opt_ref.state_dict()))
    opt_ref.load_state_dict(copy.deepcopy(opt.state_dict()))
    steps(2)


def _embedding_pair(seed):
    torch.manual_seed(seed)
    ref = torch.nn.Embedding(10, 3, sparse=True)
    ours = copy.deepcopy(ref)
    return ref, ours


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9, dampening=0.5,
                                                                                maximize=True),
                                dict(lr=0.1, momentum=0.9, nesterov=True)], ids=["plain", "momentum", "dampening",
                                                                                  "nesterov"])
def test_sgd_takes_sparse_grads_like_torch(kw):
    # nn.Embedding(sparse=True) gives sparse grads; torch's SGD takes them (with a sparse momentum
    # buffer), and so must ours, beside a dense param in the same group.
    ref, ours = _embedding_pair(0)
    ref_bias, our_bias = torch.nn.Parameter(torch.randn(3)), None
    our_bias = torch.nn.Parameter(ref_bias.detach().clone())
    opt_ref = torch.optim.SGD([ref.weight, ref_bias], **kw)
    opt = torchext.optim.SGD([ours.weight, our_bias], **kw)
    for step in range(4):
        idx = torch.randint(0, 10, (6,))
        target = torch.randn(6, 3)
        for emb, bias, o in ((ref, ref_bias, opt_ref), (ours, our_bias, opt)):
            o.zero_grad()
            ((emb(idx) + bias - target) ** 2).sum().backward()
            assert emb.weight.grad.is_sparse
            o.step()
        torch.testing.assert_close(ours.weight.detach(), ref.weight.detach(), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(our_bias.detach(), ref_bias.detach(), atol=1e-6, rtol=1e-5)
    if kw.get("momentum"):
        buf = opt.state_dict()["state"][0]["momentum_buffer"]
        ref_buf = opt_ref.state_dict()["state"][0]["momentum_buffer"]
        assert buf.is_sparse and ref_buf.is_sparse
        torch.testing.assert_close(buf.to_dense(), ref_buf.to_dense())
    # A step GradScaler found overflowing changes nothing.
    before = ours.weight.detach().clone()
    ((ours(torch.tensor([1, 2])) - 1) ** 2).sum().backward()
    opt.step(grad_scale=torch.tensor(2.0), found_inf=torch.tensor(1.0))
    assert torch.equal(ours.weight.detach(), before)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("name,kw", [("Adam", {}), ("AdamW", {}), ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1))])
def test_sparse_grads_refused_like_torch(name, kw):
    # Where torch's optimizer raises on a sparse grad, ours raises the same error, before anything
    # (a dense param earlier in the list included) is written.
    errors = []
    for mod in (torch.optim, torchext.optim):
        ref, _ = _embedding_pair(1)
        dense = torch.nn.Parameter(torch.randn(4))
        dense.grad = torch.randn(4)
        ref(torch.tensor([0, 3])).sum().backward()
        opt = getattr(mod, name)([dense, ref.weight], **({"lr": 0.1} | kw))
        before = (dense.detach().clone(), ref.weight.detach().clone())
        with pytest.raises(RuntimeError) as info:
            opt.step()
        errors.append(str(info.value))
        if mod is torchext.optim:
            assert torch.equal(dense.detach(), before[0]) and torch.equal(ref.weight.detach(), before[1])
            assert not opt.state
    assert errors[0] == errors[1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES + [("SGD", dict(lr=0.1)), ("Adam", dict(lr=1e-2)),
                                          ("AdamW", dict(lr=1e-2, weight_decay=0.0, amsgrad=True))],
                         ids=IDS + ["SGD-plain", "Adam-plain", "AdamW-no-decay"])
def test_non_finite_params_and_grads_follow_torch(case, dtype, device):
    # torch adds a weight-decay term only when there is weight decay, so an infinite parameter
    # stays infinite without it (a kernel that always adds 0 * p makes it NaN). Infinities and NaNs
    # sit in the vectorised body and in the scalar tail, in params and in grads; without a
    # GradScaler nothing stops them, so after each step every value, moment and buffer must be what
    # torch's for-loop implementation holds, NaN for NaN.
    name, kw = case
    n = 37
    base = torch.randn(n, dtype=dtype, device=device)
    base[[3, 20, 35]] = torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=dtype)
    ref, ours = torch.nn.Parameter(base.clone()), torch.nn.Parameter(base.clone())
    opt_ref = getattr(torch.optim, name)([ref], foreach=False, **kw)
    opt = getattr(torchext.optim, name)([ours], **kw)
    tol = PARITY_TOL[dtype]
    for step in range(3):
        g = torch.randn(n, dtype=dtype, device=device)
        if step == 1:
            g[[9, 33]] = torch.tensor([float("inf"), float("nan")], dtype=dtype)
        ref.grad, ours.grad = g, g.clone()
        opt_ref.step()
        opt.step()
        torch.testing.assert_close(ours.detach(), ref.detach(), equal_nan=True, **tol)
        for key in BUFFER_KEYS:
            if key in opt_ref.state[ref]:
                torch.testing.assert_close(opt.state[ours][key], opt_ref.state[ref][key], equal_nan=True, **tol)
    if not kw.get("weight_decay"):
        assert torch.isinf(ref.detach()[[3, 20]]).all()  # the case the kernels once got wrong was exercised


@pytest.mark.parametrize("device", DEVICES)
def test_sgd_first_step_ignores_what_the_buffer_held(device):
    # A momentum count of 0 means the buffer has no history: the step makes it the gradient itself,
    # whatever it held (torch clones the gradient). Scaling the old contents by 0 would keep NaN/inf.
    p = torch.randn(37, device=device)
    g = torch.randn(37, device=device)
    buf = torch.full((37,), float("nan"), device=device)
    buf[::3] = float("inf")
    count = torch.zeros((), device=device)
    expected = p - 0.1 * g
    torch.ops.torchext.sgd_step_([p], [g], [buf], [count], [], 0.1, 0.9, 0.5, 0.0, False, False, None, None, None)
    torch.testing.assert_close(buf, g, atol=0, rtol=0)
    torch.testing.assert_close(p, expected)
    assert float(count) == 1.0
