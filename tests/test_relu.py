"""torchext.functional.relu / torchext.nn.ReLU against torch.relu."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import torchext
from conftest import ALL_DTYPES, DEVICES

F = torchext.functional

SHAPES = [(0,), (1,), (7,), (33, 1), (1000,), (1023, 3), (4, 0, 5), (2, 3, 5, 7), (70000,)]


def _data(shape, dtype, device):
    x = torch.randn(shape, dtype=torch.float64, device=device) * 3
    return x.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_match_torch(shape, dtype, device):
    x = _data(shape, dtype, device).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = F.relu(x)
    y_ref = torch.relu(x_ref)
    assert y.dtype == dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)  # relu is exact
    g = torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("view", ["transposed", "sliced", "expanded", "channels_last"])
def test_non_contiguous(view, dtype, device):
    base = _data((9, 33, 5, 6), dtype, device)
    x = {
        "transposed": base.transpose(0, 2),
        "sliced": base[:, 1::3, :, ::2],
        "expanded": base[:1, :1].expand(4, 3, 5, 6),
        "channels_last": base.contiguous(memory_format=torch.channels_last),
    }[view]
    y = F.relu(x)
    torch.testing.assert_close(y, torch.relu(x), atol=0, rtol=0)
    if view in ("transposed", "channels_last"):  # dense layouts keep their strides
        assert y.stride() == torch.relu(x).stride()


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    # Keep values away from the kink at 0, where the derivative is undefined.
    x = torch.randn(5, 17, dtype=torch.float64, device=device)
    x = (x + 0.1 * x.sign()).requires_grad_()
    assert torch.autograd.gradcheck(F.relu, (x,))
    assert torch.autograd.gradgradcheck(F.relu, (x,))
    xt = x.detach().t().requires_grad_()  # non-contiguous input
    assert torch.autograd.gradcheck(F.relu, (xt,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_inplace(dtype, device):
    x = _data((17, 9), dtype, device)
    expected = torch.relu(x)
    leaf = x.clone().requires_grad_()
    y = leaf * 1  # a non-leaf to modify in place
    ptr = y.data_ptr()
    out = F.relu(y, inplace=True)
    assert out is y and out.data_ptr() == ptr
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(leaf.grad, torch.where(expected > 0, g, torch.zeros_like(g)), atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_on_non_contiguous_view_writes_through(device):
    base = torch.randn(8, 10, device=device)
    expected = base.clone()
    expected[:, ::3] = torch.relu(expected[:, ::3])
    F.relu(base[:, ::3], inplace=True)
    torch.testing.assert_close(base, expected, atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_on_leaf_requiring_grad_raises_like_torch(device):
    x = torch.randn(4, device=device, requires_grad=True)
    before = x.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        torch.relu_(x)
    for call in (lambda t: F.relu(t, inplace=True), torch.ops.torchext.relu_):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            call(x)
        with pytest.raises(RuntimeError, match="view of a leaf Variable"):
            call(x[1:])
        assert torch.equal(x.detach(), before)  # refused before anything was written


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("call", ["functional", "op"])
def test_inplace_autograd_like_torch(call, device):
    # The in-place op records itself (also when called as torch.ops.torchext.relu_), bumps the
    # version counter so a node that saved the old value refuses to run, and works on a view of a
    # graph tensor (the gradient flows back through the base), all as torch.relu_ does.
    op = (lambda t: F.relu(t, inplace=True)) if call == "functional" else torch.ops.torchext.relu_

    def relu_(t):
        op(t)  # the op returns nothing
        return t

    x = _data((6, 8), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: relu_(t.clone()), [x])
    results = []
    g = torch.randn(6, 8, device=device, dtype=torch.float64)
    for fn in (relu_, torch.relu_):
        leaf = x.detach().clone().requires_grad_()
        y = leaf * 2
        fn(y[:, 1::2])  # a strided view of a non-leaf
        y.backward(g)
        results.append((y.detach(), leaf.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=0, rtol=0)
    # Second order through the view, and a tangent carried in place through it.
    weight = torch.randn(6, 8, device=device, dtype=torch.float64)
    second = []
    for fn in (relu_, torch.relu_):
        leaf = x.detach().clone().requires_grad_()
        y = leaf * 2
        fn(y[:, 1::2])
        (gx,) = torch.autograd.grad((y ** 3).sum(), leaf, create_graph=True)
        (ggx,) = torch.autograd.grad((gx * weight).sum(), leaf)
        with fwAD.dual_level():
            z = fwAD.make_dual(x.detach() * 2, weight)
            fn(z[:, 1::2])
            tangent = fwAD.unpack_dual(z).tangent
        second.append((gx.detach(), ggx, tangent))
    for ours, theirs in zip(*second):
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)
    y = x * 1
    saved_by_mul = y * y  # saves y
    version = y._version
    relu_(y)
    assert y._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved_by_mul.sum().backward()
    with torch.no_grad():  # nothing recorded, but the version still moves
        z = x.detach().clone()
        version = z._version
        relu_(z)
        assert z._version > version


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("view", ["transposed", "sliced", "reshaped"])
@pytest.mark.parametrize("through", ["view", "base", "both"])
def test_inplace_on_view_gradient_through_the_view(view, through, device):
    # The gradient reaches the graph through the view that relu_ wrote (the returned tensor), the
    # base, or both, as with torch.relu_. Through the view it used to skip the ReLU's mask: the
    # view kept the grad_fn it had before the write.
    make_view = {"transposed": lambda y: y.t(), "sliced": lambda y: y[1::2, 2:],
                 "reshaped": lambda y: y.reshape(3, 2, 8)}[view]
    x = torch.randn(6, 8, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for fn in (lambda t: F.relu(t, inplace=True), torch.relu_):
        y = x * 3
        out = fn(make_view(y))
        outputs = {"view": [out], "base": [y], "both": [out, y]}[through]
        grads = [torch.ones_like(t) * torch.arange(t.numel(), device=device).reshape(t.shape) for t in outputs]
        results.append(torch.autograd.grad(outputs, x, grads)[0])
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_relu_module_after_nd_linear_matches_torch(device):
    # nn.Linear on a 3-D input returns a reshaped view of its 2-D GEMM output; ReLU(inplace=True)
    # then writes that view.
    nn = torchext.nn
    model = torch.nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)).double().to(device)
    twin = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(inplace=True), torch.nn.Linear(7, 3))
    twin = twin.double().to(device)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(4, 6, 5, dtype=torch.float64, device=device)
    g = torch.randn(4, 6, 3, dtype=torch.float64, device=device)
    got = torch.autograd.grad(model(x), list(model.parameters()), g)
    want = torch.autograd.grad(twin(x), list(twin.parameters()), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_backward_of_broadcast_gradients(dtype, device):
    # sum() and mean() send one value expanded over the output (every stride 0) as the gradient,
    # which the CPU kernel reads without copying; a gradient broadcast along one dim only is an
    # ordinary strided one. Zeros and NaNs in the input check the mask's edge cases.
    x = _data((33, 70), dtype, device)
    x[0, :3] = torch.tensor([0.0, float("nan"), -0.0], dtype=dtype)
    for grad in (torch.tensor(2.5, dtype=dtype, device=device).expand(33, 70),
                 torch.randn(1, 70, device=device).to(dtype).expand(33, 70),
                 torch.tensor(-1.0, dtype=dtype, device=device).expand(33, 70)[::2]):
        r = torch.relu(x[: grad.shape[0]])
        ours = torch.ops.torchext.relu_backward(grad, r)
        torch.testing.assert_close(ours, torch.ops.aten.threshold_backward(grad, r, 0), atol=0, rtol=0,
                                   equal_nan=True)
    for reduce in (torch.sum, torch.mean):
        leaf, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        reduce(F.relu(leaf)).backward()
        reduce(torch.relu(ref)).backward()
        torch.testing.assert_close(leaf.grad, ref.grad, atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf_propagate_like_torch(device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 2.5], device=device,
                     requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = F.relu(x), torch.relu(x_ref)
    torch.testing.assert_close(y, y_ref, equal_nan=True, atol=0, rtol=0)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 37], ids=["scalar_path", "vector_path"])
def test_tiny_positive_doubles_keep_their_gradient(n, device):
    # 1e-300 is positive but rounds to 0 as a float32: the backward mask must be taken in float64.
    x = torch.full((n,), 1e-300, dtype=torch.float64, device=device)
    x[::2] = -1e-300
    x.requires_grad_()
    F.relu(x).sum().backward()
    torch.testing.assert_close(x.grad, (x.detach() > 0).double(), atol=0, rtol=0)


def test_module_matches_torch_module():
    assert repr(torchext.nn.ReLU()) == repr(torch.nn.ReLU())
    assert repr(torchext.nn.ReLU(inplace=True)) == repr(torch.nn.ReLU(inplace=True))
    x = torch.randn(3, 4)
    torch.testing.assert_close(torchext.nn.ReLU()(x), torch.nn.ReLU()(x), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_rejects_unsupported_dtypes_like_torch_kernels(dtype):
    # torch refuses bool and complex ReLU (NotImplementedError in torch 2.14; a plain RuntimeError
    # for bool in 2.11, which NotImplementedError subclasses, so code catching either catches
    # ours); torchext raises NotImplementedError, as torch's kernels do for a dtype they have no
    # code for, and says which argument it was.
    x = torch.ones(3, dtype=dtype)
    with pytest.raises(RuntimeError):
        torch.relu(x)
    with pytest.raises(NotImplementedError, match="'self'"):
        F.relu(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64], ids=str)
def test_integer_relu_matches_torch(dtype, device):
    # torch.relu takes integer tensors, on the CPU and on CUDA. The type's extremes, odd sizes
    # spanning the vector loop and its tail, a transposed and a sliced input.
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, (67, 45), dtype=torch.int64).to(dtype)
    x[0, :4] = torch.tensor([info.min, info.max, 0, -1 if info.min < 0 else 1], dtype=torch.int64).to(dtype)
    x = x.to(device)
    for view in (x, x.t(), x[3:40:3, 1::2]):
        out = F.relu(view)
        assert out.dtype == dtype
        torch.testing.assert_close(out, torch.relu(view), atol=0, rtol=0)
        ours, theirs = view.clone(), view.clone()
        assert torchext.nn.ReLU(inplace=True)(ours) is ours
        torch.relu_(theirs)
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    # In place on a strided view of a bigger tensor writes through, as torch's does.
    ours, theirs = x.clone(), x.clone()
    F.relu(ours[::2, 1::3], inplace=True)
    torch.relu_(theirs[::2, 1::3])
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_rejects_overlapping_inplace():
    x = torch.randn(1, 3).expand(4, 3)
    with pytest.raises(RuntimeError, match="same memory location"):
        F.relu(x, inplace=True)


def test_ops_are_registered_in_one_namespace():
    for name in ["relu", "relu_", "relu_backward"]:
        assert hasattr(torch.ops.torchext, name)
