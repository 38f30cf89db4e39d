"""Bad inputs to every op and module: the exception type torch raises for the same call, a message
naming the argument, and nothing written. This file holds the cross-op table (Linear and LinearReLU,
ReLU, MSE loss), the Linear refusals beyond it (integers on CUDA, complex mixes, biases that do not
broadcast, linear_batched's arguments), the optimizer ops' refusal of half buffers beside master
weights, and the edges (mixed devices, non-finite values, in-place aliasing, empty and
single-element inputs). Optimizer-level cases live in tests/test_optim_*.py (constructor errors in
test_optim_adam.py / test_optim_sgd.py, a failed step or load_state_dict leaving everything
unchanged in test_optim_state.py, params that share memory in test_optim_aliasing.py).
"""
import pytest
import torch

import torchext
from conftest import CUDA_ONLY, DEVICES, HAS_CUDA
from optim_common import make_params

F = torchext.functional
TF = torch.nn.functional


def _x(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype)


# (id, torchext call, torch call or None, exception type, message regex). When torch raises,
# torchext must raise the same type, and it must be the type given where one is; when torch does not
# raise, torchext raises the type given. Where torch computes something torchext
# has no kernel for (sparse Linear, quantized ReLU), torchext raises NotImplementedError,
# which is what torch's own kernels raise for a dtype or layout they were not built for.
CASES = [
    # Linear
    ("linear in_features mismatch", lambda: F.linear(_x(4, 6), _x(3, 5)), lambda: TF.linear(_x(4, 6), _x(3, 5)),
     RuntimeError, "'input'.*'weight'.*shapes cannot be multiplied"),
    ("linear bias wrong length", lambda: F.linear(_x(4, 5), _x(3, 5), _x(4)),
     lambda: TF.linear(_x(4, 5), _x(3, 5), _x(4)), RuntimeError, "'bias'"),
    ("linear_relu bias wrong length", lambda: F.linear_relu(_x(4, 5), _x(3, 5), _x(4)),
     lambda: TF.linear(_x(4, 5), _x(3, 5), _x(4)), RuntimeError, "'bias'"),
    ("linear bias 2-D", lambda: F.linear(_x(4, 5), _x(3, 5), _x(3, 1)),
     lambda: TF.linear(_x(4, 5), _x(3, 5), _x(3, 1)), None, "bias"),
    ("linear weight 3-D", lambda: F.linear(_x(4, 5), _x(2, 3, 5)), lambda: TF.linear(_x(4, 5), _x(2, 3, 5)),
     RuntimeError, "'weight'"),
    ("linear_relu weight 3-D", lambda: F.linear_relu(_x(4, 5), _x(2, 3, 5)),
     lambda: TF.linear(_x(4, 5), _x(2, 3, 5)), RuntimeError, "'weight'"),
    ("linear 1-D weight with bias, 2-D input", lambda: F.linear(_x(4, 5), _x(5), _x()),
     lambda: TF.linear(_x(4, 5), _x(5), _x()), None, "bias"),
    ("linear 0-dim input", lambda: F.linear(_x(), _x(3, 5)), lambda: TF.linear(_x(), _x(3, 5)), RuntimeError,
     "at least 1D"),
    ("linear_relu 0-dim input", lambda: F.linear_relu(_x(), _x(3, 5)), lambda: TF.linear(_x(), _x(3, 5)),
     RuntimeError, "at least 1D"),
    ("linear input/weight dtypes", lambda: F.linear(_x(4, 5), _x(3, 5, dtype=torch.float64)),
     lambda: TF.linear(_x(4, 5), _x(3, 5, dtype=torch.float64)), RuntimeError, "same dtype"),
    ("linear_relu input/weight dtypes", lambda: F.linear_relu(_x(4, 5), _x(3, 5, dtype=torch.float64)),
     lambda: TF.linear(_x(4, 5), _x(3, 5, dtype=torch.float64)), RuntimeError, "same dtype"),
    ("linear bias dtype", lambda: F.linear(_x(4, 5), _x(3, 5), _x(3, dtype=torch.float64)),
     lambda: TF.linear(_x(4, 5), _x(3, 5), _x(3, dtype=torch.float64)), RuntimeError, "'bias' to have the same dtype"),
    ("linear_relu bias dtype", lambda: F.linear_relu(_x(4, 5), _x(3, 5), _x(3, dtype=torch.float64)),
     lambda: TF.linear(_x(4, 5), _x(3, 5), _x(3, dtype=torch.float64)), RuntimeError,
     "'bias' to have the same dtype"),
    ("linear integer input only", lambda: F.linear(_x(4, 5).long(), _x(3, 5)),
     lambda: TF.linear(_x(4, 5).long(), _x(3, 5)), RuntimeError, "same dtype"),
    ("linear_relu integer input only", lambda: F.linear_relu(_x(4, 5).long(), _x(3, 5)),
     lambda: TF.linear(_x(4, 5).long(), _x(3, 5)), RuntimeError, "same dtype"),
    ("linear bool", lambda: F.linear(_x(4, 5).bool(), _x(3, 5).bool()),
     lambda: TF.linear(_x(4, 5).bool(), _x(3, 5).bool()), None, "input|Bool"),
    # (complex input with complex weights works, as in torch: test_linear.py)
    ("linear complex input, real weight", lambda: F.linear(_x(4, 5).cfloat(), _x(3, 5)),
     lambda: TF.linear(_x(4, 5).cfloat(), _x(3, 5)), None, "dtype"),
    ("linear sparse input", lambda: F.linear(_x(4, 5).to_sparse(), _x(3, 5)), None, NotImplementedError,
     "input|Sparse"),
    ("linear_relu in_features mismatch", lambda: F.linear_relu(_x(4, 6), _x(3, 5)),
     lambda: TF.linear(_x(4, 6), _x(3, 5)), RuntimeError, "'input'.*'weight'.*shapes cannot be multiplied"),
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
        assert fallback is None or issubclass(expected, fallback), (name, expected)
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


# Linear refusals beyond the table.
def _raises_like_torch(ours, theirs, exc, match):
    with pytest.raises(exc):
        theirs()
    with pytest.raises(exc, match=match):
        ours()


@pytest.mark.parametrize("fn", [F.linear, F.linear_relu], ids=["linear", "linear_relu"])
@pytest.mark.parametrize("device", CUDA_ONLY)
def test_integer_linear_on_cuda_is_not_implemented(fn, device):
    # torch has no integer Linear on CUDA either ("addmm_cuda" not implemented): NotImplementedError.
    x, w = torch.ones(3, 4, dtype=torch.int64, device=device), torch.ones(5, 4, dtype=torch.int64, device=device)
    _raises_like_torch(lambda: fn(x, w), lambda: TF.linear(x, w), NotImplementedError, "input")


def test_complex_refusals():
    x, w = torch.randn(3, 4, dtype=torch.complex64), torch.randn(2, 4, dtype=torch.complex64)
    with pytest.raises(NotImplementedError, match="complex"):
        F.linear_relu(x, w)  # torch.relu refuses complex tensors too
    with pytest.raises(RuntimeError, match="same dtype"):
        F.linear(x, w.to(torch.complex128))
    with pytest.raises(RuntimeError, match="same dtype"):
        F.linear(x, w.real)


def test_bias_that_does_not_broadcast_is_refused():
    x, w = torch.randn(6, 5), torch.randn(3, 5)
    for bias in (torch.randn(4), torch.randn(2, 6, 3), torch.randn(6, 2)):
        with pytest.raises(RuntimeError):
            TF.linear(x, w, bias)
        with pytest.raises(RuntimeError, match="'bias'"):
            F.linear(x, w, bias)
    with pytest.raises(RuntimeError, match="'bias'"):
        F.linear(torch.randn(5), torch.randn(5), torch.randn(1))  # 1-D weight: only a 0-dim bias
    with pytest.raises(RuntimeError):
        TF.linear(x, w, torch.randn(6, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="same dtype"):  # not promoted by the addition
        F.linear(x, w, torch.randn(6, 3, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_linear_batched_errors(device):
    op = torch.ops.torchext
    x, w, b = torch.randn(3, 5, 7, device=device), torch.randn(3, 4, 7, device=device), torch.randn(3, 4, device=device)
    with pytest.raises(RuntimeError, match="entries"):
        op.linear_batched(x, w[:2], b[:2], False)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        op.linear_batched(x, w[..., :6], None, False)
    with pytest.raises(RuntimeError, match="'bias' of shape"):
        op.linear_batched(x, w, b[:, :3], False)
    with pytest.raises(RuntimeError, match="3-D"):
        op.linear_batched(x[0], w, None, False)
    with pytest.raises(RuntimeError, match="same dtype"):
        op.linear_batched(x, w.double(), None, False)
