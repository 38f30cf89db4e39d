"""Mixed precision: torchext modules under torch.autocast, torchext optimizers under GradScaler."""
import pytest
import torch

import torchext
from conftest import HAS_CUDA

AUTOCAST = [("cpu", torch.bfloat16),
            pytest.param("cuda", torch.float16, marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")),
            pytest.param("cuda", torch.bfloat16, marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]
TOL = {torch.bfloat16: dict(rtol=2e-2, atol=2e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}


def _pair(device, fused=False):
    nn = torchext.nn
    ref = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5)).to(device)
    if fused:
        ours = torch.nn.Sequential(nn.LinearReLU(40, 30), torch.nn.Identity(), nn.Linear(30, 5)).to(device)
    else:
        ours = torch.nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5)).to(device)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("device,dtype", AUTOCAST)
def test_autocast_matches_torch(device, dtype, fused):
    ours, ref = _pair(device, fused)
    x = torch.randn(16, 40, device=device)
    y = torch.randn(16, 5, device=device)
    outs = []
    for model, loss_fn in ((ours, torchext.nn.MSELoss()), (ref, torch.nn.MSELoss())):
        with torch.autocast(device, dtype=dtype):
            out = model(x)
            loss = loss_fn(out, y)
        loss.backward()
        outs.append((out, loss))
    (out, loss), (out_ref, loss_ref) = outs
    assert out.dtype == out_ref.dtype == dtype  # Linear runs in the low-precision dtype
    assert loss.dtype == loss_ref.dtype == torch.float32  # mse_loss is an fp32 op under autocast
    torch.testing.assert_close(out, out_ref, **TOL[dtype])
    torch.testing.assert_close(loss, loss_ref, **TOL[dtype])
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32  # grads reach the fp32 params through the casts
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-2, atol=5e-2 * q.grad.abs().max().item())


def test_autocast_leaves_float64_alone():
    lin = torchext.nn.Linear(4, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lin(torch.randn(2, 4, dtype=torch.float64))
    assert out.dtype == torch.float64


def _scaler_run(opt_cls, device, overflow_at, **kw):
    # float64, so that the comparison with torch checks the scaler logic rather than rounding.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model = model.to(device=device, dtype=torch.float64)
    model = torchext.nn.convert(model) if opt_cls.__module__.startswith("torchext") else model
    opt = opt_cls(model.parameters(), lr=1e-2, **kw)
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10)
    x = torch.randn(12, 10, device=device, dtype=torch.float64)
    y = torch.randn(12, 2, device=device, dtype=torch.float64)
    snapshots = []
    for t in range(4):
        opt.zero_grad()
        scaler.scale(((model(x) - y) ** 2).sum()).backward()
        if t == overflow_at:
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        snapshots.append((before, [p.detach().clone() for p in model.parameters()]))
    return model, opt, snapshots


OPTIMS = [("SGD", dict(momentum=0.9)), ("SGD", dict()), ("Adam", dict()), ("AdamW", dict(amsgrad=True))]


@pytest.mark.parametrize("name,kw", OPTIMS)
@pytest.mark.parametrize("overflow_at", [0, 2])
def test_grad_scaler_skips_overflowing_step_like_torch(name, kw, overflow_at):
    ours, opt, snaps = _scaler_run(getattr(torchext.optim, name), "cpu", overflow_at, **kw)
    ref, ref_opt, _ = _scaler_run(getattr(torch.optim, name), "cpu", overflow_at, **kw)
    before, after = snaps[overflow_at]
    for b, a in zip(before, after):
        assert torch.equal(a, b)  # the overflowing step changed nothing
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    sd, ref_sd = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert sd.keys() == ref_sd.keys()
    for i in ref_sd:
        for key in ref_sd[i]:
            torch.testing.assert_close(sd[i][key], ref_sd[i][key], rtol=1e-10, atol=1e-12)
