"""Property-based parity with torch: hypothesis draws shapes, strides, dtypes and options.

Bounded (small shapes, a fixed number of examples, no deadline) so the file stays well inside the
CI budget; failures print the drawn example, which hypothesis then replays first on the next run.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchext

F = torchext.functional
PROFILE = settings(max_examples=40, deadline=None, derandomize=False,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16])
# Same-dtype tolerances for results that go through one reduction of length <= 64.
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.float16: (5e-3, 5e-3),
       torch.bfloat16: (4e-2, 4e-2)}


@st.composite
def strided(draw, shape, dtype):
    """A tensor of `shape` that is contiguous, transposed, sliced or expanded (a broadcast view)."""
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if layout == "transposed" and len(shape) >= 2:
        t = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g, dtype=torch.float64).transpose(-1, -2)
    elif layout == "sliced":
        t = torch.randn(*shape[:-1], 2 * shape[-1] + 1, generator=g, dtype=torch.float64)[..., 1::2]
    elif layout == "expanded" and len(shape) >= 2:
        t = torch.randn(*shape[:-2], 1, shape[-1], generator=g, dtype=torch.float64).expand(*shape)
    else:
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return t.to(dtype) if dtype != torch.float64 else t


def _close(a, b, dtype, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(a, b, atol=atol * scale, rtol=rtol, equal_nan=True)  # mean of empty is nan


@PROFILE
@given(data=st.data(), dtype=DTYPES, shape=st.lists(st.integers(0, 9), min_size=1, max_size=4))
def test_relu_matches_torch(data, dtype, shape):
    x = data.draw(strided(shape, dtype))
    torch.testing.assert_close(F.relu(x), torch.relu(x), atol=0, rtol=0)
    y = x.clone()
    F.relu(y, inplace=True)
    torch.testing.assert_close(y, torch.relu(x), atol=0, rtol=0)


@PROFILE
@given(data=st.data(), dtype=DTYPES, batch=st.lists(st.integers(0, 5), max_size=2),
       k=st.integers(1, 40), n=st.integers(1, 40), bias=st.booleans(), fused=st.booleans())
def test_linear_matches_torch(data, dtype, batch, k, n, bias, fused):
    x = data.draw(strided(batch + [k], dtype))
    w = data.draw(strided([n, k], dtype))
    b = data.draw(strided([n], dtype)) if bias else None
    ours = (F.linear_relu if fused else F.linear)(x, w, b)
    ref = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    if fused:
        ref = torch.relu(ref)
    assert ours.shape == ref.shape and ours.dtype == dtype
    # Accumulation in float (double for float64); the one rounding of the output dominates.
    _close(ours.double(), ref, dtype, scale=max(1.0, k ** 0.5))


@PROFILE
@given(data=st.data(), dtype=DTYPES, shape=st.lists(st.integers(0, 9), min_size=1, max_size=3),
       reduction=st.sampled_from(["none", "mean", "sum"]))
def test_mse_loss_matches_torch(data, dtype, shape, reduction):
    x = data.draw(strided(shape, dtype)).requires_grad_()
    t = data.draw(strided(shape, dtype))
    x_ref = x.detach().double().requires_grad_()
    ours = F.mse_loss(x, t, reduction=reduction)
    ref = torch.nn.functional.mse_loss(x_ref, t.double(), reduction=reduction)
    assert ours.dtype == dtype
    _close(ours.double(), ref, dtype, scale=max(1.0, float(ref.detach().abs().max()) if ref.numel() else 1.0))
    if x.numel() and not ref.isnan().any():
        g = torch.ones_like(ref)
        ours.backward(g.to(dtype))
        ref.backward(g)
        _close(x.grad.double(), x_ref.grad, dtype, scale=max(1.0, float(x_ref.grad.abs().max())))


@st.composite
def optimizer_case(draw):
    name = draw(st.sampled_from(["SGD", "Adam", "AdamW"]))
    if name == "SGD":
        momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
        nesterov = momentum > 0 and draw(st.booleans())
        kw = dict(lr=draw(st.sampled_from([1e-3, 0.1])), momentum=momentum, nesterov=nesterov,
                  dampening=0.0 if nesterov else draw(st.sampled_from([0.0, 0.3])),
                  weight_decay=draw(st.sampled_from([0.0, 1e-2])), maximize=draw(st.booleans()))
    else:
        kw = dict(lr=draw(st.sampled_from([1e-3, 0.1])), betas=draw(st.sampled_from([(0.9, 0.999), (0.5, 0.9)])),
                  eps=draw(st.sampled_from([1e-8, 1e-3])), weight_decay=draw(st.sampled_from([0.0, 1e-2])),
                  amsgrad=draw(st.booleans()), maximize=draw(st.booleans()))
    return name, kw


@PROFILE
@given(case=optimizer_case(), dtype=st.sampled_from([torch.float64, torch.float32]),
       sizes=st.lists(st.integers(0, 300), min_size=1, max_size=5), seed=st.integers(0, 2**31 - 1),
       grad_mask=st.lists(st.booleans(), min_size=5, max_size=5))
def test_optimizer_matches_torch(case, dtype, sizes, seed, grad_mask):
    name, kw = case
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=dtype) for s in sizes]
    ours = [p.clone().requires_grad_() for p in params]
    ref = [p.clone().requires_grad_() for p in params]
    opt = getattr(torchext.optim, name)(ours, **kw)
    opt_ref = getattr(torch.optim, name)(ref, foreach=False, **kw)
    for _ in range(3):
        for i, (p, q) in enumerate(zip(ours, ref)):
            if grad_mask[i]:  # some params never get a gradient: both optimizers skip them
                grad = torch.randn(p.shape, generator=g, dtype=dtype)
                p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        opt_ref.step()
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-6, rtol=1e-5)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, **tol)


# Views that an in-place ReLU may write through. "reshape" flattens the leading dims: a view of a
# contiguous tensor, a copy otherwise (then the write does not reach the original, for torch too).
_VIEWS = {
    "whole": lambda h: h,
    "transpose": lambda h: h.transpose(-1, -2) if h.dim() >= 2 else h,
    "slice": lambda h: h[..., 1::2],
    "reshape": lambda h: h.reshape(-1, h.shape[-1]),
    "first_rows": lambda h: h[:1] if h.dim() >= 2 else h[:2],
}


@st.composite
def program(draw):
    """A short chain of torchext calls: (kind, options) steps over a float64 tensor of any rank."""
    steps = []
    width = draw(st.integers(1, 6))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["linear", "linear_relu", "relu", "relu_", "keep"]))
        if kind in ("linear", "linear_relu"):
            out = draw(st.integers(1, 6))
            steps.append((kind, dict(k=width, n=out, bias=draw(st.booleans()))))
            width = out
        elif kind == "relu_":
            steps.append((kind, dict(view=draw(st.sampled_from(sorted(_VIEWS))), keep=draw(st.booleans()))))
        else:
            steps.append((kind, {}))
    return width, steps


def _run_program(steps, x_leaf, params, linear, linear_relu, relu, relu_):
    """The outputs of `steps` from x_leaf * 1; every step's weights come from params in order."""
    h = x_leaf * 1  # not a leaf, so in-place writes are allowed on it
    outputs, it = [], iter(params)
    for kind, opt in steps:
        if kind in ("linear", "linear_relu"):
            w = next(it)
            b = next(it) if opt["bias"] else None
            h = (linear if kind == "linear" else linear_relu)(h, w, b)
        elif kind == "relu":
            h = relu(h)
        elif kind == "relu_":
            view = relu_(_VIEWS[opt["view"]](h))
            if opt["keep"]:
                outputs.append(view)
        else:
            outputs.append(h)
    return outputs + [h]


