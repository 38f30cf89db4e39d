"""Optimizer inputs beyond real dense finite tensors, against torch.optim: complex params
(stepped as real and imaginary parts), sparse grads (SGD takes them, the others refuse them with
torch's error), and infinities and NaNs in params, grads and momentum buffers."""
import copy

import pytest
import torch

import torchext
from conftest import DEVICES
from optim_common import BUFFER_KEYS, PARITY_TOL, STATE_CASES, STATE_IDS


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("case", STATE_CASES + [("SGD", dict(lr=0.1)),
                                               ("AdamW", dict(lr=1e-2, maximize=True, amsgrad=True))],
                         ids=STATE_IDS + ["SGD-plain", "AdamW-maximize"])
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
@pytest.mark.parametrize("case", STATE_CASES + [("SGD", dict(lr=0.1)), ("Adam", dict(lr=1e-2)),
                                                ("AdamW", dict(lr=1e-2, weight_decay=0.0, amsgrad=True))],
                         ids=STATE_IDS + ["SGD-plain", "Adam-plain", "AdamW-no-decay"])
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
