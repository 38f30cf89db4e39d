"""torchext.optim.Adam / AdamW against torch.optim.Adam / AdamW (foreach=False, the reference loop)."""
import pytest
import torch

import torchext
from conftest import ALL_DTYPES, DEVICES, HAS_CUDA
from optim_common import (NO_GRAD, PARITY_TOL, STEPS, assert_bitwise_equal, assert_params_close, clone_params,
                          make_params, reference_dtype, round_moments, set_grads, snapshot, spoil_grad)

# (class name, kwargs); lr is large enough that an update is many ulps in every dtype.
CONFIGS = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=0.1)),  # large steps expose 1 - beta2 formed in float instead of double
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, maximize=True, amsgrad=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.3, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=1e-2, capturable=True)),
    ("Adam", dict(lr=1e-2, capturable=True, amsgrad=True, weight_decay=0.1)),
]


def _ids(c):
    return c[0] + ":" + ",".join("%s=%s" % kv for kv in c[1].items())


def _ref_kw(kw, device):
    # torch supports capturable only on accelerators; on the CPU its plain loop is the same math.
    if device == "cpu":
        kw = {k: v for k, v in kw.items() if k != "capturable"}
    return kw


def _run_pair(name, kw, dtype, device, steps=STEPS, params=None):
    ours = params if params is not None else make_params(dtype, device)
    ref = clone_params(ours, reference_dtype(dtype))
    opt_ref = getattr(torch.optim, name)(ref, foreach=False, **_ref_kw(kw, device))
    opt = getattr(torchext.optim, name)(ours, **kw)
    for _ in range(steps):
        set_grads(ours, ref)
        opt_ref.step()
        opt.step()
        if ref[0].dtype != dtype:
            # A float32 reference for a half dtype: keep its params and moments at the values the
            # half tensors can hold, so both sides start each step from the same numbers.
            round_moments(opt_ref, dtype)
            with torch.no_grad():
                for q in ref:
                    q.copy_(q.to(dtype).float())
    return ref, ours, opt_ref, opt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_steps_match_torch(config, dtype, device):
    name, kw = config
    ref, ours, opt_ref, opt = _run_pair(name, kw, dtype, device)
    assert_params_close(ours, [q.to(dtype) for q in ref], dtype)
    for p, q in zip(ours, ref):
        assert (p in opt.state) == (q in opt_ref.state)
        if q not in opt_ref.state:
            continue
        s, r = opt.state[p], opt_ref.state[q]
        assert s.keys() == r.keys()
        assert s["step"].dtype == torch.float32 and s["step"].dim() == 0 and float(s["step"]) == STEPS
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if k in r:
                torch.testing.assert_close(s[k], r[k].to(dtype), **PARITY_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_param_without_grad_untouched(device):
    ref, ours, _, opt = _run_pair("Adam", dict(lr=1e-2), torch.float32, device)
    assert ours[NO_GRAD] not in opt.state
    torch.testing.assert_close(ours[NO_GRAD], ref[NO_GRAD], atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_tensor_lr_and_betas(name, device):
    kw = dict(lr=torch.tensor(2e-2, dtype=torch.float64),
              betas=(torch.tensor(0.85, dtype=torch.float64), torch.tensor(0.995, dtype=torch.float64)))
    ref, ours, _, _ = _run_pair(name, kw, torch.float64, device)
    assert_params_close(ours, ref, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_param_groups_and_lr_edits(device):
    ref_a, ref_b = make_params(torch.float64, device), make_params(torch.float64, device, [(5, 5), (9,)])
    ours_a, ours_b = clone_params(ref_a), clone_params(ref_b)
    groups = lambda a, b: [{"params": a}, {"params": b, "lr": 0.03, "amsgrad": True, "betas": (0.5, 0.9)}]
    opt_ref = torch.optim.AdamW(groups(ref_a, ref_b), lr=1e-2, foreach=False)
    opt = torchext.optim.AdamW(groups(ours_a, ours_b), lr=1e-2)
    for step in range(4):
        if step == 2:
            for o in (opt_ref, opt):
                o.param_groups[0]["lr"] = 1e-3
                o.param_groups[1]["weight_decay"] = 0.2
        set_grads(ref_a + ref_b, ours_a + ours_b, skip=())
        opt_ref.step()
        opt.step()
    assert_params_close(ours_a + ours_b, ref_a + ref_b, torch.float64)
    assert "Parameter Group 1" in repr(opt) and "amsgrad: True" in repr(opt)


def test_list_with_only_empty_params():
    ref = make_params(torch.float32, "cpu", [(0,), (0, 3)])
    ours = clone_params(ref)
    opt = torchext.optim.Adam(ours)
    set_grads(ours, skip=())
    opt.step()
    assert all(float(opt.state[p]["step"]) == 1 for p in ours)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("kw", [dict(lr=-1.0), dict(eps=-1e-8), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1)),
                                dict(weight_decay=-1.0), dict(betas=(0.9, torch.tensor(0.99))),
                                dict(lr=torch.tensor([1e-3, 1e-3]))])
def test_constructor_errors_match_torch(name, kw):
    ps = make_params(torch.float32, "cpu")
    with pytest.raises(Exception) as ref:
        getattr(torch.optim, name)(ps, **kw)
    with pytest.raises(type(ref.value)) as ours:
        getattr(torchext.optim, name)(ps, **kw)
    assert str(ours.value) == str(ref.value)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_defaults_match_torch(name):
    ps = make_params(torch.float32, "cpu")
    ours = dict(getattr(torchext.optim, name)(ps).defaults)
    assert ours.pop("master_weights") is False
    assert ours == getattr(torch.optim, name)(ps).defaults


def test_differentiable_is_refused():
    with pytest.raises(NotImplementedError, match="differentiable"):
        torchext.optim.AdamW(make_params(torch.float32, "cpu"), differentiable=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["shape", "dtype", "sparse"])
def test_failed_step_changes_nothing(case, device):
    a, b = make_params(torch.float32, device, [(4, 4)]), make_params(torch.float32, device, [(3, 5)])
    opt = torchext.optim.Adam([{"params": a}, {"params": b}], amsgrad=True)
    set_grads(a + b, skip=())
    opt.step()
    set_grads(a + b, skip=())
    before = snapshot(opt, a + b)
    spoil_grad(b[0], case)
    with pytest.raises(RuntimeError):
        opt.step()
    assert_bitwise_equal(before, snapshot(opt, a + b))


def test_non_leaf_and_duplicate_params_handled_like_torch():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="non-leaf"):
        torch.optim.Adam([x * 2])
    with pytest.raises(ValueError, match="non-leaf"):
        torchext.optim.Adam([x * 2])
    with pytest.warns(UserWarning, match="duplicate parameters"):
        torchext.optim.Adam([x, x])


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_capturable_step_in_cuda_graph(name):
    ref = make_params(torch.float32, "cuda", [(1000,), (0,), (37, 3)])
    ours = clone_params(ref)
    opt_ref = getattr(torch.optim, name)(ref, lr=1e-2, capturable=True, foreach=False)
    opt = getattr(torchext.optim, name)(ours, lr=torch.tensor(1e-2, device="cuda"), capturable=True)
    grads = [torch.zeros_like(p) for p in ours]
    for p, g in zip(ours, grads):
        p.grad = g
    # Warm up on a side stream (creates state), then capture one step.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        set_grads(ref, skip=())
        for q, g in zip(ref, grads):
            g.copy_(q.grad)
        opt_ref.step()
        opt.step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(3):
        set_grads(ref, skip=())
        for q, g in zip(ref, grads):
            g.copy_(q.grad)
        opt_ref.step()
        graph.replay()
    torch.cuda.synchronize()
    assert_params_close(ours, ref, torch.float32)
    assert all(float(opt.state[p]["step"]) == 4 for p in ours)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, master", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_many_tensors_and_misaligned_storage(dtype, master, device):
    # Thousands of tensors overflow any fixed kernel-argument table; views at odd offsets are not
    # 16-byte aligned and take the scalar path; empty tensors sit anywhere in the list. With
    # master weights the float32 state is aligned but the bfloat16 params half the time are not.
    count = 2500 if device == "cuda" else 300
    sizes = torch.randint(0, 300, (count,)).tolist()
    base = torch.randn(sum(sizes) + 3 * count, device=device).to(dtype)
    ours, off = [], 0
    for i, n in enumerate(sizes):
        off += i % 3  # shift every other tensor off the 16-byte grid
        ours.append(torch.nn.Parameter(base[off:off + n].clone() if i % 2 else base[off:off + n]))
        off += n
    ref = clone_params(ours, reference_dtype(dtype))
    opt = torchext.optim.AdamW(ours, lr=1e-2, amsgrad=True, master_weights=master)
    opt_ref = torch.optim.AdamW(ref, lr=1e-2, amsgrad=True, foreach=False)
    for _ in range(3):
        set_grads(ours, ref, skip=())
        opt.step()
        opt_ref.step()
        if not master:
            round_moments(opt_ref, dtype)
    assert_params_close(ours, [q.to(dtype) for q in ref], dtype)
    if master:
        for p, q in zip(ours, ref):
            torch.testing.assert_close(opt.state[p]["master_param"], q.detach(), atol=2e-6, rtol=2e-5)


@pytest.mark.skipif(not HAS_CUDA or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
                    reason="needs a CUDA device with 40 GiB")
def test_tensor_over_2_pow_31_elements():
    n = 2**31 + 77
    p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16, device="cuda"))
    p.grad = torch.full((n,), 2.0, dtype=torch.bfloat16, device="cuda")
    p.grad[-5:] = 4.0
    torchext.optim.SGD([p], lr=0.25).step()
    torch.cuda.synchronize()
    assert p[0].item() == 0.5 and p[2**31 - 1].item() == 0.5 and p[2**31].item() == 0.5
    assert p[-6].item() == 0.5 and (p[-5:] == 0).all()
