"""torchext.functional.linear / linear_relu and torchext.nn.Linear / LinearReLU against torch: outputs and
every gradient over shapes, dtypes, layouts and ranks, the CPU GEMM's edge tiles at each SIMD level,
integers, complex, bias broadcasting and linear_batched. Bad arguments are in test_errors.py,
opcheck in test_opcheck.py."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchext
from conftest import ALL_DTYPES, DEVICES, HAS_CUDA, run_at_cpu_level

F = torchext.functional
ops = torch.ops.torchext

# Relative tolerance against torch in the same dtype. Half types accumulate in float in both, so
# the difference is a few output roundings; the absolute part is scaled by the largest reference
# value, which grows with the reduction length (K for the output, M for dW and db).
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# (M, K, N): batch, in_features, out_features
SHAPES = [(1, 1, 1), (7, 33, 1), (33, 7, 1000), (1000, 33, 7), (1023, 257, 33), (64, 1000, 100), (1, 1023, 7),
          (300, 513, 129)]


def _close(actual, expected, dtype):
    tol = TOL[dtype]
    scale = expected.detach().abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(scale, 1.0))


def _inputs(M, K, N, dtype, device, bias=True):
    # weight ~ U(-1/sqrt(K), 1/sqrt(K)) like nn.Linear, so outputs are O(1) for every K.
    x = torch.randn(M, K, dtype=torch.float64, device=device).to(dtype)
    w = ((torch.rand(N, K, dtype=torch.float64, device=device) * 2 - 1) / math.sqrt(K)).to(dtype)
    b = (torch.randn(N, dtype=torch.float64, device=device) * 0.5).to(dtype) if bias else None
    return x, w, b


def _kink_free(draw, relu):
    """draw() -> (x, w, b) for gradcheck, redrawn until every pre-activation of the ReLU epilogue is
    at least 1e-3 from the kink at 0: there the derivative is undefined, and gradcheck's finite
    differences (inputs moved by 1e-6, so pre-activations by up to ~4e-6) would straddle it."""
    for _ in range(100):
        x, w, b = draw()
        z = torch.nn.functional.linear(x, w, b)
        if not relu or z.numel() == 0 or z.abs().min() > 1e-3:
            return x, w, b
    raise AssertionError("no kink-free draw in 100 tries")


def _torch_fn(relu):
    if relu:
        return lambda x, w, b: torch.relu(torch.nn.functional.linear(x, w, b))
    return torch.nn.functional.linear


def _ours_fn(relu):
    return F.linear_relu if relu else F.linear


def _compare_forward_backward(x, w, b, relu, dtype):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    y = _ours_fn(relu)(*leaves[:2], leaves[2] if b is not None else None)
    y_ref = _torch_fn(relu)(*ref_leaves[:2], ref_leaves[2] if b is not None else None)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    _close(y, y_ref, dtype)
    g = torch.randn(y.shape, dtype=torch.float64, device=y.device).to(dtype)
    if relu and y.numel():
        # Pre-activations within the dtype's rounding of 0 may land on either side of the kink in
        # either library (sums in another order), and the mask with them: no gradient flows in
        # there, so the comparison does not hinge on that coin flip.
        z = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
        near_kink = z.abs() <= TOL[dtype] * max(1.0, z.abs().max().item())
        g = g.masked_fill(near_kink, 0)
    y.backward(g)
    y_ref.backward(g)
    for ours, ref in zip(leaves, ref_leaves):
        assert ours.grad is not None and ours.grad.shape == ref.grad.shape
        _close(ours.grad, ref.grad, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_output_and_grads_match_torch(relu, shape, dtype, device):
    x, w, b = _inputs(*shape, dtype, device)
    _compare_forward_backward(x, w, b, relu, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_without_bias(relu, dtype, device):
    x, w, _ = _inputs(33, 65, 17, dtype, device, bias=False)
    _compare_forward_backward(x, w, None, relu, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("view", ["transposed", "sliced", "transposed_and_sliced"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_non_contiguous_input_and_weight(relu, view, dtype, device):
    x, w, b = _inputs(70, 66, 40, dtype, device)
    if view == "transposed":  # same values, column-major storage
        x, w = x.t().contiguous().t(), w.t().contiguous().t()
        assert not x.is_contiguous() and not w.is_contiguous()
    elif view == "sliced":
        x, w, b = x[::2, 1::2], w[1::3, ::2], b[1::3]  # every stride > 1
    else:
        x = x.t().contiguous().t()[::3]  # column-major storage, then every third row
        w, b = w.t().contiguous().t()[::2], b[::2]
    _compare_forward_backward(x, w, b, relu, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 1), (33, 7, 7), (1, 33, 33)], ids=lambda s: "x".join(map(str, s)))
def test_gradcheck_and_gradgradcheck(shape, relu, bias, device):
    x, w, b = _kink_free(lambda: _inputs(*shape, torch.float64, device, bias=bias), relu)
    args = tuple(t.requires_grad_() for t in (x, w, b) if t is not None)
    fn = _ours_fn(relu)

    def f(*a):
        return fn(a[0], a[1], a[2] if bias else None)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_gradcheck_non_contiguous(relu, device):
    x, w, b = _kink_free(lambda: _inputs(9, 7, 5, torch.float64, device), relu)
    xt = x.t().contiguous().t().requires_grad_()
    wt = w.t().contiguous().t().requires_grad_()
    assert torch.autograd.gradcheck(_ours_fn(relu), (xt, wt, b.requires_grad_()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lead", [(), (3,), (2, 3), (2, 1, 4)], ids=lambda s: "lead%s" % (s,))
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_any_rank_input(relu, lead, device):
    x = torch.randn(*lead, 33, dtype=torch.float64, device=device)
    _, w, b = _inputs(1, 33, 7, torch.float64, device)
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    y = _ours_fn(relu)(x, w, b)
    y_ref = _torch_fn(relu)(x_ref, w, b)
    assert y.shape == y_ref.shape == (*lead, 7)
    _close(y, y_ref, torch.float64)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    _close(x.grad, x_ref.grad, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lead,bias", [((), False), ((), True), ((5,), False), ((2, 3), False)],
                         ids=["1d", "1d_bias", "2d", "3d"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_one_dimensional_weight(relu, lead, bias, device):
    # torch takes a 1-D weight [in] as one output feature and drops that dim: [..., in] -> [...];
    # a bias is allowed only with a 1-D input.
    x, w, b = _kink_free(lambda: (torch.randn(*lead, 33, dtype=torch.float64, device=device),
                                  torch.randn(33, dtype=torch.float64, device=device),
                                  torch.randn((), dtype=torch.float64, device=device) if bias else None), relu)
    x, w = x.requires_grad_(), w.requires_grad_()
    b = b.requires_grad_() if bias else None
    y = _ours_fn(relu)(x, w, b)
    y_ref = _torch_fn(relu)(x, w, b)
    assert y.shape == y_ref.shape == lead
    _close(y, y_ref, torch.float64)
    args = (x, w, b) if bias else (x, w)
    fn = (lambda x, w, b: _ours_fn(relu)(x, w, b)) if bias else (lambda x, w: _ours_fn(relu)(x, w))
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_empty_batch_forward_and_backward(relu, dtype, device):
    x, w, b = _inputs(0, 17, 5, dtype, device)
    _compare_forward_backward(x, w, b, relu, dtype)
    x3 = torch.randn(2, 0, 17, device=device).to(dtype)
    assert _ours_fn(relu)(x3, w, b).shape == (2, 0, 5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_zero_in_features_gives_bias(relu, device):
    x, w, b = _inputs(4, 0, 6, torch.float32, device)
    _compare_forward_backward(x, w, b, relu, torch.float32)
    y = _ours_fn(relu)(x, w, None)
    torch.testing.assert_close(y, torch.zeros(4, 6, device=device), atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_only_requested_grads_are_computed(relu, device):
    x, w, b = _inputs(8, 5, 3, torch.float64, device)
    w.requires_grad_()
    y = _ours_fn(relu)(x, w, b)  # neither input nor bias requires grad
    y.sum().backward()
    assert x.grad is None and b.grad is None and w.grad is not None
    w2 = w.detach()
    x.requires_grad_()
    _ours_fn(relu)(x, w2, b).sum().backward()
    assert x.grad is not None and w2.grad is None
    # Only the weight's backward GEMM runs when only the weight needs a gradient, with or
    # without a graph of the gradient being recorded: the GEMMs the backward dispatches are counted.
    for create_graph in (False, True):
        w3 = w.detach().requires_grad_()
        y = _ours_fn(relu)(x.detach(), w3, b)
        with _RecordOps() as record:
            torch.autograd.grad(y.sum(), w3, create_graph=create_graph)
        # dW = linear(dY.t(), X.t())
        assert [tuple(args[0].shape) for name, args in record.calls if name == "torchext.linear.default"] == [(3, 8)]


class _RecordOps(TorchDispatchMode):
    """Records every op dispatched below autograd while active, with its arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
