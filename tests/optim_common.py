"""Helpers for the optimizer tests: twin parameter sets driven by identical gradients."""
import torch

import torchext

# Shapes of one parameter list: odd sizes, a zero-element param in the middle, a vector-unfriendly
# tail and one param that never gets a gradient (index NO_GRAD).
SHAPES = [(7, 13), (0, 5), (1,), (33,), (4, 3, 5), (1031,)]
NO_GRAD = 3

# Tolerances after STEPS steps against torch in the same dtype. Half types: torch rounds after every
# op, the kernels round once, so the two may drift a few ulps apart.
STEPS = 5
PARITY_TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=6e-2, rtol=6e-2),
}


def make_params(dtype, device, shapes=SHAPES):
    return [torch.nn.Parameter(torch.randn(s, dtype=torch.float64, device=device).to(dtype)) for s in shapes]


def clone_params(params, dtype=None):
    return [torch.nn.Parameter(p.detach().to(dtype or p.dtype, copy=True)) for p in params]


def reference_dtype(dtype):
    """torch's Adam in float16 divides by eps=1e-8, which float16 rounds to 0 (0/0 once the second
    moment underflows), so half-type results are compared against torch in float32 math."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# The per-param buffers of torch's (and torchext's) SGD / Adam state.
BUFFER_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def round_moments(opt, dtype):
    """Rounds a float32 reference optimizer's moments to dtype after a step, as torchext stores
    them in the param dtype (without master weights). Not a small effect a tolerance could absorb: a float16 second moment
    can underflow, and later updates of that element then differ by tens of percent."""
    for state in opt.state.values():
        for key in BUFFER_KEYS:
            if key in state:
                state[key].copy_(state[key].to(dtype).float())


def set_grads(*param_lists, skip=(NO_GRAD,), scale=1.0):
    """Fresh random grads, identical across the lists; params at `skip` get none."""
    for i, p in enumerate(param_lists[0]):
        g = None if i in skip else (torch.randn(p.shape, dtype=torch.float64, device=p.device) * scale).to(p.dtype)
        for ps in param_lists:
            ps[i].grad = None if g is None else g.to(ps[i].dtype, copy=True)


def snapshot(opt, params):
    """Every param and state tensor, copied, for bit-for-bit comparisons."""
    state = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
             for i, p in enumerate(params) if p in opt.state}
    return [p.detach().clone() for p in params], state


def assert_bitwise_equal(before, after):
    (p0, s0), (p1, s1) = before, after
    for a, b in zip(p0, p1):
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all()
        assert a.view(torch.uint8 if a.element_size() == 1 else a.dtype).equal(b)
    assert s0.keys() == s1.keys()
    for i in s0:
        assert s0[i].keys() == s1[i].keys()
        for k in s0[i]:
            assert torch.equal(s0[i][k], s1[i][k]), (i, k)


def assert_params_close(ours, ref, dtype):
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), **PARITY_TOL[dtype])


def spoil_grad(p, case):
    """Gives p a grad torch's own setter would refuse, the way a buggy hook or .data edit could."""
    if case == "shape":
        p.grad.data = torch.randn(p.numel() + 1, dtype=p.dtype, device=p.device)
    elif case == "dtype":
        # Through .data: the grad setter refuses another dtype (torch >= 2.10 lets p.grad_dtype = None
        # lift that, older releases have no way round it but this one).
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.data = torch.randn(p.shape, dtype=torch.float64 if p.dtype != torch.float64 else torch.float32,
                                  device=p.device)
    elif case == "sparse":
        p.grad = torch.randn(p.shape, dtype=p.dtype, device=p.device).to_sparse()
    else:
        raise ValueError(case)


# The optimizer configurations the state, aliasing, scheduler and special-value tests run, and a
# torch / torchext pair of each over twin float64 params.
STATE_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2)),
]
STATE_IDS = ["%s-%d" % (c[0], i) for i, c in enumerate(STATE_CASES)]


def optimizer_pair(name, kw, device, dtype=torch.float64):
    a = make_params(dtype, device)
    b = clone_params(a)
    return a, b, getattr(torch.optim, name)(a, foreach=False, **kw), getattr(torchext.optim, name)(b, **kw)
