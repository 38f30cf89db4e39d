"""torchext.functional.mse_loss / torchext.nn.MSELoss against torch.nn.functional.mse_loss."""
import warnings

import pytest
import torch
import torch.nn.functional as TF

import torchext
from conftest import ALL_DTYPES, DEVICES, HAS_CUDA, run_at_cpu_level

F = torchext.functional
REDUCTIONS = ["none", "mean", "sum"]

SHAPES = [(0,), (1,), (7,), (33, 1), (1000,), (1023, 3), (4, 0, 5), (2, 3, 5, 7), (64, 100), (70001,)]

# Losses and gradients against torch in the same dtype. The half types round each element (and
# torch rounds its intermediates in a different order), so allow a couple of ulps; sums over many
# elements accumulate in float (half types) or double (float32), which is at least as accurate as
# torch, so the float32 tolerance also covers torch's own summation error.
TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-6, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def _data(shape, dtype, device, scale=2.0):
    return (torch.randn(shape, dtype=torch.float64, device=device) * scale).to(dtype)


def _grad_for(loss):
    return _data(loss.shape, loss.dtype, loss.device, scale=1.0)


def _run(fn, input, target, reduction, grad=None, **kw):
    """Loss and (input, target) gradients of fn on fresh leaves."""
    x = input.detach().clone().requires_grad_()
    t = target.detach().clone().requires_grad_()
    loss = fn(x, t, reduction=reduction, **kw)
    if grad is None:
        grad = _grad_for(loss)
    loss.backward(grad)
    return loss, x.grad, t.grad, grad