def test_relu_nan_propagates_like_torch(device):
    x = torch.tensor([[1.0, float("nan")], [-2.0, 0.5]], device=device)
    w = torch.eye(2, device=device)
    torch.testing.assert_close(F.linear_relu(x, w), torch.relu(torch.nn.functional.linear(x, w)), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
# (100003, 1): a tall, narrow grad, summed in many row chunks on CUDA (a bias grad of Linear(k, 1)).
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (1000, 7), (1023, 300), (100003, 1), (0, 5), (5, 0)], ids=str)
def test_grad_helpers_match_torch(shape, dtype, device):
    # Column sums against the float64 sum rounded once. (While the CPU kernel summed float32 in
    # float, the (100003, 1) case was off by up to 2e-4 and failed in about 1% of runs.)
    g = torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
    r = torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
    _close(ops.linear_bias_grad(g), g.double().sum(0).to(dtype), dtype)
    masked, sums = ops.linear_relu_grad(g, r)
    expected = torch.ops.aten.threshold_backward(g, r, 0)
    torch.testing.assert_close(masked, expected, atol=0, rtol=0)
    _close(sums, expected.double().sum(0).to(dtype), dtype)
    gt = g.t().contiguous().t()  # non-contiguous grad_output
    _close(ops.linear_bias_grad(gt), g.double().sum(0).to(dtype), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4097, 300), (50001, 3)], ids=str)
