"""TorchScript: torch.jit.script and torch.jit.trace over torchext modules and functions.

torch.nn's modules script, so code that scripts a model keeps working when torchext's modules are
swapped in. The scripted graphs call torch.ops.torchext.* (the C++ ops and their C++ autograd), so
a saved TorchScript model runs wherever the extension library is loaded."""
import io
import warnings

import pytest
import torch

import torchext
from conftest import DEVICES, away_from_kink

F = torchext.functional

# torch.jit.script and torch.jit.trace warn that TorchScript is deprecated; that is torch's warning.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4),
       torch.float16: dict(rtol=1e-2, atol=1e-2), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}
TORCH_OPS = ("aten::linear", "aten::relu", "aten::mse_loss", "aten::addmm", "aten::matmul")


def _dtypes(device):
    return [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _assert_runs_torchext(scripted, *names):
    graph = str(scripted.inlined_graph)
    for name in names:
        assert "torchext::" + name in graph, graph
    for op in TORCH_OPS:
        assert op not in graph, graph


def _net(device, dtype, bias=True):
    nn = torchext.nn
    return torch.nn.Sequential(nn.Linear(20, 16, bias=bias), nn.ReLU(inplace=True),
                               nn.LinearReLU(16, 12, bias=bias), nn.ReLU(), nn.Linear(12, 5, bias=bias)).to(device, dtype)


def _torch_twin(model):
    layers = []
    for m in model:
        if isinstance(m, torchext.nn.LinearReLU):
            layers += [torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None), torch.nn.ReLU()]
            layers[-2].load_state_dict(m.state_dict())
        elif isinstance(m, torchext.nn.Linear):
            layers.append(torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None))
            layers[-1].load_state_dict(m.state_dict())
        else:
            layers.append(torch.nn.ReLU(inplace=m.inplace))
    return torch.nn.Sequential(*layers).to(next(model.parameters()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 20), (3, 4, 20), (20,), (0, 20)])
def test_scripted_model_matches_torch(device, bias, shape):
    for dtype in _dtypes(device):
        model = _net(device, dtype, bias)
        twin = _torch_twin(model)
        scripted = torch.jit.script(model)
        _assert_runs_torchext(scripted, "linear", "linear_relu", "relu_", "relu(")
        # Several calls: the profiling executor re-optimises the graph after the first runs.
        for _ in range(3):
            x = torch.randn(shape, device=device, dtype=dtype)
            out, ref = scripted(x), twin(x)
            torch.testing.assert_close(out, ref, **TOL[dtype])
            grad = torch.randn_like(ref)
            got = torch.autograd.grad(out, list(model.parameters()), grad)
            want = torch.autograd.grad(ref, list(twin.parameters()), grad)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_scripted_loss_matches_torch(device, reduction):
    loss_fn = torch.jit.script(torchext.nn.MSELoss(reduction=reduction))
    _assert_runs_torchext(loss_fn, "mse_loss")
    for dtype in _dtypes(device):
        for _ in range(3):
            x = torch.randn(6, 9, device=device, dtype=dtype, requires_grad=True)
            y = torch.randn(6, 9, device=device, dtype=dtype, requires_grad=True)
            out = loss_fn(x, y)
            ref = torch.nn.functional.mse_loss(x, y, reduction=reduction)
            torch.testing.assert_close(out, ref, **TOL[dtype])
            grad = torch.randn_like(ref)
            got = torch.autograd.grad(out, (x, y), grad)
            want = torch.autograd.grad(ref, (x, y), grad)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_saved_scripted_model_loads_and_trains(device):
    # A scripted model and loss saved to bytes and loaded back (as a deployment would) give the
    # same loss and gradients as the eager torch model.
    model = _net(device, torch.float32)
    twin = _torch_twin(model)
    loss_fn = torchext.nn.MSELoss(reduction="sum")

    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.loss_fn = model, loss_fn

        def forward(self, x, y):
            return self.loss_fn(self.model(x), y)

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(WithLoss()), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer, map_location=device)
    _assert_runs_torchext(loaded, "linear", "linear_relu", "relu_", "relu(", "mse_loss")
    x, y = torch.randn(9, 20, device=device), torch.randn(9, 5, device=device)
    loss = loaded(x, y)
    ref = torch.nn.functional.mse_loss(twin(x), y, reduction="sum")
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    loss.backward()
    ref.backward()
    for p, q in zip(loaded.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)


