"""The CUDA kernels of csrc/cuda executed without a GPU, through the CPU emulation in tests/cuda_emu.

Each CUDA thread runs as a fiber, blocks run one after another and __syncthreads / warp shuffles
are real barriers, so these tests execute the kernels' own indexing, tiling, vector and scalar
paths, reductions, launch configurations and the multi-tensor engine's metadata, on CPU tensors,
and compare them with torch (or, for the optimizer steps, with torchext's CPU kernels, which the
optimizer tests compare with torch). They do not replace running on a GPU: timing, the memory
model and the real tensor-core instructions are not emulated (see tests/cuda_emu/emu_runtime.h).
The emulated ops are torch.ops.torchext_emu.*, registered for CPU tensors.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


FLOATS = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
INTS = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
# Element counts: empty, tiny, not a multiple of any vector width, and big enough that the
# grid-stride loops (24 blocks of 256 threads on the emulated 3-SM device) take several turns.
SIZES = [0, 1, 7, 1023, 100_003]


def layout(t, how):
    """t itself, or a copy of it laid out as asked: 'offset' starts one element into its storage
    (not 16-byte aligned, so the kernels take their scalar loops), 'transposed' is a non-contiguous
    view, 'padded' a view of the leading columns of a wider tensor whose rows start a multiple of
    64 bytes apart (16-byte aligned rows with a partial vector at their end; both 2-D only)."""
    if how == "contiguous":
        return t
    if how == "padded":
        assert t.dim() == 2
        if t.shape[0] == 0:
            return t
        per_row = 64 // t.element_size()
        wide = torch.empty(t.shape[0], (t.shape[1] // per_row + 1) * per_row, dtype=t.dtype)
        out = wide[:, :t.shape[1]]
        out.copy_(t)
        return out
    if how == "offset":
        buf = torch.empty(t.numel() + 1, dtype=t.dtype)
        out = buf[1:].view(t.shape)
        out.copy_(t)
        return out
    assert how == "transposed" and t.dim() == 2
    return t.t().contiguous().t()


def float_data(shape, dtype):
    x = torch.randn(shape, dtype=torch.float64)
    flat = x.view(-1)
    if flat.numel() >= 8:  # values the kernels must pass through unchanged or handle like torch
        flat[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=torch.float64)
        flat[:8] = flat[:8][torch.randperm(8)]
    return x.to(dtype)


def int_data(shape, dtype):
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -2**62), min(info.max, 2**62), shape, dtype=torch.int64).to(dtype)


def assert_same(actual, expected):
    torch.testing.assert_close(actual, expected, atol=0, rtol=0, equal_nan=True)


def test_kernels_run_through_the_emulated_launcher(emu):
    before = emu.emu_launch_stats()
    y = emu.relu(torch.randn(5000))
    launches, blocks, over_sm80_smem = (a - b for a, b in zip(emu.emu_launch_stats(), before))
    assert launches == 1 and blocks >= 2  # 5000 floats as 4-wide vectors: 1251 items, 5 blocks
    assert over_sm80_smem == 0  # ReLU asks for no dynamic shared memory
    assert (y >= 0).all()


# ---------------------------------------------------------------------------------------- ReLU

@pytest.mark.parametrize("how", ["contiguous", "offset"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_relu(emu, dtype, n, how):
    x = layout(float_data((n,), dtype) if dtype.is_floating_point else int_data((n,), dtype), how)
    assert_same(emu.relu(x), torch.relu(x))
    y = x.clone() if how == "contiguous" else layout(x, how)
    emu.relu_(y)
    assert_same(y, torch.relu(x))


@pytest.mark.parametrize("dtype", FLOATS + [torch.int32])
def test_relu_non_contiguous(emu, dtype):
    x = layout(float_data((33, 65), dtype) if dtype.is_floating_point else int_data((33, 65), dtype), "transposed")
    assert_same(emu.relu(x), torch.relu(x))
    y = x.clone().t().contiguous().t()
    base = y.t()
    emu.relu_(y)
    assert_same(y, torch.relu(x))
    assert_same(base, torch.relu(x).t())


@pytest.mark.parametrize("how", ["contiguous", "offset", "broadcast"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_relu_backward(emu, dtype, n, how):
    result = torch.relu(float_data((n,), dtype))
    if how == "broadcast":  # what sum() sends back: one value, all strides 0
        grad = torch.randn((), dtype=torch.float64).to(dtype).expand(n)
    else:
        grad = layout(float_data((n,), dtype), how)
    assert_same(emu.relu_backward(grad, layout(result, how if how != "broadcast" else "contiguous")),
                relu_grad(grad, result))


def relu_grad(grad, result):
    """torch's threshold_backward at 0: zero where the result is <= 0; a NaN result passes the gradient."""
    return torch.where(result <= 0, torch.zeros((), dtype=grad.dtype), grad)