def _program_shapes(steps, lead):
    """The input's shape ([*lead, width]), then each weight's and bias's, in the order the steps use them."""
    width0 = next((opt["k"] for kind, opt in steps if kind in ("linear", "linear_relu")), 3)
    shapes = [(*lead, width0)]
    for kind, opt in steps:
        if kind in ("linear", "linear_relu"):
            shapes.append((opt["n"], opt["k"]))
            if opt["bias"]:
                shapes.append((opt["n"],))
    return shapes


# (linear, linear_relu, relu, in-place relu) of each library.
_OURS = (F.linear, F.linear_relu, F.relu, lambda t: F.relu(t, inplace=True))
_THEIRS = (torch.nn.functional.linear, lambda x, w, b: torch.relu(torch.nn.functional.linear(x, w, b)),
           torch.relu, torch.relu_)


@PROFILE
@given(prog=program(), lead=st.lists(st.integers(1, 4), max_size=2), seed=st.integers(0, 2**31 - 1))
def test_random_programs_match_torch(prog, lead, seed):
    # Chains of Linear, fused Linear+ReLU and ReLU (out of place, and in place on views of the
    # intermediate tensors), with gradients flowing back from any of the intermediates: the same
    # values and gradients as the chain written with torch's ops, or, where torch refuses (an
    # in-place write over a tensor a node saved), the same refusal.
    _, steps = prog
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(s, generator=g, dtype=torch.float64) for s in _program_shapes(steps, lead)]

    def run(linear, linear_relu, relu, relu_):
        leaves = [t.clone().requires_grad_() for t in tensors]
        try:
            outs = _run_program(steps, leaves[0], leaves[1:], linear, linear_relu, relu, relu_)
            gen = torch.Generator().manual_seed(seed + 1)
            grads = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
            return outs, torch.autograd.grad(outs, leaves, grads, allow_unused=True)
        except RuntimeError as e:
            return type(e), str(e)

    ours, theirs = run(*_OURS), run(*_THEIRS)
    if isinstance(theirs[0], type):  # torch refused
        assert ours[0] is theirs[0] and "modified by an inplace operation" in theirs[1], (ours, theirs)
        assert "modified by an inplace operation" in ours[1], ours[1]
        return
    assert not isinstance(ours[0], type), ours
    for got, want in zip(ours[0], theirs[0]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    for got, want in zip(ours[1], theirs[1]):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@PROFILE
@given(prog=program(), lead=st.lists(st.integers(1, 4), max_size=2), seed=st.integers(0, 2**31 - 1))
def test_random_programs_higher_order_match_torch(prog, lead, seed):
    # The same chains through the other derivatives the nodes carry: forward-mode tangents (every
    # input and weight a dual tensor) and a double backward (the gradient of <gradients, v>).
    import torch.autograd.forward_ad as fwAD

    _, steps = prog
    g = torch.Generator().manual_seed(seed)
    shapes = _program_shapes(steps, lead)
    primals = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    tangents = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]

    def forward_mode(fns):
        try:
            with fwAD.dual_level():
                duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
                outs = _run_program(steps, duals[0], duals[1:], *fns)
                return [fwAD.unpack_dual(o).tangent for o in outs]
        except RuntimeError as e:
            return type(e)

    def double_backward(fns):
        leaves = [p.clone().requires_grad_() for p in primals]
        try:
            outs = _run_program(steps, leaves[0], leaves[1:], *fns)
            total = sum((o * o).sum() for o in outs)  # a loss whose gradients depend on the inputs
            grads = torch.autograd.grad(total, leaves, create_graph=True, allow_unused=True)
            inner = sum((gr * t).sum() for gr, t in zip(grads, tangents) if gr is not None)
            if not isinstance(inner, torch.Tensor) or not inner.requires_grad:
                return []
            return torch.autograd.grad(inner, leaves, allow_unused=True)
        except RuntimeError as e:
            return type(e)

    for run in (forward_mode, double_backward):
        got, want = run(_OURS), run(_THEIRS)
        if isinstance(want, type):
            assert got is want, (run.__name__, got, want)
            continue
        assert not isinstance(got, type), (run.__name__, got)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert (a is None) == (b is None), run.__name__
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=run.__name__)