def _functional_cases(device):
    """(torchext function, torch function, argument factory): each path of the functional forms."""
    def t(shape):
        return torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)

    def linear_shapes(x, w, b):
        return lambda: (t(x), t(w), None if b is None else t(b))

    cases = []
    for name in ("linear", "linear_relu"):
        ours = getattr(F, name)
        if name == "linear":
            theirs = torch.nn.functional.linear
        else:
            def theirs(x, w, b):
                return torch.relu(torch.nn.functional.linear(x, w, b))
        for shapes in [((5, 7), (3, 7), (3,)), ((2, 5, 7), (3, 7), None), ((7,), (3, 7), (3,)),
                       ((5, 7), (3, 7), (5, 3)), ((2, 5, 7), (3, 7), ())]:
            cases.append((ours, theirs, linear_shapes(*shapes)))
    # A 1-D weight (one output feature, its dim dropped), with and without a 0-dim bias.
    cases.append((F.linear, torch.nn.functional.linear, linear_shapes((4, 7), (7,), None)))
    cases.append((F.linear, torch.nn.functional.linear, linear_shapes((7,), (7,), ())))
    return cases


@pytest.mark.parametrize("device", DEVICES)
def test_scripted_functional_forms_match_torch(device):
    for ours, theirs, make_args in _functional_cases(device):
        scripted = torch.jit.script(ours)
        _assert_runs_torchext(scripted, "linear")
        for _ in range(3):
            args = make_args()
            out = scripted(*args)
            ref = theirs(*args)
            torch.testing.assert_close(out, ref)
            grad = torch.randn_like(ref)
            inputs = [a for a in args if a is not None]
            for g, w in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
                torch.testing.assert_close(g, w)


def _relu_both(x, inplace: bool):
    return F.relu(x, inplace=inplace)


@pytest.mark.parametrize("device", DEVICES)
def test_scripted_relu_in_place_writes_through(device):
    scripted = torch.jit.script(_relu_both)
    x = torch.randn(6, 8, device=device)
    view = x.t()[1:5]  # a strided view: the op writes through to x
    expected = x.clone()
    expected.t()[1:5].relu_()
    out = scripted(view, True)
    assert out.data_ptr() == view.data_ptr()
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    y = torch.randn(6, 8, device=device)
    before = y.clone()
    torch.testing.assert_close(scripted(y, False), torch.relu(before), rtol=0, atol=0)
    torch.testing.assert_close(y, before, rtol=0, atol=0)  # out of place: the input is untouched


def _mse_all(x, y, size_average: bool, reduction: str, weight: torch.Tensor):
    a = F.mse_loss(x, y, reduction=reduction)
    b = F.mse_loss(x, y, size_average=size_average)
    c = F.mse_loss(x, y, reduction=reduction, weight=weight)
    return a, b, c


def _torch_mse_all(x, y, size_average: bool, reduction: str, weight: torch.Tensor):
    mse = torch.nn.functional.mse_loss
    return (mse(x, y, reduction=reduction), mse(x, y, size_average=size_average),
            mse(x, y, reduction=reduction, weight=weight))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_scripted_mse_arguments_match_torch(device, reduction):
    # The legacy size_average flag, a weight, dtype promotion (float32 input, float64 target) and a
    # target that broadcasts, with torch's warning.
    scripted = torch.jit.script(_mse_all)
    for size_average in (True, False):
        x = torch.randn(4, 6, device=device, dtype=torch.float32, requires_grad=True)
        y = torch.randn(4, 6, device=device, dtype=torch.float64)
        w = torch.rand(4, 6, device=device, dtype=torch.float64)
        for got, want in zip(scripted(x, y, size_average, reduction, w), _torch_mse_all(x, y, size_average, reduction, w)):
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want)
    x = torch.randn(4, 6, device=device, requires_grad=True)
    y = torch.randn(6, device=device)
    with pytest.warns(UserWarning, match="different to the input size"):
        out = torch.jit.script(F.mse_loss)(x, y)
    torch.testing.assert_close(out, torch.nn.functional.mse_loss(x, y.expand(4, 6)))


