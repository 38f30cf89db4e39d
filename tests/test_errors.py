"""Bad inputs to every op and module: the exception type torch raises for the same call, a message
naming the argument, and nothing written. Optimizer-specific cases live in tests/test_optim_*.py
(constructor errors, failed step / load_state_dict leave everything unchanged); this file holds
the cross-op table and the edges (non-finite values, aliasing, empty and single-element inputs).
"""
import pytest
import torch

import torchext
from conftest import DEVICES, HAS_CUDA

F = torchext.functional
TF = torch.nn.functional


def _x(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype)


# (id, torchext call, torch call or None, expected type when torch does not raise, message regex)
# When torch raises, torchext must raise the same type. Where torch computes something torchext
# has no kernel for (sparse Linear, quantized ReLU), torchext raises NotImplementedError,
# which is what torch's own kernels raise for a dtype or layout they were not built for.
CASES = [
    # Linear
    ("linear in_features mismatch", lambda: F.linear(_x(4, 6), _x(3, 5)), lambda: TF.linear(_x(4, 6), _x(3, 5)),
     None, "input.*weight|in_features"),
    ("linear bias wrong length", lambda: F.linear(_x(4, 5), _x(3, 5), _x(4)),
     lambda: TF.linear(_x(4, 5), _x(3, 5), _x(4)), None, "bias"),
    ("linear bias 2-D", lambda: F.linear(_x(4, 5), _x(3, 5), _x(3, 1)),
     lambda: TF.linear(_x(4, 5), _x(3, 5), _x(3, 1)), None, "bias"),
    ("linear weight 3-D", lambda: F.linear(_x(4, 5), _x(2, 3, 5)), lambda: TF.linear(_x(4, 5), _x(2, 3, 5)),
     None, "weight"),
    ("linear 1-D weight with bias, 2-D input", lambda: F.linear(_x(4, 5), _x(5), _x()),
     lambda: TF.linear(_x(4, 5), _x(5), _x()), None, "bias"),
    ("linear 0-dim input", lambda: F.linear(_x(), _x(3, 5)), lambda: TF.linear(_x(), _x(3, 5)), None, "1D|input"),
    ("linear input/weight dtypes", lambda: F.linear(_x(4, 5), _x(3, 5, dtype=torch.float64)),
     lambda: TF.linear(_x(4, 5), _x(3, 5, dtype=torch.float64)), None, "dtype"),
    ("linear bias dtype", lambda: F.linear(_x(4, 5), _x(3, 5), _x(3, dtype=torch.float64)),
     lambda: TF.linear(_x(4, 5), _x(3, 5), _x(3, dtype=torch.float64)), None, "bias"),
    ("linear integer input only", lambda: F.linear(_x(4, 5).long(), _x(3, 5)),
     lambda: TF.linear(_x(4, 5).long(), _x(3, 5)), None, "dtype"),
    ("linear bool", lambda: F.linear(_x(4, 5).bool(), _x(3, 5).bool()),
     lambda: TF.linear(_x(4, 5).bool(), _x(3, 5).bool()), None, "input|Bool"),
    # (complex input with complex weights works, as in torch: test_linear.py)
    ("linear complex input, real weight", lambda: F.linear(_x(4, 5).cfloat(), _x(3, 5)),
     lambda: TF.linear(_x(4, 5).cfloat(), _x(3, 5)), None, "dtype"),
    ("linear sparse input", lambda: F.linear(_x(4, 5).to_sparse(), _x(3, 5)), None, NotImplementedError,
     "input|Sparse"),
    ("linear_relu in_features mismatch", lambda: F.linear_relu(_x(4, 6), _x(3, 5)),
     lambda: TF.linear(_x(4, 6), _x(3, 5)), None, "input.*weight|in_features"),
    ("linear not a tensor", lambda: F.linear([1.0], _x(3, 1)), lambda: TF.linear([1.0], _x(3, 1)), None, "input"),
    ("Linear negative features", lambda: torchext.nn.Linear(-1, 3), lambda: torch.nn.Linear(-1, 3), None,
     "negative"),
    ("Linear wrong input width", lambda: torchext.nn.Linear(5, 3)(_x(2, 4)), lambda: torch.nn.Linear(5, 3)(_x(2, 4)),
     None, "input.*weight|in_features"),
    # ReLU
    ("relu bool", lambda: F.relu(torch.tensor([True])), lambda: torch.relu(torch.tensor([True])), None, "self"),
    ("relu complex", lambda: F.relu(_x(3).cfloat()), lambda: torch.relu(_x(3).cfloat()), None, "self"),
    ("relu sparse", lambda: F.relu(_x(3).to_sparse()), None, NotImplementedError, "relu|Sparse"),
    ("relu quantized", lambda: F.relu(torch.quantize_per_tensor(_x(3), 0.1, 0, torch.qint8)), None,
     NotImplementedError, "relu|Quantized"),
    ("relu_ expanded", lambda: F.relu(_x(1, 3).expand(2, 3), inplace=True),
     lambda: torch.relu_(_x(1, 3).expand(2, 3)), None, "memory location"),
    ("relu not a tensor", lambda: F.relu([1.0]), lambda: torch.relu([1.0]), None, "input"),
    # MSE loss
    ("mse bad reduction", lambda: F.mse_loss(_x(3), _x(3), reduction="avg"),
     lambda: TF.mse_loss(_x(3), _x(3), reduction="avg"), None, "avg"),
    ("MSELoss bad reduction", lambda: torchext.nn.MSELoss(reduction="avg")(_x(3), _x(3)),
     lambda: torch.nn.MSELoss(reduction="avg")(_x(3), _x(3)), None, "avg"),
    ("mse not broadcastable", lambda: F.mse_loss(_x(4, 5), _x(3, 5)), lambda: TF.mse_loss(_x(4, 5), _x(3, 5)),
     None, "size|shape"),
    ("mse integer", lambda: F.mse_loss(_x(3).long(), _x(3).long()),
     lambda: TF.mse_loss(_x(3).long(), _x(3).long()), None, "input|Long"),
    ("mse complex", lambda: F.mse_loss(_x(3).cfloat(), _x(3).cfloat()),
     lambda: TF.mse_loss(_x(3).cfloat(), _x(3).cfloat()), None, "input|Complex"),
    ("mse sparse", lambda: F.mse_loss(_x(3).to_sparse(), _x(3)), lambda: TF.mse_loss(_x(3).to_sparse(), _x(3)),
     None, "mse|Sparse|sparse"),
]


