"""Optimizer params that share or skip memory: a param listed twice (refused by the ops,
updated once by the optimizers), shared step counters, expanded params, params and grads in
different layouts, and views with gaps stepped like torch.optim without touching the gaps."""
import pytest
import torch

import torchext
from conftest import DEVICES
from optim_common import (STATE_CASES, STATE_IDS, assert_bitwise_equal, assert_params_close, clone_params,
                          make_params, set_grads, snapshot)


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


def test_expanded_param_is_refused():
    p = torch.nn.Parameter(torch.randn(3, 1).expand(3, 4))
    p.grad = torch.randn(3, 4)
    opt = torchext.optim.SGD([p], lr=0.1)
    with pytest.raises(RuntimeError, match="share memory"):
        opt.step()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", STATE_CASES, ids=STATE_IDS)
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
@pytest.mark.parametrize("case", STATE_CASES + [("Adam", dict(lr=1e-2))], ids=STATE_IDS + ["Adam-default"])
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
