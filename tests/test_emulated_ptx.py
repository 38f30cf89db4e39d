"""The CPU models of csrc/cuda/ptx.cuh's PTX instructions (tests/cuda_emu/include/emu_ptx.h),
checked against scalar references written here from the PTX ISA's own layout text, not from the
models. The test kernels (tests/cuda_emu/emu_ptx_tests.cpp) call the instructions through ptx.cuh,
as the GEMM kernels do, with operands built by the ISA's fragment formulas. PTX ISA sections:

- "Warp-level matrix load instruction: ldmatrix" (9.7.14.5.15): threads 8j..8j+7 give the row
  addresses of matrix j; in each register, a group of four threads holds one row, thread l holding
  row l/4, columns 2(l%4) and 2(l%4)+1 (the lower column in the low half); .trans loads the matrix
  column-major.
- "Matrix Fragments for mma.m16n8k16 with floating point type" (9.7.14.5.8), "Matrix Fragments for
  mma.m16n8k8" (9.7.14.5.7, .tf32) and "Multiply-and-Accumulate Instruction: mma" (9.7.14.5.14).
- "cvt" (9.7.9.21): .rna, round to nearest with ties away from zero; "Alternate Floating-Point
  Data Formats" (5.2.3) for tf32.
- "cp.async" (9.7.9.25.3.1), "cp.async.commit_group" (9.7.9.25.3.2), "cp.async.wait_group"
  (9.7.9.25.3.3) and "Async-group mechanism" (9.7.9.25.1.1).
- Dynamic shared memory: the CUDA runtime's rules (48 KiB without
  cudaFuncAttributeMaxDynamicSharedMemorySize, the emulated sm_90 device's opt-in maximum of 232448
  bytes).
"""
import math
import struct

import pytest
import torch


def u16(t):
    """The 16-bit patterns of a bf16/f16 tensor, as Python ints."""
    return [v & 0xffff for v in t.view(torch.int16).flatten().tolist()]


# -------------------------------------------------------------------------------------- ldmatrix
# PTX ISA "ldmatrix": threads 8j..8j+7 give rows 0-7 of matrix j; thread l receives, in register j,
# row l/4, columns 2(l%4) (low 16 bits) and 2(l%4)+1 (high 16 bits); with .trans the matrix is
# read column-major: column l/4, rows 2(l%4) (low) and 2(l%4)+1 (high).

