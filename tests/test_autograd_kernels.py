"""The two autograd implementations of every op, each checked on its own.

Ordinary calls run the ops' C++ autograd kernels (csrc/autograd/): torch.ops.torchext.* records its
own graph, and a create_graph backward records the backward's graph through the same kernels.
Forward-mode AD and torch.func run the Python autograd.Functions in torchext/_ops/ instead, which
have the same backward plus a jvp. The suites elsewhere reach each through the public functions;
here each is called directly, so a wrong formula in either cannot hide behind the other."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd import gradcheck, gradgradcheck

from torchext._ops import linear as L, mse_loss as M, relu as R
from conftest import DEVICES, away_from_kink

ops = torch.ops.torchext


# name -> (function of tensors, shapes, which inputs are differentiable). Shapes are odd on purpose.
OP_CALLS = {
    "relu": (ops.relu, [(5, 7)], [True]),
    "relu_backward": (ops.relu_backward, [(5, 7), (5, 7)], [True, False]),
    "linear": (ops.linear, [(5, 7), (3, 7), (3,)], [True, True, True]),
    "linear_no_bias": (lambda x, w: ops.linear(x, w, None), [(5, 7), (3, 7)], [True, True]),
    "linear_relu": (ops.linear_relu, [(5, 7), (3, 7), (3,)], [True, True, True]),
    "linear_relu_no_bias": (lambda x, w: ops.linear_relu(x, w, None), [(5, 7), (3, 7)], [True, True]),
    "linear_bias_grad": (ops.linear_bias_grad, [(6, 4)], [True]),
    "linear_relu_grad": (ops.linear_relu_grad, [(6, 4), (6, 4)], [True, False]),
    "mse_loss_none": (lambda a, b: ops.mse_loss(a, b, 0), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_mean": (lambda a, b: ops.mse_loss(a, b, 1), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_sum": (lambda a, b: ops.mse_loss(a, b, 2), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_forward_mean": (lambda a, b: ops.mse_loss_forward(a, b, 1), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_forward_none": (lambda a, b: ops.mse_loss_forward(a, b, 0), [(4, 6), (4, 6)], [True, False]),
    "mse_loss_backward_none": (lambda g, d: ops.mse_loss_backward(g, d, 0), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_backward_mean": (lambda g, d: ops.mse_loss_backward(g, d, 1), [(), (4, 6)], [True, True]),
    "mse_loss_backward_sum": (lambda g, d: ops.mse_loss_backward(g, d, 2), [(), (4, 6)], [True, True]),
}

# The Python Functions, applied directly (outside any transform their backward calls the ops).
FUNCTION_CALLS = {
    "ReLUFunction": (R.ReLUFunction.apply, [(5, 7)], [True]),
    "ReLUBackward": (R.ReLUBackward.apply, [(5, 7), (5, 7)], [True, False]),
    "LinearFunction": (L.LinearFunction.apply, [(5, 7), (3, 7), (3,)], [True, True, True]),
    "LinearFunction_no_bias": (lambda x, w: L.LinearFunction.apply(x, w, None), [(5, 7), (3, 7)], [True, True]),
    "LinearReLUFunction": (L.LinearReLUFunction.apply, [(5, 7), (3, 7), (3,)], [True, True, True]),
    "BiasGrad": (L.BiasGrad.apply, [(6, 4)], [True]),
    "ReLUGrad": (L.ReLUGrad.apply, [(6, 4), (6, 4)], [True, False]),
    "MSELossFunction_mean": (lambda a, b: M.MSELossFunction.apply(a, b, 1), [(4, 6), (4, 6)], [True, True]),
    "MSELossFunction_none": (lambda a, b: M.MSELossFunction.apply(a, b, 0), [(4, 6), (4, 6)], [True, True]),
    "MSELossBackward_sum": (lambda g, d: M.MSELossBackward.apply(g, d, 2), [(), (4, 6)], [True, True]),
    "MSELossBackward_none": (lambda g, d: M.MSELossBackward.apply(g, d, 0), [(4, 6), (4, 6)], [True, True]),
}


def _args(shapes, differentiable, device):
    return [away_from_kink(s, device).requires_grad_(d) for s, d in zip(shapes, differentiable)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OP_CALLS) + list(FUNCTION_CALLS))
def test_gradcheck_and_gradgradcheck(name, device):
    fn, shapes, differentiable = OP_CALLS[name] if name in OP_CALLS else FUNCTION_CALLS[name]
    args = _args(shapes, differentiable, device)
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


# Pairs computing the same thing through the two implementations (the public functions, when no
# tangent is possible, are the ops).
PAIRS = [
    (ops.relu, R.ReLUFunction.apply, [(33, 17)]),
    (ops.linear, L.LinearFunction.apply, [(33, 17), (9, 17), (9,)]),
    (ops.linear_relu, L.LinearReLUFunction.apply, [(33, 17), (9, 17), (9,)]),
    (lambda a, b: ops.mse_loss(a, b, 1), lambda a, b: M.MSELossFunction.apply(a, b, 1)[0], [(33, 17), (33, 17)]),
    (lambda a, b: ops.mse_loss(a, b, 0), lambda a, b: M.MSELossFunction.apply(a, b, 0)[0], [(33, 17), (33, 17)]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_both_implementations_give_identical_gradients(pair, dtype, device):
    # Same kernels in the same order: the results must agree to the bit, first and second order.
    cpp_fn, py_fn, shapes = PAIRS[pair]
    base = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    results = []
    for fn in (cpp_fn, py_fn):
        args = [b.clone().requires_grad_() for b in base]
        out = fn(*args)
        weight = torch.linspace(-1, 1, out.numel(), device=device, dtype=dtype).reshape(out.shape)
        grads = torch.autograd.grad((out * weight).sum(), args, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in grads), args, allow_unused=True)
        results.append((out, grads, second))
    (out_a, grads_a, second_a), (out_b, grads_b, second_b) = results
    torch.testing.assert_close(out_a, out_b, atol=0, rtol=0)
    for a, b in zip(grads_a + second_a, grads_b + second_b):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_ops_record_only_when_asked(device):
    x = torch.randn(4, 5, device=device, requires_grad=True)
    w = torch.randn(3, 5, device=device, requires_grad=True)
    assert ops.linear(x, w, None).grad_fn is not None
    assert ops.relu(x).grad_fn is not None
    with torch.no_grad():
        y = ops.linear(x, w, None)
        assert y.grad_fn is None and not y.requires_grad
        assert not ops.relu(x).requires_grad
    plain = ops.linear(x.detach(), w.detach(), None)
    assert plain.grad_fn is None and not plain.requires_grad
    # A create_graph backward records the backward's own graph; a plain one records nothing.
    (gx,) = torch.autograd.grad(ops.relu(x).sum(), x, create_graph=True)
    assert gx.requires_grad
    (gx,) = torch.autograd.grad(ops.relu(x).sum(), x)
    assert not gx.requires_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["relu", "linear", "mse_loss_mean"])
def test_dual_tensors_on_a_direct_op_call_raise(name, device):
    # A C++ autograd kernel has no forward mode. A dual input must fail loudly, never come out with
    # its tangent dropped (the public functions send such calls to the Python Functions instead).
    fn, shapes, _ = OP_CALLS[name]
    primals = [torch.randn(s, device=device) for s in shapes]
    with fwAD.dual_level():
        args = [fwAD.make_dual(primals[0], torch.randn_like(primals[0]))] + primals[1:]
        with pytest.raises(RuntimeError, match="jvp is not implemented"):
            fn(*args)
        with torch.no_grad(), pytest.raises(RuntimeError, match="jvp is not implemented"):
            fn(*args)