def test_grad_helpers_are_deterministic(shape, device):
    g = torch.randn(shape, device=device)
    r = torch.randn(shape, device=device)
    assert torch.equal(ops.linear_bias_grad(g), ops.linear_bias_grad(g))
    assert torch.equal(ops.linear_relu_grad(g, r)[1], ops.linear_relu_grad(g, r)[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("cls", ["Linear", "LinearReLU"])
def test_module_matches_torch_linear(cls, bias, device):
    ours = getattr(torchext.nn, cls)(33, 7, bias=bias, device=device)
    ref = torch.nn.Linear(33, 7, bias=bias, device=device)
    assert repr(ours).replace(cls, "Linear") == repr(ref)
    assert ours.__constants__ == ref.__constants__
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 5, 33, device=device)
    expected = ref(x) if cls == "Linear" else torch.relu(ref(x))
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
    ref2 = torch.nn.Linear(33, 7, bias=bias, device=device)
    ref2.load_state_dict(getattr(torchext.nn, cls)(33, 7, bias=bias, device=device).state_dict())


def test_module_init_follows_torch():
    torch.manual_seed(0)
    ours = torchext.nn.Linear(100, 50, dtype=torch.float64)
    torch.manual_seed(0)
    ref = torch.nn.Linear(100, 50, dtype=torch.float64)
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
    bound = 1 / math.sqrt(100)
    assert ours.weight.abs().max() <= bound and ours.bias.abs().max() <= bound
    assert ours.weight.dtype == torch.float64
    lr = torchext.nn.LinearReLU(100, 50)
    assert lr.in_features == 100 and lr.out_features == 50 and lr.weight.shape == (50, 100)


INTEGER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("fused", [False, True], ids=["linear", "linear_relu"])
@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_integer_linear_matches_torch(dtype, fused, bias):
    # torch computes integer Linear on the CPU, with products and sums wrapping around in the type.
    # Values over the type's whole range, so nearly every output wraps; odd shapes, a transposed
    # weight, a batched input, an empty batch and no input features; results equal to the bit.
    info = torch.iinfo(dtype)

    def draw(*shape):
        return torch.randint(info.min, info.max, shape, dtype=torch.int64).to(dtype)

    ours = F.linear_relu if fused else F.linear

    def theirs(x, w, b):
        out = torch.nn.functional.linear(x, w, b)
        return torch.relu(out) if fused else out
    cases = [
        (draw(37, 53), draw(29, 53)),  # small: one dot product per output
        (draw(70, 61), draw(67, 61)),  # over 2^18 products: the tiled kernel, with partial tiles
        (draw(5, 3, 7), draw(7, 4).t()),  # batched input, non-contiguous weight
        (draw(0, 9), draw(6, 9)),  # empty batch
        (draw(4, 0), draw(6, 0)),  # no input features: the output is the bias
        (draw(9), draw(3, 9)),  # 1-D input
    ]
    for x, w in cases:
        b = draw(w.shape[0]) if bias else None
        out = ours(x, w, b)
        expected = theirs(x, w, b)
        assert out.dtype == dtype and out.shape == expected.shape
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
    # The per-entry batched op (vmap's rule) takes integers too.
    x, w, b = draw(6, 8), draw(5, 8), draw(5)
    batched = torch.ops.torchext.linear_batched(torch.stack([x, x + 1]), torch.stack([w, w * 3]),
                                                torch.stack([b, b]) if bias else None, fused)
    for e, (xe, we) in enumerate([(x, w), (x + 1, w * 3)]):
        torch.testing.assert_close(batched[e], theirs(xe, we, b if bias else None), atol=0, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("api", ["allow_tf32", "fp32_precision"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_cuda_float32_uses_tf32_only_when_allowed(relu, api):
    # Through the old switch and through the one torch 2.9 added, set alone (then torch's old getter
    # raises, so the kernel must not ask it). TF32 keeps 10 mantissa bits: over k = 1000 the result
    # must differ from the float32 one, or TF32 was not used.
    matmul = torch.backends.cuda.matmul
    new_api = hasattr(matmul, "fp32_precision")
    if api == "fp32_precision" and not new_api:
        pytest.skip("this torch has no fp32_precision setting")
    x, w, b = _inputs(129, 1000, 70, torch.float64, "cuda")
    ref = _torch_fn(relu)(x, w, b)
    x, w, b = x.float(), w.float(), b.float()
    off, on = {"allow_tf32": (False, True), "fp32_precision": ("ieee", "tf32")}[api]
    saved = matmul.fp32_precision if new_api else matmul.allow_tf32
    try:
        setattr(matmul, api, off)
        exact = _ours_fn(relu)(x, w, b)
        setattr(matmul, api, on)
        fast = _ours_fn(relu)(x, w, b)
    finally:
        setattr(matmul, "fp32_precision" if new_api else "allow_tf32", saved)
    torch.testing.assert_close(exact.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-2, atol=1e-2)
    assert not torch.equal(fast, exact)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cuda_large_ragged_shape(dtype):
    # Several 64 x 64 tiles in each direction, none of M, N, K a multiple of the tile sizes.
    x, w, b = _inputs(1000, 1023, 333, dtype, "cuda")
    _compare_forward_backward(x, w, b, True, dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_more_column_tiles_than_the_grid_holds(dtype):
    # 65535 * 64 + 65 output features: more 64-column tiles than gridDim.y may hold, so blocks take
    # several each (SIMT kernel in float32, tensor cores in bfloat16); the last, partial tile too.
    # Backward's dX and dW have that many in their K and M instead.
    x, w, b = _inputs(3, 5, 65535 * 64 + 65, dtype, "cuda")
    _compare_forward_backward(x, w, b, True, dtype)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_runs_on_the_inputs_device():
    x, w, b = _inputs(33, 17, 9, torch.float32, "cuda:1")
    y = F.linear(x, w, b)
    assert y.device == x.device
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_batch_beyond_65535_row_tiles(dtype):
    # 4,194,305 rows are 65,536 tiles of 64: more than a grid's y dimension holds, so rows go on x.
    x = torch.randn(4_194_305, 8, device="cuda", dtype=dtype)
    w = torch.randn(3, 8, device="cuda", dtype=dtype)
    b = torch.randn(3, device="cuda", dtype=dtype)
    y = F.linear_relu(x, w, b)
    y_ref = torch.relu(torch.nn.functional.linear(x.double(), w.double(), b.double()))
    _close(y, y_ref.to(dtype), dtype)


# bfloat16 GEMMs on CPUs with AVX512_BF16 multiply bf16 pairs in hardware (cpu_bf16_dot); the
# shapes cover an odd K (a padded pair), K over one 512-deep slice, more rows than one row tile
# (288), ragged rows and columns, and the operand layouts each packing path takes.
# Up to 16 rows with both operands contiguous along K take dot products instead (no packing): K
# under one 32-value vector, a ragged K, and two row groups.
@pytest.mark.parametrize("shape", [(5, 7, 3), (64, 1000, 100), (300, 1025, 77), (13, 1024, 33), (2, 31, 5),
                                   (8, 4100, 33), (16, 1000, 9), (11, 96, 1)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed_input", "transposed_weight", "odd_stride"])
def test_bfloat16_cpu_gemm_is_a_float32_sum_rounded_once(shape, layout):
    M, K, N = shape
    x = torch.randn(M, K).bfloat16()
    w = torch.randn(N, K).bfloat16()
    b = torch.randn(N).bfloat16()
    if layout == "transposed_input":
        x = x.t().contiguous().t()
    elif layout == "transposed_weight":
        w = w.t().contiguous().t()
    elif layout == "odd_stride":  # rows at an odd element stride: pairs are not 4-byte words
        pad = 1 if K % 2 == 0 else 2
        x = torch.cat([x, torch.randn(M, pad).bfloat16()], 1)[:, :K]
        w = torch.cat([w, torch.randn(N, pad).bfloat16()], 1)[:, :K]
        assert x.stride(0) % 2 == 1
    out = ops.linear(x, w, b).float()
    _assert_rounded_once(out, x, w, b)
    relu_out = ops.linear_relu(x, w, b).float()
    assert torch.equal(relu_out, out.clamp_min(0))


def _assert_rounded_once(out, x, w, b):
    exact = x.double() @ w.double().t() + b.double()
    # One rounding to bfloat16 (half an ulp, 2^-9 relative) of a float32 sum whose own error is far
    # below 1e-4 of the sum of |terms|.
    bound = 2.0 ** -8 * exact.abs() + 1e-4 * (x.double().abs() @ w.double().abs().t() + b.double().abs())
    assert ((out.double() - exact).abs() <= bound).all()


def test_bfloat16_cpu_gemm_without_the_dot_product_extension(tmp_path):
    # TORCHEXT_CPU_CAPABILITY (any value) switches AVX512_BF16 off: bf16 then goes through float32
    # panels, which must meet the same bound (machines without the extension run this path).
    inputs = [(torch.randn(M, K).bfloat16(), torch.randn(N, K).bfloat16(), torch.randn(N).bfloat16())
              for M, K, N in [(5, 7, 3), (300, 1025, 77)]]
    torch.save(inputs, tmp_path / "in.pt")
    script = ("import sys, torch, torchext\n"
              "inputs = torch.load(sys.argv[1])\n"
              "torch.save((torchext._C.cpu_bf16_dot(), [torch.ops.torchext.linear(x, w, b) for x, w, b in inputs]),"
              " sys.argv[2])\n")
    run_at_cpu_level("avx512", "-c", script, tmp_path / "in.pt", tmp_path / "out.pt")
    used_dot, outs = torch.load(tmp_path / "out.pt")
    assert not used_dot
    for (x, w, b), out in zip(inputs, outs):
        _assert_rounded_once(out.float(), x, w, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=str)
@pytest.mark.parametrize("rows", [37, 12])
def test_half_types_propagate_non_finite_inputs(rows, value, dtype, device):
    # Each half-type GEMM path (bf16 pair dot products, packed or, for few rows, straight from
    # memory; F16C/float panels; tensor cores) keeps a non-finite input element in exactly the
    # output row it belongs to. The reference is float64: torch's own bfloat16 CPU GEMM (oneDNN,
    # on an AVX512_BF16 machine) was seen to put NaN into row 4 here, a row without a non-finite input.
    x = torch.randn(rows, 65, device=device).to(dtype)
    x[5, 3] = value
    x[rows - 2, 64] = value  # the last k: a padded pair, or a masked tail
    w = torch.randn(33, 65, device=device).to(dtype)
    b = torch.randn(33, device=device).to(dtype)
    ours = F.linear(x, w, b)
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double()).to(dtype)
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.isinf(), ref.isinf())
    poisoned = (5, rows - 2)
    assert torch.equal(ours.isfinite().all(1), torch.tensor([r not in poisoned for r in range(rows)], device=device))
    finite = ref.isfinite()
    _close(ours[finite], ref[finite], dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_calls_without_a_graph_skip_the_function_and_match(relu, device):
    # No grad mode, or no input requiring grad: the op runs directly (no autograd node), same values.
    x, w, b = _inputs(9, 6, 4, torch.float32, device)
    w.requires_grad_()
    with_graph = _ours_fn(relu)(x, w, b)
    assert with_graph.grad_fn is not None
    with torch.no_grad():
        plain = _ours_fn(relu)(x, w, b)
    assert plain.grad_fn is None and not plain.requires_grad
    assert torch.equal(plain, with_graph.detach())
    nothing_needs_grad = _ours_fn(relu)(x.reshape(3, 3, 6), w.detach(), b)  # N-D input, no grad needed
    assert nothing_needs_grad.grad_fn is None and nothing_needs_grad.shape == (3, 3, 4)
    assert torch.equal(nothing_needs_grad.reshape(9, 4), plain)


# Every edge of the CPU register tiles: rows 1..25 cover each remainder of the 12-row (AVX-512) and
# 6-row (AVX2, baseline) tiles, plus whole tiles; columns straddle the one- and two-vector widths
# of each level (4, 8, 16 and 32 lanes); K = 600 spans two k slices (partial sums through the edge
# tiles). Row-major input takes the unpacked-A path for float32/float64, a transposed view the
# packed one; the weight comes row-major (forward) and column-major (backward's operands).
EDGE_ROWS = range(1, 26)
EDGE_COLS = [1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100]
EDGE_DTYPES = ["float64", "float32", "float16", "bfloat16"]


def _edge_inputs(dtype):
    gen = torch.Generator().manual_seed(11)
    cases = []
    for M in EDGE_ROWS:
        for N in EDGE_COLS:
            K = 600 if (M + N) % 3 == 0 else 37
            x = torch.randn(M, K, generator=gen).to(dtype)
            if (M + N) % 2:
                x = x.t().contiguous().t()  # same values, column-major: the packed path
            w = torch.randn(N, K, generator=gen).to(dtype)
            if (M * N) % 4 < 2:
                w = w.t().contiguous().t()  # column-major weight, as W^T and X^T are in backward
            cases.append((x, w, torch.randn(N, generator=gen).to(dtype)))
    return cases


def _edge_outputs(dtype):
    return [(torchext.functional.linear(x, w, b), torchext.functional.linear_relu(x, w, b))
            for x, w, b in _edge_inputs(dtype)]


def _check_edge_outputs(dtype, outputs):
    # A rigorous bound: K + 2 roundings of the accumulator over the sum of |terms|, then one
    # rounding to the output dtype. A skipped or misplaced edge value is off by O(terms).
    acc_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    out_eps = torch.finfo(dtype).eps
    inputs = _edge_inputs(dtype)
    assert len(outputs) == len(inputs)
    for (x, w, b), (out, out_relu) in zip(inputs, outputs):
        exact = x.double() @ w.double().t() + b.double()
        terms = x.double().abs() @ w.double().abs().t() + b.double().abs()
        bound = (x.shape[1] + 2) * acc_eps * terms + out_eps * exact.abs()
        assert out.dtype == dtype and out.shape == exact.shape
        assert ((out.double() - exact).abs() <= bound).all(), (tuple(x.shape), tuple(w.shape), x.stride())
        assert torch.equal(out_relu, out.clamp_min(0))


@pytest.mark.parametrize("dtype", EDGE_DTYPES)
def test_cpu_gemm_edge_tiles(dtype):
    dtype = getattr(torch, dtype)
    _check_edge_outputs(dtype, _edge_outputs(dtype))


@pytest.mark.parametrize("level", ["default", "avx2"])
def test_cpu_gemm_edge_tiles_at_lower_simd_levels(level, tmp_path):
    # The same sweep with the SIMD level capped (other tile shapes), each level in its own process.
    script = ("import sys, torch, torchext, test_linear as t\n"
              "torch.save((torchext._C.cpu_capability(), {d: t._edge_outputs(getattr(torch, d)) for d in t.EDGE_DTYPES}),"
              " sys.argv[1])\n")
    run_at_cpu_level(level, "-c", script, tmp_path / "out.pt")
    capability, outputs = torch.load(tmp_path / "out.pt")
    if capability != level:
        assert level != "default"  # the baseline is always available
        pytest.skip("this CPU (or a portable build) has no %s kernels" % level)
    for name in EDGE_DTYPES:
        _check_edge_outputs(getattr(torch, name), outputs[name])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_linear_batched_matches_per_entry_calls(relu, dtype, device):
    # linear_batched (vmap's rule when inputs and weights are both batched) is one linear per entry:
    # the same values as the per-entry op, for any strides, with or without bias, many entries (one
    # thread per entry on CPU) or few.
    op = torch.ops.torchext
    for entries, M, K, N in [(9, 1, 100, 33), (3, 37, 65, 17), (1, 5, 7, 3)]:
        x = torch.randn(entries, M, K, dtype=torch.float64, device=device).to(dtype)
        w = torch.randn(entries, K, N, dtype=torch.float64, device=device).to(dtype).transpose(1, 2)
        b = torch.randn(entries, N, dtype=torch.float64, device=device).to(dtype)
        for bias in (b, None, b[:1].expand(entries, N)):
            out = op.linear_batched(x, w, bias, relu)
            single = op.linear_relu if relu else op.linear
            expected = torch.stack([single(x[e], w[e], None if bias is None else bias[e]) for e in range(entries)])
            assert out.shape == (entries, M, N) and out.dtype == dtype
            torch.testing.assert_close(out, expected, atol=0, rtol=0)
    empty = op.linear_batched(x[:0], w[:0], None, relu)
    assert empty.shape == (0, M, N)


# (input shape, weight shape, bias shape or None): 2-D and N-D inputs, a 1-D input, a 1-D weight.
COMPLEX_SHAPES = [((7, 5), (3, 5), (3,)), ((7, 5), (3, 5), None), ((2, 4, 5), (3, 5), (3,)), ((5,), (3, 5), (3,)),
                  ((7, 5), (5,), None), ((5,), (5,), ())]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("shapes", COMPLEX_SHAPES, ids=str)
def test_complex_matches_torch(shapes, dtype, device):
    # torch's Linear takes complex tensors (x @ W^T + b, no conjugation); ours runs them through the
    # real GEMM. Output and every gradient against torch's.
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.complex64 else dict(atol=1e-12, rtol=1e-12)
    base = [None if s is None else torch.randn(s, dtype=dtype, device=device) for s in shapes]
    outs, grads = [], []
    for fn in (torch.nn.functional.linear, F.linear):
        leaves = [None if t is None else t.clone().requires_grad_() for t in base]
        y = fn(*leaves)
        g = torch.randn_like(y) if not outs else grads[0][0]
        (y * g.conj()).real.sum().backward()
        outs.append(y.detach())
        grads.append([g] + [t.grad for t in leaves if t is not None])
    assert outs[0].shape == outs[1].shape and outs[0].dtype == outs[1].dtype
    torch.testing.assert_close(outs[1], outs[0], **tol)
    for ours, ref in zip(grads[1][1:], grads[0][1:]):
        torch.testing.assert_close(ours, ref, **tol)
    if dtype == torch.complex128:
        leaves = [t.clone().requires_grad_() for t in base if t is not None]
        fn = F.linear if shapes[2] is not None else (lambda x, w: F.linear(x, w))
        assert torch.autograd.gradcheck(fn, leaves)
        assert torch.autograd.gradgradcheck(fn, leaves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
# (input shape, bias shape): a 0-dim bias, a [batch, out] bias, broadcast over leading dims.
@pytest.mark.parametrize("shapes", [((6, 5), ()), ((6, 5), (6, 3)), ((6, 5), (1, 3)), ((2, 6, 5), (6, 1)),
                                    ((2, 6, 5), (2, 1, 3))], ids=str)
def test_bias_broadcasting_like_torch(shapes, relu, device):
    # torch adds a bias that broadcasts to the output; the gradient is summed back to its shape.
    # (torch's own F.linear refuses some of these, e.g. a [6, 1] bias on a contiguous [2, 6, 5]
    # input, which it flattens to 12 rows first, yet takes it on a non-contiguous one; the
    # reference is the definition, x @ W^T + b.)
    x_shape, b_shape = shapes
    base = [torch.randn(x_shape, dtype=torch.float64, device=device), torch.randn(3, 5, dtype=torch.float64,
                                                                                   device=device),
            torch.randn(b_shape, dtype=torch.float64, device=device)]
    results = []
    definition = (lambda x, w, b: torch.relu(x @ w.T + b)) if relu else (lambda x, w, b: x @ w.T + b)
    for fn in (definition, _ours_fn(relu)):
        leaves = [t.clone().requires_grad_() for t in base]
        y = fn(*leaves)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=device).reshape(y.shape))
        results.append([y.detach()] + [t.grad for t in leaves])
    for ours, ref in zip(results[1], results[0]):
        torch.testing.assert_close(ours, ref)
    assert torch.autograd.gradcheck(_ours_fn(relu), [t.clone().requires_grad_() for t in base])


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_module_matches_torch(dtype):
    ref = torch.nn.Linear(5, 3, dtype=dtype)
    ours = torchext.nn.Linear(5, 3, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 5, dtype=dtype)
    torch.testing.assert_close(ours(x), ref(x))
