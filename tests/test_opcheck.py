"""torch.library.opcheck on every torchext op: schema, fake kernel, dispatcher registration and
AOT dispatch agree with the real kernels, for every dtype on every device; and the optimizer ops
once more on a first step as the optimizers launch it."""
import pytest
import torch

import torchext  # noqa: F401
from conftest import ALL_DTYPES, DEVICES
from optim_common import make_params

OPS = sorted(name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("torchext::"))


def _rand(*shape, dtype, device):
    return torch.randn(shape, dtype=torch.float64, device=device).to(dtype)


def _optim_lists(dtype, device, n=3):
    # Odd sizes and an empty tensor in the middle of the list.
    shapes = [(7, 5), (0,), (33,)][:n]
    params = [_rand(*s, dtype=dtype, device=device) for s in shapes]
    grads = [_rand(*s, dtype=dtype, device=device) for s in shapes]
    return params, grads


def _scalar(value, device):
    return torch.tensor(value, dtype=torch.float32, device=device)


def _sgd_samples(dtype, device):
    out = []
    for momentum, count in ((0.0, None), (0.9, 0.0), (0.9, 3.0)):
        params, grads = _optim_lists(dtype, device)
        bufs = [torch.randn_like(p) for p in params] if momentum else []
        counts = [_scalar(count, device) for _ in params] if momentum else []
        for lr_tensor, scale, found in ((None, None, None), (_scalar(0.1, device), _scalar(4.0, device),
                                                              _scalar(0.0, device))):
            out.append(((params, grads, bufs, counts, [], 0.1, momentum, 0.0, 1e-2, False, False,
                         lr_tensor, scale, found), {}))
        if dtype in (torch.float16, torch.bfloat16):  # master weights, with float32 buffers beside them
            masters = [p.float() for p in params]
            fp32_bufs = [b.float() for b in bufs]
            out.append(((params, grads, fp32_bufs, counts, masters, 0.1, momentum, 0.0, 1e-2, False, False,
                         None, None, None), {}))
    return out


def _adam_samples(dtype, device):
    out = []
    for amsgrad, decoupled in ((False, False), (True, True)):
        params, grads = _optim_lists(dtype, device)
        masters = [p.float() for p in params] if dtype in (torch.float16, torch.bfloat16) else []
        state_dtype = torch.float32 if masters else dtype  # moments beside master weights are float32
        m = [torch.randn_like(p, dtype=state_dtype) for p in params]
        v = [torch.rand_like(p, dtype=state_dtype) for p in params]
        vmax = [x.clone() for x in v] if amsgrad else []
        steps = [_scalar(2.0, device) for _ in params]
        for lr_tensor, scale, found in ((None, None, None), (_scalar(1e-3, device), _scalar(8.0, device),
                                                              _scalar(0.0, device))):
            out.append(((params, grads, m, v, vmax, steps, masters, 1e-3, 0.9, 0.999, 1e-8, 1e-2, amsgrad,
                         False, decoupled, lr_tensor, scale, found), {}))
    return out



LOWMEM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the param dtypes the low-memory steps take