def _error_type(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(Exception) as info:
            fn(*args)
    return info.type


def _lin(x, w):
    return F.linear(x, w)


def _torch_lin(x, w):
    return torch.nn.functional.linear(x, w)


def _mse(x, y, reduction: str):
    return F.mse_loss(x, y, reduction=reduction)


def _torch_mse(x, y, reduction: str):
    return torch.nn.functional.mse_loss(x, y, reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
def test_scripted_errors_are_torchs(device):
    # Bad arguments raise in scripted torchext code what they raise in the same code scripted with
    # torch's functions (torch.jit.Error for exceptions raised in scripted Python, the op's own
    # type for errors from ops), and torchext's messages name the argument.
    x = torch.randn(3, 4, device=device)
    cases = [
        (_lin, _torch_lin, (x, torch.randn(5, 3, device=device)), "in_features"),
        (_lin, _torch_lin, (x, torch.randn(5, 4, device=device, dtype=torch.float64)), "weight"),
        (_mse, _torch_mse, (x, torch.randn(3, 4, device=device), "average"), "reduction"),
        (_mse, _torch_mse, (x, torch.randn(3, 5, device=device), "sum"), "size"),
    ]
    for ours, theirs, args, words in cases:
        ours_s, theirs_s = torch.jit.script(ours), torch.jit.script(theirs)
        assert _error_type(ours_s, *args) is _error_type(theirs_s, *args)
        with pytest.raises(Exception, match=words), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ours_s(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_through_scripted_functions(device):
    def t(*shape):
        return torch.randn(*shape, device=device, dtype=torch.float64, requires_grad=True)

    relu = torch.jit.script(F.relu)
    cases = [
        (torch.jit.script(F.linear), (t(2, 5, 6), t(3, 6), t(3))),
        (torch.jit.script(F.linear), (t(5, 6), t(3, 6), t(5, 3))),  # a bias that broadcasts
        (torch.jit.script(F.mse_loss), (t(4, 5), t(4, 5))),
        (lambda x: relu(x), (away_from_kink((4, 5), device).requires_grad_(),)),
    ]
    for fn, args in cases:
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("device", DEVICES)
def test_traced_model_matches_torch(device):
    model = _net(device, torch.float32)
    twin = _torch_twin(model)
    x = torch.randn(2, 4, 20, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, (x,))
    # Quiet, as a trace of torch's modules is: no warning that a size became a Python value.
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)], caught
    _assert_runs_torchext(traced, "linear", "linear_relu", "relu_", "relu(")
    for batch in (2, 5, 1):  # the traced sizes follow the input's
        x = torch.randn(batch, 4, 20, device=device)
        torch.testing.assert_close(traced(x), twin(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_frozen_and_inference_optimized_models_match(device):
    # What TorchScript deployments do to an eval model: freeze it (weights become constants) and
    # optimize_for_inference; the torchext ops stay in the graph and give the eager results.
    model = _net(device, torch.float32).eval()
    x = torch.randn(6, 20, device=device)
    with torch.no_grad():
        expected = model(x.clone())
        for prepared in (torch.jit.freeze(torch.jit.script(model)),
                         torch.jit.optimize_for_inference(torch.jit.script(model))):
            _assert_runs_torchext(prepared, "linear", "linear_relu")
            for _ in range(3):
                torch.testing.assert_close(prepared(x.clone()), expected, rtol=0, atol=0)