@pytest.mark.parametrize("source", [(1, 1), (33, 1), ()])
def test_relu_backward_expanded_grad(emu, source):
    # One value over everything is read in place; a gradient broadcast along one dim is copied.
    result = torch.relu(float_data((33, 65), torch.float32))
    grad = torch.randn(source).expand(33, 65)
    assert_same(emu.relu_backward(grad, result), relu_grad(grad, result))


# ----------------------------------------------------------------------------------------- MSE

REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}
# The loss sums in double for float64/float32 and in float for half types (then one rounding).
SUM_TOL = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=1e-6, rtol=1e-6),
           torch.float16: dict(atol=1e-3, rtol=2e-3), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}


def math_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.mark.parametrize("how", ["contiguous", "offset"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_mse_forward(emu, dtype, reduction, n, how):
    x = layout(torch.randn(n, dtype=torch.float64).to(dtype), how)
    t = torch.randn(n, dtype=torch.float64).to(dtype)
    diff = (x.to(math_dtype(dtype)) - t.to(math_dtype(dtype)))
    if reduction == 0:
        expected = (diff * diff).to(dtype)
        tol = dict(atol=0, rtol=0) if dtype in (torch.float64, torch.float32) else SUM_TOL[dtype]
    else:
        expected = torch.nn.functional.mse_loss(x.double(), t.double(), reduction=REDUCTIONS[reduction]).to(dtype)
        tol = SUM_TOL[dtype]
    loss = emu.mse_loss(x, t, reduction)
    torch.testing.assert_close(loss, expected, equal_nan=True, **tol)
    loss2, saved = emu.mse_loss_forward(x, t, reduction)
    torch.testing.assert_close(loss2, expected, equal_nan=True, **tol)
    assert_same(saved, diff.to(dtype))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_mse_backward(emu, dtype, reduction, n):
    diff = torch.randn(n, dtype=torch.float64).to(dtype)
    if reduction == 0:
        grad = layout(torch.randn(n, dtype=torch.float64).to(dtype), "offset")
    else:
        grad = torch.randn((), dtype=torch.float64).to(dtype)
    scale = 2.0 / n if reduction == 1 and n else 2.0
    expected = (diff.double() * grad.double() * scale).to(dtype)
    torch.testing.assert_close(emu.mse_loss_backward(grad, diff, reduction), expected, **SUM_TOL[dtype])


def test_mse_non_contiguous(emu):
    x = layout(torch.randn(33, 65, dtype=torch.float64), "transposed")
    t = torch.randn(33, 65, dtype=torch.float64)
    torch.testing.assert_close(emu.mse_loss(x, t, 2), torch.nn.functional.mse_loss(x, t, reduction="sum"))
    assert_same(emu.mse_loss(x, t, 0), (x - t) ** 2)


# -------------------------------------------------------------------------------------- Linear

# (M, N, K): ones, sizes that are no multiple of any tile (64 x 64 outputs, K slices of 16 or 32),
# exact tiles, and empty dimensions.
LINEAR_SHAPES = [(1, 1, 1), (7, 33, 65), (67, 130, 33), (130, 7, 1), (64, 64, 64), (65, 3, 100),
                 (0, 5, 3), (4, 0, 3), (5, 3, 0)]


def tf32(t):
    """float32 rounded to TF32 as the tensor cores' conversion does: 10 mantissa bits, ties away."""
    bits = t.view(torch.int32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = torch.where(finite, (bits + 0x1000) & ~0x1FFF, bits)
    return rounded.view(torch.float32)


def linear_reference(x, w, b, relu, use_tf32):
    xs, ws = (tf32(x), tf32(w)) if use_tf32 else (x, w)
    out = xs.double() @ ws.double().T
    if b is not None:
        out = out + b.double()
    return torch.relu(out) if relu else out


# float64 and float32 (SIMT) accumulate in the type; half types and TF32 in float32 from exact
# products, then round once: one ulp of the output dtype apart at most.
LINEAR_TOL = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=2e-5, rtol=1e-5),
              torch.float16: dict(atol=1e-3, rtol=1e-3), torch.bfloat16: dict(atol=8e-3, rtol=8e-3)}


# The GEMM families Linear can take: "default" (what the dispatch picks: mma.sync for 16-bit types
# and TF32, SIMT for float and double) and "wgmma", the Hopper GEMM (gemm_wgmma.cuh) that
# TORCHEXT_GEMM=wgmma asks for on sm_90 (the emulated device is one), for 16-bit types only.
FAMILIES = ["default", "wgmma"]


def use_family(monkeypatch, family, dtype):
    if family == "wgmma":
        if dtype not in (torch.float16, torch.bfloat16):
            pytest.skip("the Hopper GEMM takes 16-bit operands only")
        monkeypatch.setenv("TORCHEXT_GEMM", "wgmma")
    else:
        monkeypatch.delenv("TORCHEXT_GEMM", raising=False)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("how", ["contiguous", "input_t", "weight_t", "offset", "padded"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("mnk", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", FLOATS + ["tf32"])
def test_linear(emu, monkeypatch, dtype, mnk, relu, bias, how, family):
    use_family(monkeypatch, family, dtype)
    use_tf32 = dtype == "tf32"
    dtype = torch.float32 if use_tf32 else dtype
    M, N, K = mnk
    x = torch.randn(M, K, dtype=torch.float64).to(dtype)
    w = torch.randn(N, K, dtype=torch.float64).to(dtype)
    b = torch.randn(N, dtype=torch.float64).to(dtype) if bias else None
    if how == "input_t":
        x = layout(x, "transposed")
    elif how == "weight_t":
        w = layout(w, "transposed")
    elif how in ("offset", "padded"):
        x, w = layout(x, how), layout(w, how)
    expected = linear_reference(x, w, b, relu, use_tf32).to(dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = use_tf32
    try:
        out = (emu.linear_relu if relu else emu.linear)(x, w, b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert out.shape == (M, N) and out.dtype == dtype
    torch.testing.assert_close(out, expected, **LINEAR_TOL[dtype])


@pytest.mark.parametrize("how", ["contiguous", "input_t", "weight_t", "offset", "padded"])
@pytest.mark.parametrize("mnk", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_linear_strided_kernel_of_older_gpus(emu, dtype, mnk, how):
    # The strided SIMT kernel that GPUs older than sm_80 run for every dtype (newer ones take the
    # GEMMs above), reading each operand through its strides.
    M, N, K = mnk
    x = torch.randn(M, K, dtype=torch.float64).to(dtype)
    w = torch.randn(N, K, dtype=torch.float64).to(dtype)
    b = torch.randn(N, dtype=torch.float64).to(dtype)
    if how == "input_t":
        x = layout(x, "transposed")
    elif how == "weight_t":
        w = layout(w, "transposed")
    elif how in ("offset", "padded"):
        x, w = layout(x, how), layout(w, how)
    emu.emu_set_force_strided_gemm(True)
    try:
        out = emu.linear_relu(x, w, b)
    finally:
        emu.emu_set_force_strided_gemm(False)
    torch.testing.assert_close(out, linear_reference(x, w, b, True, False).to(dtype), **LINEAR_TOL[dtype])


def test_tf32_setting_changes_float32_results(emu):
    # Guards the test above: with TF32 the kernel must round its inputs, without it must not.
    x, w = torch.randn(16, 64), torch.randn(16, 64)
    exact = emu.linear(x, w, None)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        rounded = emu.linear(x, w, None)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert not torch.equal(exact, rounded)
    torch.testing.assert_close(rounded, linear_reference(x, w, None, False, True).float(), atol=2e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(0, 150), n=st.integers(0, 150), k=st.integers(0, 150),
       dtype=st.sampled_from(FLOATS + ["tf32"]), relu=st.booleans(), bias=st.booleans(),
       x_how=st.sampled_from(["contiguous", "transposed", "offset", "padded"]),
       w_how=st.sampled_from(["contiguous", "transposed", "offset", "padded"]), seed=st.integers(0, 2**31 - 1),
       wgmma=st.booleans())
def test_linear_drawn(emu, m, n, k, dtype, relu, bias, x_how, w_how, seed, wgmma):
    # Any shape up to 150 in each dimension, each operand in its own layout, through either family.
    if wgmma:
        os.environ["TORCHEXT_GEMM"] = "wgmma"  # (hypothesis draws many examples per fixture)
    else:
        os.environ.pop("TORCHEXT_GEMM", None)
    try:
        _linear_drawn(emu, m, n, k, dtype, relu, bias, x_how, w_how, seed)
    finally:
        os.environ.pop("TORCHEXT_GEMM", None)


def _linear_drawn(emu, m, n, k, dtype, relu, bias, x_how, w_how, seed):
    use_tf32 = dtype == "tf32"
    dtype = torch.float32 if use_tf32 else dtype
    g = torch.Generator().manual_seed(seed)
    x = layout(torch.randn(m, k, generator=g, dtype=torch.float64).to(dtype), x_how)
    w = layout(torch.randn(n, k, generator=g, dtype=torch.float64).to(dtype), w_how)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) if bias else None
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = use_tf32
    try:
        out = (emu.linear_relu if relu else emu.linear)(x, w, b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    torch.testing.assert_close(out, linear_reference(x, w, b, relu, use_tf32).to(dtype), **LINEAR_TOL[dtype])


# Each tile of the tensor-core GEMM table (csrc/cuda/gemm.h) with and without split-K, on the three
# GEMMs of a Linear: Y = relu(X W^T + b) reads both operands K-major, dX = dZ W reads W N-major,
# dW = dZ^T X reads both M/N-major (16-bit types; TF32 copies transposed operands K-major first).
# Aligned shapes read the operands where they lie; the odd one takes the padded copies.
GEMM_SHAPES = [(37, 72, 104), (16, 136, 64), (129, 264, 40), (33, 70, 100)]


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("tile", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "tf32"])
def test_gemm_tiles_forward_and_backward(emu, monkeypatch, dtype, tile, splits):
    use_tf32 = dtype == "tf32"
    dtype = torch.float32 if use_tf32 else dtype
    monkeypatch.setenv("TORCHEXT_GEMM_TILE", str(tile))
    monkeypatch.setenv("TORCHEXT_GEMM_SPLITS", str(splits))
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = use_tf32
    try:
        _gemm_three_ways(emu, dtype, use_tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _gemm_three_ways(emu, dtype, use_tf32, shapes=GEMM_SHAPES):
    for M, N, K in shapes:
        x = torch.randn(M, K, dtype=torch.float64).to(dtype)
        w = torch.randn(N, K, dtype=torch.float64).to(dtype)
        b = torch.randn(N, dtype=torch.float64).to(dtype)
        dz = torch.randn(M, N, dtype=torch.float64).to(dtype)
        y = emu.linear_relu(x, w, b)
        torch.testing.assert_close(y, linear_reference(x, w, b, True, use_tf32).to(dtype), **LINEAR_TOL[dtype])
        dx = emu.linear(dz, w.t(), None)
        torch.testing.assert_close(dx, linear_reference(dz, w.t(), None, False, use_tf32).to(dtype),
                                   **LINEAR_TOL[dtype])
        dw = emu.linear(dz.t(), x.t(), None)
        torch.testing.assert_close(dw, linear_reference(dz.t(), x.t(), None, False, use_tf32).to(dtype),
                                   **LINEAR_TOL[dtype])


# The Hopper GEMM: one CTA per emulated SM (3) walks several 128 x 256 tiles in the grouped order,
# and K runs past the 4-slot ring of 64-element slices several times, with and without split-K.
WGMMA_SHAPES = [(300, 600, 520), (129, 257, 64), (8, 20, 1000)]


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wgmma_gemm_forward_and_backward(emu, monkeypatch, dtype, splits):
    monkeypatch.setenv("TORCHEXT_GEMM", "wgmma")
    monkeypatch.setenv("TORCHEXT_GEMM_SPLITS", str(splits))
    before = emu.emu_launch_stats()
    _gemm_three_ways(emu, dtype, False, GEMM_SHAPES + WGMMA_SHAPES)
    launches = emu.emu_launch_stats()
    # Every GEMM went through the Hopper kernel: launches[2] counts the launches that need more shared
    # memory than sm_80 has, which only the Hopper GEMM's do.
    assert launches[2] - before[2] == 3 * len(GEMM_SHAPES + WGMMA_SHAPES)


def test_wgmma_gemm_only_when_asked(emu, monkeypatch):
    # Until the Hopper GEMM has passed on a GPU, the dispatch takes it only under TORCHEXT_GEMM=wgmma.
    x, w = torch.randn(64, 64).to(torch.bfloat16), torch.randn(64, 64).to(torch.bfloat16)
    monkeypatch.delenv("TORCHEXT_GEMM", raising=False)
    before = emu.emu_launch_stats()
    plain = emu.linear(x, w, None)
    assert emu.emu_launch_stats()[2] == before[2]
    monkeypatch.setenv("TORCHEXT_GEMM", "wgmma")
    hopper = emu.linear(x, w, None)
    assert emu.emu_launch_stats()[2] == before[2] + 1
    torch.testing.assert_close(hopper, plain, atol=8e-3, rtol=8e-3)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_simt_gemm_forward_and_backward(emu, monkeypatch, dtype, splits):
    # The SIMT GEMM (float without TF32, double) on the three GEMMs of a Linear, and on a transposed
    # input (M-major A with a K-major B); float splits K when asked, double keeps one split.
    monkeypatch.setenv("TORCHEXT_GEMM_SPLITS", str(splits))
    _gemm_three_ways(emu, dtype, False)
    x, w = torch.randn(100, 37, dtype=dtype).t(), torch.randn(50, 100, dtype=dtype)
    torch.testing.assert_close(emu.linear(x, w, None), linear_reference(x, w, None, False, False).to(dtype),
                               **LINEAR_TOL[dtype])


def test_gemm_split_k_is_deterministic_and_matches_one_split(emu, monkeypatch):
    # The split sums are added in split order: the same bits on every call; and within the rounding
    # of a different order of the one-split result.
    x, w = torch.randn(24, 1000).to(torch.bfloat16), torch.randn(40, 1000).to(torch.bfloat16)
    monkeypatch.setenv("TORCHEXT_GEMM_SPLITS", "5")
    first, second = emu.linear(x, w, None), emu.linear(x, w, None)
    monkeypatch.setenv("TORCHEXT_GEMM_SPLITS", "1")
    single = emu.linear(x, w, None)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, single, atol=8e-3, rtol=8e-3)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", FLOATS)
def test_linear_batched(emu, dtype, relu):
    B, M, N, K = 3, 5, 70, 19
    x = torch.randn(B, M, K, dtype=torch.float64).to(dtype)
    w = torch.randn(B, N, K, dtype=torch.float64).to(dtype)
    b = torch.randn(B, N, dtype=torch.float64).to(dtype)
    out = emu.linear_batched(x, w, b, relu)
    expected = torch.stack([linear_reference(x[e], w[e], b[e], relu, False) for e in range(B)]).to(dtype)
    torch.testing.assert_close(out, expected, **LINEAR_TOL[dtype])


# Column sums: one chunk of rows, two, three, and a single column over 100003 rows (390 row
# chunks); with several chunks a second kernel adds the partial sums.
GRAD_SHAPES = [(5, 33), (600, 5), (1000, 70), (100_003, 1), (0, 4), (4, 0), (257, 1)]


@pytest.mark.parametrize("shape", GRAD_SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_linear_grad_helpers(emu, dtype, shape):
    g = layout(torch.randn(shape, dtype=torch.float64).to(dtype), "offset")
    result = torch.relu(torch.randn(shape, dtype=torch.float64)).to(dtype)
    # Sums in the math type (float for half types) over up to 1e5 values, then one rounding.
    tol = {torch.float64: dict(atol=1e-10, rtol=1e-12), torch.float32: dict(atol=2e-3, rtol=1e-5),
           torch.float16: dict(atol=1e-2, rtol=2e-3), torch.bfloat16: dict(atol=5e-2, rtol=1e-2)}[dtype]
    torch.testing.assert_close(emu.linear_bias_grad(g), g.double().sum(0).to(dtype), **tol)
    masked, sums = emu.linear_relu_grad(g, result)
    expected_masked = torch.where(result > 0, g, torch.zeros((), dtype=dtype))
    assert_same(masked, expected_masked)
    torch.testing.assert_close(sums, expected_masked.double().sum(0).to(dtype), **tol)


def test_column_sums_do_not_depend_on_alignment(emu):
    g = torch.randn(100_003, 3)
    assert torch.equal(emu.linear_bias_grad(g), emu.linear_bias_grad(layout(g, "offset")))


# ----------------------------------------------------------------------------------- Optimizers

# A list with an empty tensor, odd sizes and one tensor of three engine chunks (2^16 elements each).
OPT_SHAPES = [(7, 13), (0, 5), (1,), (33,), (2 * 65536 + 5,), (4, 3, 5)]
HALF = (torch.float16, torch.bfloat16)


def opt_lists(dtype, how, shapes=OPT_SHAPES, master=False):
    """(params, grads, buffer factory, masters) with fresh values; 'offset' puts every tensor one
    element into its storage, so the engine must take its scalar loop."""
    params = [layout(torch.randn(s, dtype=torch.float64).to(dtype), how) for s in shapes]
    grads = [layout(torch.randn(s, dtype=torch.float64).to(dtype), how) for s in shapes]
    masters = [p.float() for p in params] if master else []
    buf_dtype = torch.float32 if master else dtype

    def buffers(positive=False):
        made = [torch.randn(s, dtype=torch.float64).to(buf_dtype) for s in shapes]
        return [layout(b.abs() if positive else b, how) for b in made]
    return params, grads, buffers, masters


def clone_all(lists):
    return [[t.clone() if t.is_contiguous() and t.storage_offset() == 0 else layout(t.clone(), "offset")
             for t in ts] for ts in lists]


def assert_step_close(emulated, cpu, dtype):
    tol = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=1e-6, rtol=1e-5),
           torch.float16: dict(atol=1e-3, rtol=1e-3), torch.bfloat16: dict(atol=8e-3, rtol=8e-3)}
    for a_list, b_list in zip(emulated, cpu):
        for a, b in zip(a_list, b_list):
            torch.testing.assert_close(a, b, equal_nan=True, **(tol[dtype] if a.dtype == dtype else tol[a.dtype]))


SGD_CASES = {  # momentum, dampening, weight_decay, nesterov, maximize
    "plain": (0.0, 0.0, 0.0, False, False),
    "momentum_nesterov_wd": (0.9, 0.0, 1e-2, True, False),
    "dampening_maximize": (0.8, 0.3, 0.0, False, True),
}


def step_extras(extras, lr, lr_dtype, scale):
    """(lr_tensor, grad_scale, found_inf) for a step test's `extras`: an lr tensor (read on the host,
    or through a pointer as a device one), or a grad scale with found_inf = 0."""
    lr_tensor = torch.tensor(lr, dtype=lr_dtype) if extras in ("lr_tensor", "device_lr") else None
    if extras != "grad_scale":
        return lr_tensor, None, None
    return lr_tensor, torch.tensor([scale]), torch.tensor([0.0])


@pytest.fixture
def device_lr(emu, request):
    """For extras == 'device_lr': the op treats its (CPU) lr tensor as a device one, so the kernel
    reads lr through a pointer, as in capturable steps."""
    on = request.node.callspec.params.get("extras") == "device_lr"
    emu.emu_set_lr_as_device(on)
    yield
    emu.emu_set_lr_as_device(False)


@pytest.mark.usefixtures("device_lr")
@pytest.mark.parametrize("extras", ["none", "lr_tensor", "device_lr", "grad_scale"])
@pytest.mark.parametrize("case", SGD_CASES)
@pytest.mark.parametrize("how", ["contiguous", "offset"])
@pytest.mark.parametrize("dtype", FLOATS + ["float16_master"])
def test_sgd_step(emu, dtype, how, case, extras):
    master = dtype == "float16_master"
    dtype = torch.float16 if master else dtype
    momentum, dampening, wd, nesterov, maximize = SGD_CASES[case]
    params, grads, buffers, masters = opt_lists(dtype, how, master=master)
    bufs = buffers() if momentum else []
    counts = [torch.tensor([float(i % 2)]) for i in range(len(params))] if momentum else []
    lr_tensor, grad_scale, found_inf = step_extras(extras, 0.05, torch.float64, 4.0)
    state = [params, bufs, counts, masters]
    cpu_state = clone_all(state)
    for _ in range(3):
        emu.sgd_step_(state[0], grads, state[1], state[2], state[3], 0.1, momentum, dampening, wd, nesterov,
                      maximize, lr_tensor, grad_scale, found_inf)
        torch.ops.torchext.sgd_step_(cpu_state[0], grads, cpu_state[1], cpu_state[2], cpu_state[3], 0.1, momentum,
                                     dampening, wd, nesterov, maximize, lr_tensor, grad_scale, found_inf)
    assert_step_close(state, cpu_state, dtype)
    if momentum:
        assert [c.item() for c in state[2]] == [i % 2 + 3.0 for i in range(len(params))]


ADAM_CASES = {  # weight_decay, amsgrad, maximize, decoupled
    "plain": (0.0, False, False, False),
    "l2_amsgrad": (1e-2, True, False, False),
    "adamw_maximize": (1e-2, False, True, True),
    "adamw_amsgrad": (0.1, True, False, True),
}


@pytest.mark.usefixtures("device_lr")
@pytest.mark.parametrize("extras", ["none", "lr_tensor", "device_lr", "grad_scale"])
@pytest.mark.parametrize("case", ADAM_CASES)
@pytest.mark.parametrize("how", ["contiguous", "offset"])
@pytest.mark.parametrize("dtype", FLOATS + ["bfloat16_master"])
def test_adam_step(emu, dtype, how, case, extras):
    master = dtype == "bfloat16_master"
    dtype = torch.bfloat16 if master else dtype
    wd, amsgrad, maximize, decoupled = ADAM_CASES[case]
    params, grads, buffers, masters = opt_lists(dtype, how, master=master)
    steps = [torch.tensor([float(i)]) for i in range(len(params))]
    lr_tensor, grad_scale, found_inf = step_extras(extras, 1e-2, torch.float32, 0.5)
    state = [params, buffers(), buffers(positive=True), buffers(positive=True) if amsgrad else [], steps, masters]
    cpu_state = clone_all(state)
    for _ in range(3):
        emu.adam_step_(state[0], grads, *state[1:], 1e-2, 0.9, 0.999, 1e-8, wd, amsgrad, maximize, decoupled,
                       lr_tensor, grad_scale, found_inf)
        torch.ops.torchext.adam_step_(cpu_state[0], grads, *cpu_state[1:], 1e-2, 0.9, 0.999, 1e-8, wd, amsgrad,
                                      maximize, decoupled, lr_tensor, grad_scale, found_inf)
    assert_step_close(state, cpu_state, dtype)
    assert [s.item() for s in state[4]] == [i + 3.0 for i in range(len(params))]


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_params_with_gaps(emu, name):
    # Views with gaps are stepped through dense copies: the CUDA ops agree with the CPU ops, and
    # only the views' elements of the bases change.
    bases = [torch.randn(10, 5, 2), torch.randn(10, 70000), torch.randn(33)]
    params = [bases[0][..., 0], bases[1][:, :65541], bases[2], torch.randn(6, 4).t()]
    grads = [torch.randn(p.shape) for p in params]
    bufs = [torch.randn(p.shape) for p in params]  # contiguous, as zeros_like makes them for views
    bufs[3] = torch.randn(6, 4).t()  # a dense param's state has its strides
    sq = [b.abs() for b in bufs]
    counts = [torch.tensor([float(i % 2)]) for i in range(len(params))]
    cpu_bases = [b.clone() for b in bases]
    cpu_params = [cpu_bases[0][..., 0], cpu_bases[1][:, :65541], cpu_bases[2], params[3].clone()]
    cpu_bufs, cpu_sq, cpu_counts = ([t.clone() for t in ts] for ts in (bufs, sq, counts))  # strides kept
    for _ in range(2):
        if name == "sgd":
            emu.sgd_step_(params, grads, bufs, counts, [], 0.1, 0.9, 0.0, 1e-2, True, False, None, None, None)
            torch.ops.torchext.sgd_step_(cpu_params, grads, cpu_bufs, cpu_counts, [], 0.1, 0.9, 0.0, 1e-2, True,
                                         False, None, None, None)
        else:
            emu.adam_step_(params, grads, bufs, sq, [], counts, [], 1e-2, 0.9, 0.999, 1e-8, 1e-2, False, False, True,
                           None, None, None)
            torch.ops.torchext.adam_step_(cpu_params, grads, cpu_bufs, cpu_sq, [], cpu_counts, [], 1e-2, 0.9, 0.999,
                                          1e-8, 1e-2, False, False, True, None, None, None)
    assert_step_close([bases, params, bufs], [cpu_bases, cpu_params, cpu_bufs], torch.float32)
    assert torch.equal(bases[0][..., 1], cpu_bases[0][..., 1]) and torch.equal(bases[1][:, 65541:], cpu_bases[1][:, 65541:])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_found_inf_changes_nothing(emu, name):
    params, grads, buffers, _ = opt_lists(torch.float32, "contiguous")
    counts = [torch.tensor([1.0]) for _ in params]
    state = [params, buffers(), buffers(positive=True), counts]
    before = clone_all(state)
    found_inf, grad_scale = torch.tensor([1.0]), torch.tensor([2.0])
    if name == "sgd":
        emu.sgd_step_(state[0], grads, state[1], state[3], [], 0.1, 0.9, 0.0, 0.0, False, False, None, grad_scale,
                      found_inf)
    else:
        emu.adam_step_(state[0], grads, state[1], state[2], [], state[3], [], 0.1, 0.9, 0.999, 1e-8, 0.0, False,
                       False, False, None, grad_scale, found_inf)
    for a_list, b_list in zip(state, before):
        for a, b in zip(a_list, b_list):
            assert torch.equal(a, b)


@pytest.mark.parametrize("capturing", [False, True])
def test_many_tensors_metadata(emu, capturing):
    # 150 tensors: the metadata table is over 10 KB, so under capture it is written by three kernels
    # whose arguments carry up to 3968 bytes each; outside capture it is one copy.
    shapes = [(int(s),) for s in torch.randint(0, 300, (150,))]
    params, grads, buffers, _ = opt_lists(torch.float32, "contiguous", shapes=shapes)
    steps = [torch.zeros(1) for _ in params]
    state = [params, buffers(), buffers(positive=True), [], steps, []]
    cpu_state = clone_all(state)
    torch.ops.torchext_emu.emu_set_capturing(capturing)
    try:
        emu.adam_step_(state[0], grads, *state[1:], 1e-2, 0.9, 0.999, 1e-8, 0.0, False, False, False, None, None,
                       None)
    finally:
        torch.ops.torchext_emu.emu_set_capturing(False)
    torch.ops.torchext.adam_step_(cpu_state[0], grads, *cpu_state[1:], 1e-2, 0.9, 0.999, 1e-8, 0.0, False, False,
                                  False, None, None, None)
    assert_step_close(state, cpu_state, torch.float32)


# ---------------------------------------------------------------------------- the emulation itself

@pytest.mark.parametrize("which, message", [
    (0, "deadlock"),  # __syncthreads() reached by half the block
    (1, "deadlock"),  # a full-mask shuffle reached by half a warp
    (2, "not 256-bit aligned"),  # wmma load from a misaligned pointer
    (3, "more than 1024 threads"),
    (4, "grid dimension"),  # gridDim.y over 65535
    (5, "__trap"),
    (6, "missing barrier"),  # a shared value read by another thread with no barrier after the write
])
def test_emulation_reports_broken_kernels(emu, which, message):
    # The checks the kernel tests rely on: a kernel breaking one of these rules must not pass. Last
    # in the file: under ASan, a thread abandoned mid-kernel makes later reports less reliable.
    with pytest.raises(RuntimeError, match=message):
        emu.emu_broken_kernel(which)
    emu.relu(torch.randn(100))  # and the emulation is usable afterwards


@pytest.mark.parametrize("reverse", [False, True])
def test_emulation_thread_orders(emu, reverse):
    # Both orders of running a block's threads (CI runs the suite in one, the ASan run in the other)
    # give the kernels' results and catch the missing barrier.
    previous = emu.emu_reverse_order()
    emu.emu_set_reverse_order(reverse)
    try:
        with pytest.raises(RuntimeError, match="missing barrier"):
            emu.emu_broken_kernel(6)
        x, t = torch.randn(3000, dtype=torch.float64), torch.randn(3000, dtype=torch.float64)
        torch.testing.assert_close(emu.mse_loss(x, t, 2), ((x - t) ** 2).sum())
        w = torch.randn(70, 3000, dtype=torch.float64)
        torch.testing.assert_close(emu.linear_relu(x.view(1, -1), w, None), torch.relu(x.view(1, -1) @ w.T))
    finally:
        emu.emu_set_reverse_order(previous)