def _torch_error(call):
    if call is None:
        return None
    try:
        call()
    except Exception as e:  # noqa: BLE001  (we want whatever torch raises)
        return type(e)
    return None


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name,ours,theirs,fallback,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_like_torch(name, ours, theirs, fallback, pattern):
    expected = _torch_error(theirs)
    if theirs is not None:
        assert expected is not None, "torch accepts %r now: revisit this case" % name
    else:
        expected = fallback
    with pytest.raises(expected, match=pattern):
        ours()


def test_case_table_is_large():
    # The closing note quotes this count; keep it honest.
    assert len(CASES) >= 25


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_mixed_devices_raise_runtime_error(which):
    x, w, b = _x(4, 5).cuda(), _x(3, 5).cuda(), _x(3).cuda()
    if which == "weight":
        w = w.cpu()
    else:
        b = b.cpu()
    with pytest.raises(RuntimeError):
        TF.linear(x, w, b)
    with pytest.raises(RuntimeError, match=which):
        F.linear(x, w, b)
    with pytest.raises(RuntimeError):
        F.mse_loss(x[:, :3], b.cpu().expand(4, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_relu_inplace_aliasing(device):
    x = torch.randn(6, 8, device=device)
    ref = torch.relu(x)
    view = x[:, 2:5]  # a view aliasing part of x: only that part changes
    out = F.relu(view, inplace=True)
    assert out.data_ptr() == view.data_ptr()
    torch.testing.assert_close(x[:, 2:5], ref[:, 2:5], atol=0, rtol=0)
    assert (x[:, :2] < 0).any() or (x[:, 5:] < 0).any()  # the rest kept its negatives


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_propagate_like_torch(value, device):
    x = torch.randn(5, 7, device=device)
    x[1, 3] = value
    w = torch.randn(4, 7, device=device)
    b = torch.randn(4, device=device)
    torch.testing.assert_close(F.relu(x), torch.relu(x), equal_nan=True, atol=0, rtol=0)
    # A non-finite input element reaches exactly the output row it belongs to.
    ours, ref = F.linear(x, w, b), TF.linear(x, w, b)
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.isinf(), ref.isinf())
    torch.testing.assert_close(ours, ref, equal_nan=True, rtol=1e-5, atol=1e-5)
    fused, fused_ref = F.linear_relu(x, w, b), torch.relu(TF.linear(x, w, b))
    assert torch.equal(fused.isnan(), fused_ref.isnan())
    t = torch.randn(5, 7, device=device)
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(F.mse_loss(x, t, reduction=reduction), TF.mse_loss(x, t, reduction=reduction),
                                   equal_nan=True, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_single_element_and_empty_inputs(device):
    one = torch.randn(1, 1, device=device, requires_grad=True)
    w = torch.randn(1, 1, device=device, requires_grad=True)
    out = F.linear_relu(one, w)
    out.sum().backward()
    ref = torch.relu(TF.linear(one, w))
    torch.testing.assert_close(out, ref)
    empty = torch.randn(0, 5, device=device, requires_grad=True)
    lin = torchext.nn.Linear(5, 3).to(device)
    y = lin(empty)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert empty.grad.shape == (0, 5) and torch.equal(lin.weight.grad, torch.zeros_like(lin.weight))
    e = torch.randn(0, device=device)
    assert F.mse_loss(e, e, reduction="sum").item() == 0
    assert F.mse_loss(e, e, reduction="mean").isnan().item()