def _assert_same_as_torch(input, target, reduction, tol, **kw):
    ref_loss, ref_gx, ref_gt, grad = _run(TF.mse_loss, input, target, reduction, **kw)
    loss, gx, gt, _ = _run(F.mse_loss, input, target, reduction, grad=grad, **kw)
    assert loss.dtype == ref_loss.dtype and loss.shape == ref_loss.shape
    torch.testing.assert_close(loss, ref_loss, equal_nan=True, **tol)
    torch.testing.assert_close(gx, ref_gx, **tol)
    torch.testing.assert_close(gt, ref_gt, **tol)
    return loss, ref_loss


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_and_grads_match_torch(shape, reduction, dtype, device):
    input, target = _data(shape, dtype, device), _data(shape, dtype, device)
    tol = TOL[dtype]
    if reduction != "none" and dtype in (torch.float16, torch.bfloat16):
        # torch and torchext both sum in float but in different orders; the loss is rounded once.
        tol = dict(atol=tol["atol"], rtol=2 * tol["rtol"])
    _assert_same_as_torch(input, target, reduction, tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_grad_path_matches_torch(reduction, dtype, device):
    input, target = _data((33, 31), dtype, device), _data((33, 31), dtype, device)
    with torch.no_grad():
        loss = F.mse_loss(input, target, reduction=reduction)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, TF.mse_loss(input, target, reduction=reduction), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_empty_input_like_torch(device):
    x = torch.empty(0, 3, device=device, requires_grad=True)
    t = torch.empty(0, 3, device=device)
    assert torch.isnan(F.mse_loss(x, t)).item()
    assert F.mse_loss(x, t, reduction="sum").item() == 0.0
    assert F.mse_loss(x, t, reduction="none").shape == (0, 3)
    F.mse_loss(x, t, reduction="sum").backward()
    assert x.grad.shape == (0, 3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_large_reduction_is_accurate(reduction, dtype, device):
    n = 1_000_003
    input, target = _data((n,), dtype, device) + 3.0, _data((n,), dtype, device)
    exact = TF.mse_loss(input.double(), target.double(), reduction=reduction)
    loss = F.mse_loss(input, target, reduction=reduction)
    # float32 diffs are exact in double and summed there, so only the final rounding remains.
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(loss.double(), exact, rtol=rtol, atol=0)
    torch.testing.assert_close(loss, TF.mse_loss(input, target, reduction=reduction), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cpu_reduction_does_not_depend_on_thread_count(dtype):
    input, target = _data((3_000_017,), dtype, "cpu"), _data((3_000_017,), dtype, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = F.mse_loss(input, target, reduction="sum")
        torch.set_num_threads(max(2, threads))
        many = F.mse_loss(input, target, reduction="sum")
        again = F.mse_loss(input, target, reduction="sum")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many) and torch.equal(many, again)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n", [1000, 4099, 77777])
def test_cuda_gradient_equals_cpu_gradient_bitwise(n, reduction):
    # Both kernels form grad_output * 2 [/ n] in double and round it once: the same float32 bits.
    x, t = torch.randn(n), torch.randn(n)
    g = torch.rand(()) if reduction != "none" else torch.randn(n)
    grads = []
    for device in ("cpu", "cuda"):
        xi = x.to(device).requires_grad_()
        F.mse_loss(xi, t.to(device), reduction=reduction).backward(g.to(device))
        grads.append(xi.grad.cpu())
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("grads", ["input", "target", "both"])
def test_gradcheck_and_gradgradcheck(grads, reduction, device):
    x = torch.randn(5, 7, dtype=torch.float64, device=device, requires_grad=grads in ("input", "both"))
    t = torch.randn(5, 7, dtype=torch.float64, device=device, requires_grad=grads in ("target", "both"))

    def fn(a, b):
        return F.mse_loss(a, b, reduction=reduction)

    assert torch.autograd.gradcheck(fn, (x, t))
    assert torch.autograd.gradgradcheck(fn, (x, t))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradgradcheck_broadcast_and_non_contiguous(reduction, device):
    x = torch.randn(7, 4, dtype=torch.float64, device=device).t().requires_grad_()
    t = torch.randn(1, 7, dtype=torch.float64, device=device, requires_grad=True)

    def fn(a, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return F.mse_loss(a, b, reduction=reduction)

    assert torch.autograd.gradcheck(fn, (x, t))
    assert torch.autograd.gradgradcheck(fn, (x, t))


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_matches_torch(device):
    x = torch.randn(6, 5, dtype=torch.float64, device=device)
    t = torch.randn(6, 5, dtype=torch.float64, device=device)
    results = []
    for fn in (TF.mse_loss, F.mse_loss):
        a, b = x.clone().requires_grad_(), t.clone().requires_grad_()
        (ga,) = torch.autograd.grad(fn(a, b, reduction="mean"), a, create_graph=True)
        (ga * ga.flip(0)).sum().backward()
        results.append((a.grad, b.grad))
    torch.testing.assert_close(results[1], results[0], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", [((4, 5), (5,)), ((4, 1), (1, 5)), ((3, 1, 6), (2, 1)), ((5,), ())])
def test_broadcasting_warns_and_matches_torch(shapes, reduction, dtype, device):
    input, target = _data(shapes[0], dtype, device), _data(shapes[1], dtype, device)
    with pytest.warns(UserWarning, match=r"Using a target size \(torch.Size\(\[.*\]\)\) that is different "
                                         r"to the input size \(torch.Size\(\[.*\]\)\)") as record:
        _assert_same_as_torch(input, target, reduction, TOL[dtype])
    # Same message, word for word, as torch's.
    messages = [str(w.message) for w in record if "target size" in str(w.message)]
    assert len(messages) == 2 and messages[0] == messages[1]


def test_same_size_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.mse_loss(torch.randn(3, 4), torch.randn(3, 4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("view", ["both_transposed", "one_transposed", "sliced", "expanded", "channels_last"])
def test_non_contiguous(view, reduction, dtype, device):
    a, b = _data((9, 33, 5, 6), dtype, device), _data((9, 33, 5, 6), dtype, device)
    input, target = {
        "both_transposed": (a.transpose(0, 2), b.transpose(0, 2)),
        "one_transposed": (a.transpose(0, 2), b.transpose(0, 2).contiguous()),
        "sliced": (a[:, 1::3, :, ::2], b[:, 1::3, :, ::2]),
        "expanded": (a[:1, :1].expand(4, 3, 5, 6), b[:4, :3]),
        "channels_last": (a.contiguous(memory_format=torch.channels_last),
                          b.contiguous(memory_format=torch.channels_last)),
    }[view]
    loss, ref = _assert_same_as_torch(input, target, reduction, TOL[dtype])
    if reduction == "none" and view in ("both_transposed", "channels_last"):
        assert loss.stride() == ref.stride()  # a shared dense layout is kept, as in torch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.float16, torch.float32),
                                    (torch.bfloat16, torch.float16), (torch.float32, torch.int64),
                                    (torch.int32, torch.float16)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mixed_dtypes_promote_like_torch(dtypes, reduction, device):
    def make(dtype):
        if dtype.is_floating_point:
            return _data((6, 7), dtype, device).requires_grad_()
        return torch.randint(-5, 5, (6, 7), dtype=dtype, device=device)

    # torch's gradients come from its loss on inputs promoted by hand, the casts recorded by
    # autograd: the same values, and torch 2.11's own mse_loss fails in backward on a float32 input
    # with a float64 target ("Found dtype Double but expected Float"). Its loss is also compared
    # as it comes out of torch's mse_loss on the inputs as given.
    common = torch.promote_types(*dtypes)
    outs = []
    for fn in (lambda x, t: TF.mse_loss(x.to(common), t.to(common), reduction=reduction),
               lambda x, t: F.mse_loss(x, t, reduction=reduction)):
        torch.manual_seed(0)
        x, t = make(dtypes[0]), make(dtypes[1])
        loss = fn(x, t)
        loss.backward(torch.ones_like(loss))
        outs.append((loss, [v.grad for v in (x, t) if v.requires_grad]))
        if len(outs) == 1:
            with torch.no_grad():
                torch.testing.assert_close(TF.mse_loss(x, t, reduction=reduction), loss, rtol=0, atol=0)
    (loss, grads), (ref, ref_grads) = outs[1], outs[0]
    assert loss.dtype == ref.dtype
    torch.testing.assert_close(loss, ref, **TOL[ref.dtype])
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == rg.dtype
        torch.testing.assert_close(g, rg, **TOL[rg.dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weighted_matches_torch(reduction, device):
    x, t = _data((8, 3), torch.float64, device), _data((8, 3), torch.float64, device)
    w = torch.rand(8, 3, dtype=torch.float64, device=device)
    _assert_same_as_torch(x, t, reduction, TOL[torch.float64], weight=w)
    with pytest.raises(ValueError, match="Weights and input must have the same size"):
        F.mse_loss(x, t, weight=w[:2])


@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf_propagate_like_torch(device):
    x = torch.tensor([float("nan"), 1.0, float("inf"), 2.0], device=device)
    t = torch.tensor([0.0, float("inf"), float("inf"), 2.0], device=device)
    for reduction in REDUCTIONS:
        torch.testing.assert_close(F.mse_loss(x, t, reduction=reduction), TF.mse_loss(x, t, reduction=reduction),
                                   equal_nan=True)


@pytest.mark.parametrize("size_average, reduce", [(None, False), (True, None), (False, None), (False, True)])
def test_legacy_arguments_like_torch(size_average, reduce):
    x, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        loss = F.mse_loss(x, t, size_average=size_average, reduce=reduce)
    with pytest.warns(UserWarning):
        ref = TF.mse_loss(x, t, size_average=size_average, reduce=reduce)
    torch.testing.assert_close(loss, ref)
    with pytest.warns(UserWarning):
        module = torchext.nn.MSELoss(size_average=size_average, reduce=reduce)
    with pytest.warns(UserWarning):
        ref_module = torch.nn.MSELoss(size_average=size_average, reduce=reduce)
    assert module.reduction == ref_module.reduction
    torch.testing.assert_close(module(x, t), ref)


def test_invalid_reduction_raises_value_error_like_torch():
    x, t = torch.randn(3), torch.randn(3)
    with pytest.raises(ValueError, match="^foo is not a valid value for reduction$"):
        F.mse_loss(x, t, reduction="foo")
    with pytest.raises(ValueError, match="is not a valid value for reduction"):
        torchext.nn.MSELoss(reduction="average")(x, t)


def test_non_broadcastable_shapes_raise_runtime_error_like_torch():
    x, t = torch.randn(3, 4), torch.randn(5)
    with pytest.raises(RuntimeError, match="must match the size of tensor"), pytest.warns(UserWarning):
        TF.mse_loss(x, t)
    with pytest.raises(RuntimeError, match="must match the size of tensor"), pytest.warns(UserWarning):
        F.mse_loss(x, t)


@pytest.mark.parametrize("dtypes", [(torch.int64, torch.int64), (torch.int32, torch.int64), (torch.bool, torch.bool),
                                    (torch.complex64, torch.complex64)])
def test_unsupported_result_dtypes_raise_like_torch(dtypes):
    x, t = torch.ones(3, dtype=dtypes[0]), torch.ones(3, dtype=dtypes[1])
    with pytest.raises(NotImplementedError):
        TF.mse_loss(x, t)
    with pytest.raises(NotImplementedError, match="'input'.*'target'"):
        F.mse_loss(x, t)


@pytest.mark.parametrize("which", ["input", "target"])
def test_non_tensor_arguments_raise_what_torch_raises(which):
    # torch raises AttributeError (from calling .size() on it); ours is also a TypeError naming the argument.
    args = {"input": torch.randn(3), "target": torch.randn(3)}
    args[which] = [1.0, 2.0, 3.0]
    with pytest.raises(AttributeError):
        TF.mse_loss(**args)
    with pytest.raises(AttributeError, match="'%s'" % which):
        F.mse_loss(**args)
    with pytest.raises(TypeError, match="'%s' must be Tensor" % which):
        F.mse_loss(**args)


def test_ops_validate_their_arguments():
    ops = torch.ops.torchext
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="'target' to have shape"):
        ops.mse_loss(x, torch.randn(4, 3), 1)
    # Exception types as torch's kernels: disagreeing dtypes RuntimeError, no kernel for a dtype
    # NotImplementedError.
    with pytest.raises(RuntimeError, match="'target' to have dtype"):
        ops.mse_loss_forward(x, x.double(), 1)
    with pytest.raises(RuntimeError, match="'grad_output' to have dtype"):
        ops.mse_loss_backward(torch.ones((), dtype=torch.float64), x, 2)
    with pytest.raises(NotImplementedError, match="'input'"):
        ops.mse_loss(x.long(), x.long(), 1)
    with pytest.raises(ValueError, match="'reduction'"):
        ops.mse_loss(x, x, 3)
    with pytest.raises(RuntimeError, match="'grad_output' to be 0-dimensional"):
        ops.mse_loss_backward(torch.ones(1), x, 1)
    with pytest.raises(RuntimeError, match="'grad_output' to have shape"):
        ops.mse_loss_backward(torch.ones(3), x, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_forward_op_returns_loss_and_diff_from_one_call(reduction, device):
    x, t = _data((17, 9), torch.float32, device), _data((17, 9), torch.float32, device)
    loss, diff = torch.ops.torchext.mse_loss_forward(x, t, reduction)
    torch.testing.assert_close(diff, x - t, atol=0, rtol=0)
    torch.testing.assert_close(loss, torch.ops.torchext.mse_loss(x, t, reduction), atol=0, rtol=0)
    g = _data(loss.shape, torch.float32, device)
    expected = 2 * (x - t) * g / (x.numel() if reduction == 1 else 1)
    torch.testing.assert_close(torch.ops.torchext.mse_loss_backward(g, diff, reduction), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck(reduction, device):
    x = torch.randn(5, 6, device=device, requires_grad=True)
    t = torch.randn(5, 6, device=device)
    xt = torch.randn(6, 5, device=device).t()
    ops = torch.ops.torchext
    torch.library.opcheck(ops.mse_loss, (x.detach(), t, reduction))
    torch.library.opcheck(ops.mse_loss, (xt, t, reduction))
    torch.library.opcheck(ops.mse_loss_forward, (x.detach(), t, reduction))
    g = torch.randn(5, 6, device=device) if reduction == 0 else torch.randn((), device=device)
    torch.library.opcheck(ops.mse_loss_backward, (g, x.detach() - t, reduction))


def test_module_matches_torch_module():
    for kw in ({}, {"reduction": "sum"}, {"reduction": "none"}):
        ours, ref = torchext.nn.MSELoss(**kw), torch.nn.MSELoss(**kw)
        assert repr(ours) == repr(ref)
        assert ours.state_dict() == ref.state_dict()
        assert ours.reduction == ref.reduction
        x, t = torch.randn(4, 6), torch.randn(4, 6)
        torch.testing.assert_close(ours(x, t), ref(x, t))
    assert isinstance(torchext.nn.MSELoss(), torch.nn.modules.loss._Loss)


def test_ops_are_registered_in_one_namespace():
    for name in ["mse_loss", "mse_loss_forward", "mse_loss_backward"]:
        assert hasattr(torch.ops.torchext, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_round_exactly_like_torch_casts(dtype, device):
    # Every 16-bit pattern (subnormals, infinities, NaNs, both zeros) against a shuffled partner:
    # diff and the unreduced loss must equal computing in float32 and casting once.
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype).to(device)
    t = x[torch.randperm(x.numel(), device=device)]
    loss, diff = torch.ops.torchext.mse_loss_forward(x, t, 0)
    d32 = x.float() - t.float()
    torch.testing.assert_close(diff, d32.to(dtype), equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(loss, (d32 * d32).to(dtype), equal_nan=True, atol=0, rtol=0)


def test_every_cpu_simd_level_gives_the_same_results(tmp_path):
    # The kernels are compiled per SIMD level (and float16 takes a separate F16C path above the
    # baseline); run the baseline in a child process and compare with this process's level.
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch, torchext\n"
        "torch.manual_seed(0)\n"
        "out = {}\n"
        "for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16):\n"
        "    x, t = torch.randn(4099, dtype=dt), torch.randn(4099, dtype=dt)\n"
        "    g = torch.randn(4099, dtype=dt)\n"
        "    loss, diff = torch.ops.torchext.mse_loss_forward(x, t, 0)\n"
        "    total = torch.ops.torchext.mse_loss(x, t, 2)\n"
        "    grads = [torch.ops.torchext.mse_loss_backward(g, diff, 0),\n"
        "             torch.ops.torchext.mse_loss_backward(g[0].clone(), diff, 1)]\n"
        "    relu = [torch.ops.torchext.relu(x), torch.ops.torchext.relu_backward(g, torch.ops.torchext.relu(x))]\n"
        "    out[str(dt)] = (x, t, g, loss, diff, total, grads, relu)\n"
        "torch.save(out, sys.argv[1])\n")
    path = tmp_path / "baseline.pt"
    run_at_cpu_level("default", script, path)
    ops = torch.ops.torchext
    for dt, (x, t, g, loss, diff, total, grads, relu) in torch.load(path).items():
        ours_loss, ours_diff = ops.mse_loss_forward(x, t, 0)
        assert torch.equal(ours_loss, loss) and torch.equal(ours_diff, diff), dt
        assert torch.equal(ops.mse_loss_backward(g, diff, 0), grads[0]), dt
        assert torch.equal(ops.mse_loss_backward(g[0].clone(), diff, 1), grads[1]), dt
        assert torch.equal(ops.relu(x), relu[0]) and torch.equal(ops.relu_backward(g, relu[0]), relu[1]), dt
        # Sums may associate differently per SIMD width.
        torch.testing.assert_close(ops.mse_loss(x, t, 2), total, rtol=1e-3 if x.element_size() == 2 else 1e-6,
                                   atol=0)