def ldmatrix_reference(data, offsets, num, trans):
    words = u16(data)
    out = torch.zeros(32, num, dtype=torch.int64)
    for lane in range(32):
        for j in range(num):
            rows = offsets[8 * j:8 * j + 8]  # element offset of each row of matrix j

            def element(r, c):
                return words[rows[r] + c]
            if trans:
                lo, hi = element(2 * (lane % 4), lane // 4), element(2 * (lane % 4) + 1, lane // 4)
            else:
                lo, hi = element(lane // 4, 2 * (lane % 4)), element(lane // 4, 2 * (lane % 4) + 1)
            out[lane, j] = lo | (hi << 16)
    return out


def scattered_rows(num):
    """32 row offsets (in 16-bit elements) at distinct, shuffled 16-byte slots of the 4 KiB array, not
    one contiguous block; the lanes whose addresses the ISA says are unused get misaligned ones."""
    slots = torch.randperm(256)[:32]
    offsets = (slots * 8).tolist()
    for lane in range(8 * num, 32):
        offsets[lane] += 3 if offsets[lane] < 2040 else -3  # 6 bytes off: a model that checked it would fail
    return offsets


@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
@pytest.mark.parametrize("num", [1, 2, 4])
def test_ldmatrix(emu, num, trans):
    data = torch.randint(-2**15, 2**15, (2048,), dtype=torch.int16)
    offsets = scattered_rows(num)
    out = emu.emu_ptx_ldmatrix(data, torch.tensor(offsets, dtype=torch.int32), num, trans)
    assert torch.equal(out, ldmatrix_reference(data, offsets, num, trans))


def test_ldmatrix_transposed_is_the_transpose(emu):
    # A square 8x8 matrix stored at rows R and its transpose stored at rows R': .trans of one gives
    # the plain load of the other (the ISA's "loaded in column-major format").
    m = torch.randint(-2**15, 2**15, (8, 8), dtype=torch.int16)
    data = torch.zeros(2048, dtype=torch.int16)
    data[0:64] = m.flatten()
    data[512:576] = m.t().contiguous().flatten()
    plain = [8 * r for r in range(8)] + [512 + 8 * r for r in range(8)] * 3
    trans = [512 + 8 * r for r in range(8)] + [8 * r for r in range(8)] * 3
    a = emu.emu_ptx_ldmatrix(data, torch.tensor(plain, dtype=torch.int32), 1, False)
    b = emu.emu_ptx_ldmatrix(data, torch.tensor(trans, dtype=torch.int32), 1, True)
    assert torch.equal(a, b)


def test_ldmatrix_rejects_a_misaligned_row(emu):
    offsets = scattered_rows(4)
    offsets[13] += 4  # 8 bytes into a slot
    with pytest.raises(RuntimeError, match="ldmatrix.x4: row address .* of lane 13 is not 16-byte aligned"):
        emu.emu_ptx_ldmatrix(torch.zeros(2048, dtype=torch.int16), torch.tensor(offsets, dtype=torch.int32), 4, False)


# ------------------------------------------------------------------------------------------- mma
# PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type" and "... for mma.m16n8k8"
# (.tf32): the kernel builds the fragments from row-major A and column-major B with the ISA's
# formulas and stores D by them; here D is compared with A @ B + C in float64. The model accumulates
# in f32 (from C, k increasing, each step rounded once), so each element is within
# (K + 1) * 2^-24 * (|C| + sum_k |A||B|) of the exact value: the tolerance used below.

KINDS = {"bf16": (0, torch.bfloat16, 16), "f16": (1, torch.float16, 16), "tf32": (2, torch.float32, 8)}


def tf32_rna_value(x):
    """x (a float) rounded to 10 mantissa bits, to nearest, ties away from zero, by value: the
    quantum is 2^(e - 10) for |x| in [2^e, 2^(e+1)), 2^-136 below f32's smallest normal, 2^-126;
    a result of 2^128 or more overflows to inf. From the cvt section's .rna rule, not from bits."""
    if math.isnan(x) or math.isinf(x) or x == 0:
        return x
    mag = abs(x)
    e = max(math.frexp(mag)[1] - 1, -126)
    q = 2.0 ** (e - 10)
    r = math.floor(mag / q + 0.5) * q  # exact in float64: an 11-bit integer times a power of 2
    if r >= 2.0 ** 128:
        r = math.inf
    return math.copysign(r, x)


def tf32_truncated(t):
    """The model's reading of a raw f32 operand: the low 13 mantissa bits ignored."""
    bits = t.view(torch.int32) & ~0x1fff
    return bits.view(torch.float32)


def mma_operands(kind, warps, k, exact=False):
    _, dtype, _ = KINDS[kind]
    if exact:  # small integers: every product and sum is exact in f32, so D must equal the reference
        a = torch.randint(-4, 5, (warps, 16, k)).to(dtype)
        bt = torch.randint(-4, 5, (warps, 8, k)).to(dtype)
        c = torch.randint(-64, 65, (warps, 16, 8)).float()
    else:
        a = torch.randn(warps, 16, k).to(dtype)
        bt = torch.randn(warps, 8, k).to(dtype)
        c = torch.randn(warps, 16, 8)
    return a, bt, c


def run_mma(emu, kind, a, bt, c, permute=0, raw_tf32=False):
    code = KINDS[kind][0] + (1 if raw_tf32 else 0)
    if kind == "tf32":
        return emu.emu_ptx_mma(a, bt, c, code, permute)
    return emu.emu_ptx_mma(a.view(torch.int16), bt.view(torch.int16), c, code, permute)


def reference(a, bt, c):
    a64, b64 = a.double(), bt.double().transpose(1, 2)
    exact = a64 @ b64 + c.double()
    bound = (a.shape[2] + 1) * 2.0 ** -24 * (a64.abs() @ b64.abs() + c.double().abs())
    return exact, bound


def rna_operand(t):
    return torch.tensor([tf32_rna_value(v) for v in t.flatten().tolist()], dtype=torch.float64).view(t.shape)


def assert_within(d, exact, bound):
    err = (d.double() - exact).abs()
    assert (err <= bound).all(), f"max error {err.max().item()} over the bound {bound[err > bound].min().item()}"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("warps, k", [(1, 16), (3, 64)])
def test_mma(emu, kind, warps, k):
    a, bt, c = mma_operands(kind, warps, k)
    d = run_mma(emu, kind, a, bt, c)
    if kind == "tf32":  # the kernel rounds A and B with cvt_tf32 first
        exact, bound = reference(rna_operand(a), rna_operand(bt), c)
    else:
        exact, bound = reference(a, bt, c)
    assert_within(d, exact, bound)


@pytest.mark.parametrize("kind", list(KINDS))
def test_mma_exact_on_integers(emu, kind):
    a, bt, c = mma_operands(kind, 2, 32, exact=True)
    exact, _ = reference(a, bt, c)
    assert torch.equal(run_mma(emu, kind, a, bt, c).double(), exact)


@pytest.mark.parametrize("kind", ["bf16", "f16"])
def test_mma_subnormal_inputs(emu, kind):
    # Subnormal f16 (and tiny bf16) operands are used as they are (the ISA leaves subnormal handling
    # unspecified; the model keeps them), and the products stay exact in f32.
    a, bt, c = mma_operands(kind, 1, 16, exact=True)
    a = (a.float() * 2.0 ** -20).to(a.dtype)  # |a| <= 4 * 2^-20 < 2^-14: f16 subnormals
    exact, _ = reference(a, bt, c * 2.0 ** -20)
    assert torch.equal(run_mma(emu, kind, a, bt, c * 2.0 ** -20).double(), exact)


@pytest.mark.parametrize("permute", [1, 2, 3], ids=["a_regs_swapped", "b_regs_swapped", "d_swapped"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_mma_misplaced_fragment_fails(emu, kind, permute):
    # The same check, with one fragment placed wrongly by the kernel, must fail: the comparison above
    # is sharp enough to catch a misread layout.
    a, bt, c = mma_operands(kind, 1, 16)
    d = run_mma(emu, kind, a, bt, c, permute)
    if kind == "tf32":
        a, bt = rna_operand(a), rna_operand(bt)
    exact, bound = reference(a, bt, c)
    assert ((d.double() - exact).abs() > bound).any()


def test_mma_tf32_ignores_the_low_mantissa_bits(emu):
    # Raw f32 operands (no cvt): the model uses the upper 10 mantissa bits only (the ISA leaves tf32's
    # layout to the implementation; see emu_ptx.h), which differs from cvt.rna-rounded operands.
    a, bt, c = mma_operands("tf32", 1, 16)
    raw = run_mma(emu, "tf32", a, bt, c, raw_tf32=True)
    exact, bound = reference(tf32_truncated(a), tf32_truncated(bt), c)
    assert_within(raw, exact, bound)
    assert not torch.equal(raw, run_mma(emu, "tf32", a, bt, c))


@pytest.mark.parametrize("kind", list(KINDS))
def test_mma_nan_and_inf(emu, kind):
    a, bt, c = mma_operands(kind, 1, 16 if kind != "tf32" else 8)
    a[0, 3, 5] = float("nan")
    a[0, 10, 2] = float("inf")
    bt[0, 6, 2] = 0.0  # inf * 0 in D[10, 6]
    if kind == "tf32":  # a NaN whose payload is all in the low 13 bits stays NaN (not inf)
        a.view(torch.int32)[0, 12, 1] = 0x7f800001
    for raw in ([False, True] if kind == "tf32" else [False]):
        d = run_mma(emu, kind, a, bt, c, raw_tf32=raw).double()
        if kind == "tf32":
            read = tf32_truncated if raw else rna_operand
            a_ref, b_ref = read(a).double(), read(bt).double()
            a_ref[0, 12, 1] = float("nan")
        else:
            a_ref, b_ref = a, bt
        exact, _ = reference(a_ref, b_ref, c)
        assert torch.equal(d.isnan(), exact.isnan()) and exact[0, 3].isnan().all() and exact[0, 10, 6].isnan()
        assert torch.equal(d.isinf(), exact.isinf()) and torch.equal(d[d.isinf()], exact[exact.isinf()])
        finite = exact.isfinite()
        torch.testing.assert_close(d[finite], exact[finite], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bf16", "f16"])
def test_ldmatrix_feeds_mma(emu, kind):
    # As a GEMM uses them: ldmatrix.x4 of a row-major A tile is the m16n8k16 A fragment; ldmatrix.x2
    # of B stored [n][k], and ldmatrix.x2.trans of B stored [k][n], are both the B fragment.
    dtype = KINDS[kind][1]
    a = torch.randn(16, 16).to(dtype)
    b = torch.randn(16, 8).to(dtype)
    out = emu.emu_ptx_ldmatrix_mma(a.view(torch.int16), b.view(torch.int16), KINDS[kind][0])
    exact, bound = reference(a[None], b.t()[None], torch.zeros(1, 16, 8))
    assert_within(out[0:1], exact, bound)
    assert torch.equal(out[0], out[1])


# ------------------------------------------------------------------------------------------- cvt
# PTX ISA "cvt", .rna.tf32.f32: round to nearest, ties away from zero, at tf32's 10 mantissa bits.

def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def expected_tf32_bits(bits):
    x = struct.unpack("<f", struct.pack("<I", bits))[0]
    r = tf32_rna_value(x)
    return f32_bits(r)  # inf packs to 0x7f800000 (or 0xff800000)


def cvt_cases():
    cases = [
        0x00000000, 0x80000000,  # +-0
        0x3f800000, 0x3f801000, 0x3f803000, 0x3f800fff, 0x3f801001,  # 1, ties up (away), below, above
        0xbf801000, 0xbf803000, 0xbf800fff, 0xbf801001,  # the same, negative (ties away = down)
        0x3f9ff000, 0x3fffffff, 0xbfffffff,  # a tie carrying into the exponent, 2 - ulp -> 2
        0x00000001, 0x00001000, 0x00000fff, 0x00003000, 0x807ff000, 0x007fffff, 0x807fffff,  # subnormals
        0x00800000, 0x00801000,  # the smallest normal, a tie just above it
        0x7f7fffff, 0xff7fffff,  # max float: rounds past tf32's largest, to inf
        0x7f7fe000, 0x7f7fefff, 0x7f7ff000,  # tf32's largest; just below the midpoint; the midpoint (inf)
        0x7f800000, 0xff800000,  # +-inf
    ]
    rand = torch.randint(0, 2**32, (20000,), dtype=torch.int64).tolist()
    low = [(b & ~0x1fff) | 0x1000 for b in rand[:2000]]  # random ties
    return cases + rand + low


def test_cvt_tf32(emu):
    bits = cvt_cases()
    x = torch.tensor([b - 2**32 if b >= 2**31 else b for b in bits], dtype=torch.int64).to(torch.int32)
    got = [v & 0xffffffff for v in emu.emu_ptx_cvt_tf32(x.view(torch.float32)).tolist()]
    for b, g in zip(bits, got):
        if (b & 0x7f800000) == 0x7f800000 and (b & 0x7fffff):  # NaN: a quiet NaN of the same sign
            assert (g & 0x7f800000) == 0x7f800000 and (g & 0x400000) and (g >> 31) == (b >> 31), hex(b)
            assert (g & 0x1fff) == 0, hex(b)
        else:
            assert g == expected_tf32_bits(b), f"{b:#010x} -> {g:#010x}, expected {expected_tf32_bits(b):#010x}"


def test_cvt_tf32_nan_payloads(emu):
    nans = [0x7f800001, 0x7f801fff, 0xff800001, 0x7fc00000, 0xffffffff, 0x7fbfffff]
    x = torch.tensor([b - 2**32 if b >= 2**31 else b for b in nans], dtype=torch.int64).to(torch.int32)
    assert emu.emu_ptx_cvt_tf32(x.view(torch.float32)).view(torch.float32).isnan().all()


# -------------------------------------------------------------------------------------- cp.async
# PTX ISA "cp.async", "cp.async.commit_group", "cp.async.wait_group", "Async-group mechanism": a
# copy is only initiated; it completes, and its writes become visible to its thread, when a
# wait_group of that thread covers its group (at most N of the most recent groups left pending).
# The model defers every copy to that point and fills the destination with NaN bytes at issue.

PIPELINE_BROKEN = {
    1: "wait<S-1>, one group short",
    2: "stage read before its wait",
    3: "barrier without a wait",
    4: "wait without the barrier after it",
    5: "copies never committed",
    6: "next tile issued before the barrier",
}


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_cp_async_pipeline(emu, stages, thread_order):
    src = torch.randn(2, 9, 256)
    assert torch.equal(emu.emu_ptx_cp_async_pipeline(src, stages, 0), src)


@pytest.mark.parametrize("mode", list(PIPELINE_BROKEN), ids=list(PIPELINE_BROKEN.values()))
@pytest.mark.parametrize("stages", [2, 3])
def test_cp_async_pipeline_mistakes_show(emu, stages, mode, thread_order):
    # The emulation completes no copy early (and poisons its destination at issue), so each of these
    # reads a stage whose copy has not completed, or has been reissued, and sees NaN.
    src = torch.randn(2, 9, 256)
    out = emu.emu_ptx_cp_async_pipeline(src, stages, mode)
    assert out.isnan().any()


def test_cp_async_groups(emu, thread_order):
    src = torch.randn(32, 20)
    out = emu.emu_ptx_cp_async_groups(src)  # [thread, snapshot, 5 chunks x 4 floats]
    nan = float("nan")
    for t in range(32):
        chunk = [src[t, 4 * i:4 * i + 4] for i in range(5)]
        poison = torch.full((4,), nan)
        zeros = torch.zeros(4)
        expected = [
            [chunk[0], poison, poison, poison, poison],  # wait<2>: only G1 (G2 and the empty G3 pending)
            [chunk[0], chunk[1], poison, poison, poison],  # wait<1>: G2 too
            [chunk[0], chunk[1], poison, poison, poison],  # wait<0>: c2 is not committed, still pending
            [chunk[0], chunk[1], chunk[2], poison, poison],  # committed, wait<0>
            [chunk[0], chunk[1], chunk[2], poison, poison],  # after __syncthreads: still pending
            [chunk[0], chunk[1], chunk[2], zeros, chunk[4]],  # wait<0>: zero fill (pred false) and c4
        ]
        for s, row in enumerate(expected):
            torch.testing.assert_close(out[t, s], torch.cat(row), atol=0, rtol=0, equal_nan=True,
                                       msg=lambda m, s=s, t=t: f"thread {t}, snapshot {s}: {m}")


def test_cp_async_partial_source_size_zero_fills_the_rest(emu):
    # PTX ISA "cp.async": with src-size below cp-size, src-size bytes are copied and the remaining
    # cp-size - src-size bytes of the destination are zero-filled.
    src = torch.randint(1, 256, (17 * 16,), dtype=torch.uint8)
    out = emu.emu_ptx_cp_async_partial(src).view(17, 16)
    for n in range(17):
        assert out[n, :n].tolist() == src.view(17, 16)[n, :n].tolist()
        assert out[n, n:].tolist() == [0] * (16 - n)


@pytest.mark.parametrize("commit", [True, False], ids=["committed", "uncommitted"])
def test_cp_async_completes_at_thread_exit(emu, commit):
    src = torch.randn(128)
    before, after = emu.emu_ptx_cp_async_exit(src, int(commit))
    assert before.isnan().all()  # read right after the issue: not complete
    assert torch.equal(after, src)  # the threads exited without a wait: completed then


@pytest.mark.parametrize("which, message", [
    (4, r"cp.async: shared destination 0x[0-9a-f]+ is not 16-byte aligned"),
    (5, r"cp.async: global source 0x[0-9a-f]+ is not 16-byte aligned"),
])
def test_cp_async_rejects_misaligned_addresses(emu, which, message):
    with pytest.raises(RuntimeError, match=message):
        emu.emu_ptx_broken(which)
    emu.relu(torch.randn(100))  # and the emulation is usable afterwards


# --------------------------------------------------------------------- warp-collective misuse

@pytest.mark.parametrize("which, message", [
    (0, "deadlock"),  # ldmatrix.x4 reached by half the warp
    (1, "mma.m16n8k16.bf16 in a partial warp"),  # a block of 48 threads
    (2, r"different warp-collective operations \(ldmatrix"),  # .x4 in half the warp, .x2 in the other
    (3, r"different warp-collective operations \(mma.m16n8k16.f16, __shfl_down_sync\)"),
    (6, "ldmatrix.x2.trans: row address .* of lane 9 is not 16-byte aligned"),
])
def test_warp_collectives_report_misuse(emu, which, message):
    with pytest.raises(RuntimeError, match=message):
        emu.emu_ptx_broken(which)
    emu.relu(torch.randn(100))


# ------------------------------------------------------------------------- dynamic shared memory

def test_dynamic_smem_poisoned_at_every_block(emu):
    out = emu.emu_ptx_dynamic_smem(4096, -1, 3)  # each block zeroes the buffer after its check
    assert (out[:, :32].sum(1) == 0).all()  # every byte 0xff at each block's start
    assert (out[:, 32] == 0).all()  # 128-byte aligned


def test_dynamic_smem_up_to_48k_needs_no_attribute(emu):
    out = emu.emu_ptx_dynamic_smem(49152, -1, 1)
    assert out[0, :32].sum() == 0 and out[0, 33] == 0


def test_dynamic_smem_over_48k_needs_the_attribute(emu):
    with pytest.raises(RuntimeError, match="cudaFuncAttributeMaxDynamicSharedMemorySize"):
        emu.emu_ptx_dynamic_smem(49153, -1, 1)
    out = emu.emu_ptx_dynamic_smem(65536, 65536, 2)
    assert (out[:, :32].sum(1) == 0).all() and (out[:, 33] == 1).all()
    with pytest.raises(RuntimeError, match=r"over the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize \(65536"):
        emu.emu_ptx_dynamic_smem(65537, 65536, 1)
    out = emu.emu_ptx_dynamic_smem(166912, 166912, 1)  # sm_80's maximum
    assert out[0, :32].sum() == 0
    out = emu.emu_ptx_dynamic_smem(232448, 232448, 1)  # sm_90's
    assert out[0, :32].sum() == 0


def test_dynamic_smem_over_the_opt_in_maximum(emu):
    assert emu.emu_ptx_set_max_dynamic_smem(232448) == 0  # cudaSuccess
    assert emu.emu_ptx_set_max_dynamic_smem(232449) != 0  # cudaErrorInvalidValue
    with pytest.raises(RuntimeError, match="over 232448 bytes, sm_90's opt-in maximum"):
        emu.emu_ptx_dynamic_smem(232449, -1, 1)
    with pytest.raises(RuntimeError, match="cudaFuncSetAttribute"):
        emu.emu_ptx_dynamic_smem(232449, 232449, 1)


def test_occupancy(emu):
    assert emu.emu_ptx_occupancy(256, 0) == 8  # 2048 threads per SM
    assert emu.emu_ptx_occupancy(1024, 0) == 2
    assert emu.emu_ptx_occupancy(32, 0) == 32  # at most 32 blocks
    assert emu.emu_ptx_occupancy(128, 100 * 1024) == 2  # 228 KiB per SM, 1 KiB reserved per block
    assert emu.emu_ptx_occupancy(32, 232448) == 1
    assert emu.emu_ptx_occupancy(32, 232449) == 0
    assert emu.emu_ptx_occupancy(0, 0) == -1  # cudaErrorInvalidValue