def _lowmem_state(params, kind, device, signed=True):
    """State buffers of one storage kind ("int8" codes with per-256 block scales, or a dtype) and
    their scales (empty unless int8)."""
    if kind == "int8":
        low = -127 if signed else 0
        codes = [torch.randint(low, 128, p.shape, dtype=torch.int8, device=device) for p in params]
        scales = [torch.rand((p.numel() + 255) // 256, device=device) + 0.5 for p in params]
        return codes, scales
    return [torch.rand_like(p, dtype=kind) if not signed else torch.randn_like(p, dtype=kind) for p in params], []


def _lowmem_cases(dtype):
    """(state kind, kahan, stochastic rounding, master weights) for params of dtype."""
    half = dtype != torch.float32
    cases = [("int8", False, False, False), (torch.bfloat16, False, half, False), (torch.float32, half, half, False)]
    if half:
        cases.append(("int8", False, False, True))
    return cases


def _sr_state(device):
    return torch.tensor([12345, 7], dtype=torch.int64, device=device)


def _sgd_lowmem_samples(dtype, device):
    out = []
    for kind, kahan, sr, master in _lowmem_cases(dtype):
        params, grads = _optim_lists(dtype, device)
        params.append(_rand(600, dtype=dtype, device=device))  # three int8 blocks, the last one partial
        grads.append(_rand(600, dtype=dtype, device=device))
        bufs, scales = _lowmem_state(params, kind, device)
        counts = [_scalar(2.0, device) for _ in params]
        masters = [p.float() for p in params] if master else []
        comps = [torch.zeros_like(p) for p in params] if kahan else []
        out.append(((params, grads, bufs, counts, masters, 0.1, 0.9, 0.0, 1e-2, False, False,
                     _scalar(0.05, device), _scalar(4.0, device), _scalar(0.0, device),
                     scales, comps, _sr_state(device) if sr else None), {}))
    return out


def _adam_lowmem_samples(dtype, device):
    out = []
    for kind, kahan, sr, master in _lowmem_cases(dtype):
        params, grads = _optim_lists(dtype, device)
        params.append(_rand(600, dtype=dtype, device=device))
        grads.append(_rand(600, dtype=dtype, device=device))
        m, m_scales = _lowmem_state(params, kind, device)
        v, v_scales = _lowmem_state(params, kind, device, signed=False)
        amsgrad = kind != "int8"  # int8 state does not take amsgrad
        vmax = [x.clone() for x in v] if amsgrad else []
        steps = [_scalar(2.0, device) for _ in params]
        masters = [p.float() for p in params] if master else []
        comps = [torch.zeros_like(p) for p in params] if kahan else []
        out.append(((params, grads, m, v, vmax, steps, masters, 1e-3, 0.9, 0.999, 1e-8, 1e-2, amsgrad, False, True,
                     None, _scalar(8.0, device), _scalar(0.0, device), m_scales, v_scales, comps,
                     _sr_state(device) if sr else None), {}))
    return out

def samples(op, dtype, device):
    """(args, kwargs) pairs for op, covering its optional arguments."""
    r = lambda *s: _rand(*s, dtype=dtype, device=device)  # noqa: E731
    if op == "relu":
        return [((r(5, 7),), {}), ((r(6, 4).t(),), {}), ((r(0, 3),), {})]
    if op == "relu_":
        return [((r(5, 7),), {}), ((r(0),), {})]
    if op == "relu_backward":
        return [((r(5, 7), torch.relu(r(5, 7))), {})]
    if op in ("linear", "linear_relu"):
        return [((r(5, 7), r(3, 7), r(3)), {}), ((r(5, 7), r(3, 7), None), {}),
                ((r(7, 5).t(), r(7, 3).t(), r(3)), {}), ((r(0, 7), r(3, 7), r(3)), {})]
    if op == "linear_batched":
        return [((r(4, 5, 7), r(4, 3, 7), r(4, 3), relu), {}) for relu in (False, True)] + [
            ((r(4, 7, 5).transpose(1, 2), r(4, 3, 7), None, False), {}), ((r(0, 5, 7), r(0, 3, 7), None, True), {})]
    if op == "linear_bias_grad":
        return [((r(5, 3),), {}), ((r(0, 3),), {})]
    if op == "linear_relu_grad":  # a result from ReLU, and any tensor of the shape
        return [((r(5, 3), torch.relu(r(5, 3))), {}), ((r(5, 7), r(5, 7)), {})]
    if op in ("mse_loss", "mse_loss_forward"):
        return [((r(5, 7), r(5, 7), red), {}) for red in (0, 1, 2)]
    if op == "mse_loss_backward":
        return [((r(5, 7), r(5, 7), 0), {}), ((r(), r(5, 7), 1), {}), ((r(), r(5, 7), 2), {})]
    if op == "sgd_step_":
        return _sgd_samples(dtype, device)
    if op == "adam_step_":
        return _adam_samples(dtype, device)
    if op in ("sgd_lowmem_step_", "adam_lowmem_step_"):
        if dtype not in LOWMEM_DTYPES:
            return []  # the op refuses other param dtypes with a clear error
        return (_sgd_lowmem_samples if op == "sgd_lowmem_step_" else _adam_lowmem_samples)(dtype, device)
    raise AssertionError("no opcheck samples for torchext::%s: add them here" % op)


def test_every_op_has_samples():
    assert "relu" in OPS
    # One namespace for every op: the Linear family registered there, beside the rest.
    for name in ["linear", "linear_relu", "linear_bias_grad", "linear_relu_grad"]:
        assert name in OPS and hasattr(torch.ops.torchext, name)
    for op in OPS:
        assert samples(op, torch.float32, "cpu"), op


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, dtype, device):
    cases = samples(op, dtype, device)
    if not cases:
        pytest.skip("torchext::%s takes no %s inputs" % (op, dtype))
    for args, kwargs in cases:
        torch.library.opcheck(getattr(torch.ops.torchext, op).default, args, kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["adam_step_", "sgd_step_"])
def test_optim_ops_pass_opcheck_on_a_first_step(op, device):
    # A first step (counters at 0) with an empty param mid-list, as the optimizers launch it: schema
    # mutation annotations, fake kernels and dispatch agree, so torch.compile can trace a step.
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
