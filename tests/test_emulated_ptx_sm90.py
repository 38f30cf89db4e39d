"""The CPU models of csrc/cuda/ptx_sm90.cuh's Hopper (sm_90a) instructions
(tests/cuda_emu/include/emu_ptx_sm90.h) and of tma.h's tensor maps (include/emu_tma.h), checked
against scalar references written here from the PTX ISA's own text, not from the models. The test
kernels (tests/cuda_emu/emu_ptx_sm90_tests.cpp) call the instructions through ptx_sm90.cuh as a
kernel does and hand back raw shared memory, barrier observations and raw accumulator registers;
every layout is applied here. PTX ISA sections (ISA 8.x/9.0 numbering):

- "mbarrier" (9.7.13.15): "Contents of the mbarrier object" (phase, pending arrival count,
  tx-count), "Phase Completion of the mbarrier object" (pending arrivals zero and tx-count zero),
  "mbarrier.expect_tx", "mbarrier.complete_tx", "mbarrier.arrive" and "mbarrier.test_wait /
  mbarrier.try_wait" (.parity: whether the phase of that parity, the current or the immediately
  preceding one, has completed).
- "cp.async.bulk.tensor" (9.7.9.25.5.1) with "Tensor Access Modes: Tiled mode", "Bounding box"
  (out-of-bounds elements filled with zero) and the tensor-map swizzle modes ("Tensor copy
  swizzling modes": with the 128-byte swizzle, the 16-byte chunk index within each 128-byte row of
  shared memory is XOR'ed with the row index modulo 8, rows counted from a 1024-byte boundary);
  the CUDA driver API's cuTensorMapEncodeTiled for the map's requirements.
- "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions" (9.7.15): "Register
  Fragments", "Matrix Fragments for wgmma.mma_async.m64nNk16" (accumulator D, Figure "WGMMA
  .m64nNk16 register fragment layout for accumulator matrix D"); "Shared Memory Matrix Layout",
  "Leading Dimension Byte Offset", "Stride Dimension Byte Offset" and "Canonical Layouts" (the
  CuTe-style table for K-major and MN-major operands, no swizzle and 32/64/128-byte swizzles);
  "Matrix Descriptor Format"; "wgmma.fence", "wgmma.commit_group", "wgmma.wait_group" and
  "wgmma.mma_async" (the asynchronous proxy: operands read and accumulators written only by the
  time the wait covers the group).
- "setmaxnreg": checked at compile time only (R a multiple of 8 in 24..256).
"""

import pytest
import torch


# ------------------------------------------------------------------------------------ TMA boxes
# cp.async.bulk.tensor, tiled mode: box row r holds tensor row c1 + r, elements c0 .. c0 + box_inner
# - 1, rows one after another in shared memory; elements outside the tensor read as zero. With the
# 128-byte swizzle the 16-byte chunks of each 128-byte row are permuted: chunk j of the row that is
# the r-th 128-byte row since a 1024-byte boundary lands in chunk j XOR (r mod 8).

def swizzle_128b(addr):
    """Where the byte at shared address `addr` of an unswizzled layout goes under the 128-byte swizzle."""
    row, within_row = divmod(addr, 128)
    chunk, within_chunk = divmod(within_row, 16)
    return row * 128 + (chunk ^ (row % 8)) * 16 + within_chunk


def tma_reference(src, box_inner, box_outer, c0, c1, swizzle, dst_offset, size):
    """The shared memory bytes [0, size) after the copy: 0xff (the launch's fill) outside the box."""
    eb = src.element_size()
    raw = src.contiguous().view(torch.uint8).view(src.shape[0], src.shape[1] * eb)
    out = bytearray(b"\xff" * size)
    rows, inner = src.shape
    for r in range(box_outer):
        y = c1 + r
        for i in range(box_inner):
            x = c0 + i
            if 0 <= y < rows and 0 <= x < inner:
                value = bytes(raw[y, x * eb:(x + 1) * eb].tolist())
            else:
                value = bytes(eb)
            addr = dst_offset + (r * box_inner + i) * eb
            if swizzle:
                addr = swizzle_128b(addr)
            out[addr:addr + eb] = value
    return torch.frombuffer(out, dtype=torch.uint8)


def run_box(emu, src, box_inner, box_outer, c0, c1, swizzle, dst_offset, mode=0, base_shift=0, row_bytes=0,
            smem_bytes=None):
    if smem_bytes is None:
        smem_bytes = dst_offset + box_inner * box_outer * src.element_size() + 1024 + 8
    return emu.emu_sm90_tma_box(src, box_inner, box_outer, c0, c1, swizzle, dst_offset, smem_bytes, mode, base_shift,
                                row_bytes), smem_bytes


BOXES = [  # (dtype, tensor rows x inner, box_inner x box_outer, corner (c0, c1), swizzle, dst_offset)
    (torch.int16, (100, 200), (64, 32), (0, 0), True, 1024),
    (torch.int16, (100, 200), (64, 32), (64, 8), True, 2048),
    (torch.int16, (100, 200), (64, 32), (160, 90), True, 1024),  # past both ends: zero fill
    (torch.int16, (100, 200), (64, 16), (-8, -3), True, 0),      # before both starts
    (torch.int16, (100, 200), (64, 64), (136, 40), True, 4096),  # 8 swizzle atoms
    (torch.int32, (50, 72), (32, 24), (48, 40), True, 1024),     # 4-byte elements, 128-byte rows
    (torch.int16, (100, 200), (24, 10), (190, 95), False, 128),  # 48-byte rows, no swizzle
    (torch.int32, (50, 72), (8, 20), (-4, 45), False, 384),
    (torch.int16, (100, 200), (8, 64), (16, 0), False, 1024),    # the core-matrix boxes of the GEMM tests
]


@pytest.mark.parametrize("dtype, shape, box, corner, swizzle, dst_offset", BOXES)
def test_tma_box(emu, thread_order, dtype, shape, box, corner, swizzle, dst_offset):
    src = torch.randint(-2**15, 2**15, shape, dtype=torch.int32).to(dtype)
    out, smem_bytes = run_box(emu, src, *box, *corner, swizzle, dst_offset)
    assert torch.equal(out, tma_reference(src, *box, *corner, swizzle, dst_offset, smem_bytes - 8))


def test_tma_box_of_a_strided_tensor(emu):
    # Rows 256 bytes apart, 100 elements of them in the tensor: the map's row stride is not the row.
    base = torch.randint(-2**15, 2**15, (40, 128), dtype=torch.int32).to(torch.int16)
    src = base[:, :100]
    out, smem_bytes = run_box(emu, src, 64, 16, 64, 30, True, 1024)
    assert torch.equal(out, tma_reference(src, 64, 16, 64, 30, True, 1024, smem_bytes - 8))


def test_tma_swizzle_is_a_permutation_of_16_byte_chunks(emu):
    # The same box with and without the swizzle: every 128-byte row holds the same 8 chunks.
    src = torch.arange(64 * 64, dtype=torch.int32).to(torch.int16).view(64, 64)
    plain, _ = run_box(emu, src, 64, 64, 0, 0, False, 1024)
    swizzled, _ = run_box(emu, src, 64, 64, 0, 0, True, 1024)
    p = plain[1024:1024 + 8192].view(64, 8, 16)
    s = swizzled[1024:1024 + 8192].view(64, 8, 16)
    for r in range(64):
        for j in range(8):
            assert torch.equal(s[r, j ^ (r % 8)], p[r, j])


@pytest.mark.parametrize("kwargs, message", [
    (dict(swizzle=True, dst_offset=512), r"shared destination 0x[0-9a-f]+ is not 1024-byte aligned"),
    (dict(swizzle=False, dst_offset=64), r"shared destination 0x[0-9a-f]+ is not 128-byte aligned"),
    (dict(swizzle=False, dst_offset=0, mode=1), r"mbarrier 0x[0-9a-f]+ .* is not in the block's dynamic shared memory"),
    (dict(swizzle=False, dst_offset=0, mode=2), r"the tensor map at 0x[0-9a-f]+ is not one encode_tma_map wrote"),
    (dict(swizzle=False, dst_offset=0, mode=3), r"the mbarrier at dynamic shared memory offset \d+ used before mbarrier.init"),
    (dict(swizzle=False, dst_offset=0, mode=4), r"destination 0x[0-9a-f]+ .* is not in the block's dynamic shared memory"),
    (dict(swizzle=False, dst_offset=1024, smem_bytes=2048), r"destination .*\(4096 bytes\) is not in the block's dynamic"),
])
def test_tma_misuse_is_reported(emu, thread_order, kwargs, message):
    src = torch.zeros(64, 64, dtype=torch.int16)
    kwargs = dict(kwargs)
    swizzle, dst_offset = kwargs.pop("swizzle"), kwargs.pop("dst_offset")
    # A bad mbarrier is met by whichever thread uses it first: the issuing thread's copy, or (with
    # the threads run last to first, as under tests/cuda_emu/asan.sh) a waiting thread's try_wait.
    where = "(cp.async.bulk.tensor.2d|mbarrier.try_wait.parity)" if "mbarrier" in message else "cp.async.bulk.tensor.2d"
    with pytest.raises(RuntimeError, match=where + ": " + message):
        run_box(emu, src, 64, 32, 0, 0, swizzle, dst_offset, **kwargs)


@pytest.mark.parametrize("args, message", [  # cuTensorMapEncodeTiled's rules
    (dict(base_shift=2), "global address .* is not 16-byte aligned"),
    (dict(row_bytes=136), "row stride 136 bytes is not a multiple of 16"),
    (dict(row_bytes=96), r"row stride 96 bytes is shorter than a row \(128 bytes\)"),
    (dict(box=(300, 8)), "box dimensions 300 x 8 outside 1..256"),
    (dict(box=(8, 0)), "box dimensions 8 x 0 outside 1..256"),
    (dict(box=(12, 8)), "the box's inner extent, 24 bytes, is not a multiple of 16 bytes"),
    (dict(box=(128, 8), swizzle=True), "the box's inner extent, 256 bytes, is over the 128-byte swizzle span"),
])
def test_bad_tensor_maps_are_rejected(emu, args, message):
    src = torch.zeros(64, 64, dtype=torch.int16)
    box = args.get("box", (64, 8))
    with pytest.raises(RuntimeError, match="encode_tma_map: " + message):
        run_box(emu, src, box[0], box[1], 0, 0, args.get("swizzle", False), 0, base_shift=args.get("base_shift", 0),
                row_bytes=args.get("row_bytes", 0), smem_bytes=1 << 16)


def test_tma_swizzle_needs_128_byte_rows_in_the_model(emu):
    src = torch.zeros(64, 64, dtype=torch.int16)
    with pytest.raises(RuntimeError, match="boxes of 64-byte rows with the 128-byte swizzle are not modelled"):
        run_box(emu, src, 32, 8, 0, 0, True, 1024)


# -------------------------------------------------------------------------------- mbarrier
# A reference mbarrier from the ISA's description of its contents: the current phase, the pending
# arrival count (reset to the expected count when a phase completes) and the tx-count; a phase
# completes when both counts are zero; try_wait.parity(p) is true when the phase of parity p is
# the immediately preceding (completed) one, i.e. the current phase has the other parity.

class Mbarrier:
    def __init__(self, count):
        self.expected = self.pending = count
        self.tx = 0
        self.phase = 0

    def _check(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.expected

    def arrive(self, expect_tx=0):
        self.tx += expect_tx
        self.pending -= 1
        self._check()

    def complete_tx(self, n):
        self.tx -= n
        self._check()

    def try_wait(self, parity):
        return self.phase % 2 != parity


def test_mbarrier_phases_parity_and_tx_count(emu):
    ref = Mbarrier(2)
    steps = [lambda: None, ref.arrive, ref.arrive, lambda: ref.arrive(100), ref.arrive,
             lambda: ref.complete_tx(60), lambda: ref.complete_tx(40), lambda: ref.complete_tx(50),
             lambda: ref.arrive(50), ref.arrive]
    expected = []
    for step in steps:  # the kernel's sequence (emu_ptx_sm90_tests.cpp, phases_kernel)
        step()
        expected.append([int(ref.try_wait(0)), int(ref.try_wait(1))])
    assert ref.phase == 3
    assert emu.emu_sm90_mbarrier_phases().tolist() == expected


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_mbarrier_ring_of_slots(emu, thread_order, stages):
    # Producer and 128 consumers through full/empty barriers: 7 tiles, so every slot's barriers go
    # through several phases (both parities) and the producer refills slots the consumers released.
    src = torch.randn(7 * 16, 32)
    assert torch.equal(emu.emu_sm90_mbarrier_ring(src, stages, 0), src)


@pytest.mark.parametrize("mode", [1, 3], ids=["no-wait-on-full", "wrong-parity-on-full"])
def test_mbarrier_ring_mistakes_read_unlanded_data(emu, thread_order, mode):
    # Two tiles through two slots (no refill, so the mistake cannot also desynchronize the ring
    # into a deadlock): the consumers read the slots before the copies land.
    src = torch.randn(2 * 16, 32)
    out = emu.emu_sm90_mbarrier_ring(src, 2, mode)
    assert out.isnan().all()


def test_mbarrier_ring_without_the_empty_wait(emu, thread_order):
    # The producer refills slot 0 while its first copy is still pending: a second arrival on a
    # phase of count 1.
    with pytest.raises(RuntimeError, match="more arrivals than mbarrier.init's count"):
        emu.emu_sm90_mbarrier_ring(torch.randn(7 * 16, 32), 2, 2)


@pytest.mark.parametrize("mode, message", [
    (4, r"deadlock in block \(0,0\): threads wait on mbarrier phases that no thread can complete: "
        r"128 thread\(s\) \(first 32\) wait for the phase of parity 0 of the mbarrier at dynamic shared memory "
        r"offset 0 \(current phase 0, parity 0, 1 of 1 arrivals pending, tx-count 0\); "
        r"1 thread\(s\) \(first 0\) wait for the phase of parity 0 of the mbarrier at dynamic shared memory offset 16 "
        r"\(current phase 0, parity 0, 128 of 128 arrivals pending, tx-count 0\); "
        r"0 thread\(s\) at __syncthreads, 0 at a warp-collective operation, 31 exited"),
    (5, r"deadlock in block .*128 thread\(s\) \(first 32\) wait for the phase of parity 0 of the mbarrier at "
        r"dynamic shared memory offset 0 \([^)]*\); 1 thread\(s\) at __syncthreads, 0 at a warp-collective "
        r"operation, 31 exited"),
])
def test_mbarrier_deadlock_is_reported(emu, thread_order, mode, message):
    with pytest.raises(RuntimeError, match=message):
        emu.emu_sm90_mbarrier_ring(torch.randn(4 * 16, 32), 2, mode)


# ------------------------------------------------------------------------------------- wgmma
# Accumulator D of .m64nNk16 (ISA figure for the accumulator fragment): warp w of the warpgroup
# holds rows 16w .. 16w+15. D is cut into 8-column slices; in each slice a thread holds 4 values,
# the four threads of a quad sharing a row: the quad of lanes 4q .. 4q+3 holds row q (first two
# values) and row q + 8 (last two), lane 4q + i holding columns 2i and 2i + 1 of the slice. So
# register 4j + v of a thread is in slice j, row (v < 2 ? q : q + 8), column 2i + v % 2.

def d_position(thread, reg):
    warp, lane = divmod(thread, 32)
    quad, i = divmod(lane, 4)
    slice_, v = divmod(reg, 4)
    row = 16 * warp + quad + (0 if v < 2 else 8)
    return row, 8 * slice_ + 2 * i + v % 2


def d_index(n):
    """(row, col) of each register, [128, N/2] each."""
    rows = torch.empty(128, n // 2, dtype=torch.long)
    cols = torch.empty(128, n // 2, dtype=torch.long)
    for t in range(128):
        for r in range(n // 2):
            rows[t, r], cols[t, r] = d_position(t, r)
    return rows, cols


_D_INDEX = {}


def regs_to_matrix(regs, n):
    rows, cols = _D_INDEX.setdefault(n, d_index(n))
    d = torch.full((64, n), float("nan"), dtype=regs.dtype)
    d[rows, cols] = regs
    return d


def matrix_to_regs(d, n):
    rows, cols = _D_INDEX.setdefault(n, d_index(n))
    return d[rows, cols].contiguous()


def test_d_layout_covers_the_tile_once():
    for n in (128, 256):
        rows, cols = d_index(n)
        assert len(set((rows * n + cols).flatten().tolist())) == 64 * n


DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


def small_integers(shape, dtype):
    # Products and sums of these are exact in f32, so D must equal the float64 product.
    return torch.randint(-3, 4, shape).to(dtype)


def bits(t):
    return t.contiguous().view(torch.int16)


def wgmma_tma(emu, a, b, c, n, dtype, trans_a, trans_b, swizzle, accumulate_first, groups=1):
    """D through the TMA-placed tiles: a is 64 x K, b is K x N (math orientation)."""
    a_g = a.t() if trans_a else a        # M-major: [K, 64]; K-major: [64, K]
    b_g = b if trans_b else b.t()        # N-major: [K, N]; K-major: [N, K]
    c_regs = matrix_to_regs(c, n).unsqueeze(0).repeat(groups, 1, 1)
    regs = emu.emu_sm90_wgmma_tma(bits(a_g), bits(b_g), c_regs, n, dtype == torch.bfloat16, trans_a, trans_b, swizzle,
                                  accumulate_first)
    return [regs_to_matrix(regs[g], n) for g in range(groups)]


@pytest.mark.parametrize("swizzle", [True, False], ids=["swizzle128", "interleaved"])
@pytest.mark.parametrize("trans_b", [0, 1], ids=["B-K-major", "B-N-major"])
@pytest.mark.parametrize("trans_a", [0, 1], ids=["A-K-major", "A-M-major"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("n", [128, 256])
def test_wgmma_from_tma_tiles(emu, n, dtype, trans_a, trans_b, swizzle):
    # Two k-blocks of 64 (two TMA phases of one barrier), 4 wgmma each, accumulating onto C.
    dt = DTYPES[dtype]
    a, b = small_integers((64, 128), dt), small_integers((128, n), dt)
    c = torch.randint(-50, 51, (64, n)).float()
    (d,) = wgmma_tma(emu, a, b, c, n, dt, trans_a, trans_b, swizzle, 1)
    assert torch.equal(d.double(), a.double() @ b.double() + c.double())


@pytest.mark.parametrize("trans_a, trans_b, swizzle", [(0, 0, True), (1, 1, True), (0, 1, False), (1, 0, False)])
def test_wgmma_accumulate_off_ignores_d(emu, trans_a, trans_b, swizzle):
    a, b = small_integers((64, 64), torch.bfloat16), small_integers((64, 128), torch.bfloat16)
    c = torch.full((64, 128), float("nan"))  # D's incoming value, which accumulate = 0 must not read
    (d,) = wgmma_tma(emu, a, b, c, 128, torch.bfloat16, trans_a, trans_b, swizzle, 0)
    assert torch.equal(d.double(), a.double() @ b.double())


def test_wgmma_two_warpgroups(emu, thread_order):
    a, b = small_integers((64, 64), torch.float16), small_integers((64, 256), torch.float16)
    c = torch.randint(-50, 51, (64, 256)).float()
    for d in wgmma_tma(emu, a, b, c, 256, torch.float16, 1, 0, True, 1, groups=2):
        assert torch.equal(d.double(), a.double() @ b.double() + c.double())


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_wgmma_rounding_within_f32_accumulation(emu, dtype):
    # Random values: each element within (K + 1) f32 roundings of the exact sum (the model rounds
    # once per k, adding in increasing k from C).
    dt = DTYPES[dtype]
    a, b, c = torch.randn(64, 128).to(dt), torch.randn(128, 128).to(dt), torch.randn(64, 128)
    (d,) = wgmma_tma(emu, a, b, c, 128, dt, 0, 1, True, 1)
    exact = a.double() @ b.double() + c.double()
    bound = 129 * 2.0 ** -24 * (a.double().abs() @ b.double().abs() + c.double().abs())
    assert ((d.double() - exact).abs() <= bound).all()


# Shared memory images built from the ISA's canonical layouts ("Canonical Layouts" table), in CuTe
# notation: a layout is (shape):(stride), a coordinate split colexicographically over a mode's
# shape; T = 8 elements (16 bytes) for 16-bit types; strides and LBO/SBO in elements (the ISA's
# examples: "LBO = 64 * sizeof(tf32)" and so on); then the swizzle Swizzle<B,4,3> (none for B = 0)
# on the byte address, which XORs bits [4, 4 + B) with bits [7, 7 + B).
BIG = 1 << 20  # the repeat counts m and k: the last sub-mode of each mode


def canonical_layout(major, span, L, S, T=8):
    if major == "MN":
        if span == 0:
            return ((T, 1, BIG), (8, BIG)), ((1, T, S), (T, L))
        s = span // 16  # 2, 4, 8 for 32, 64, 128 bytes
        return ((T, s, BIG), (8, BIG)), ((1, T, L), (s * T, S))
    if span == 0:
        return ((8, BIG), (T, BIG)), ((T, S), (1, L))
    s = span // 16
    return ((8, BIG), (T, BIG)), ((s * T, S), (1, T))


def layout_offset(shape, stride, i):
    if isinstance(shape, int):
        return i * stride
    off = 0
    for sh, st in zip(shape, stride):
        size = sh if isinstance(sh, int) else _size(sh)
        off += layout_offset(sh, st, i % size)
        i //= size
    return off


def _size(shape):
    out = 1
    for s in shape:
        out *= s if isinstance(s, int) else _size(s)
    return out


def cute_swizzle(addr, b):
    mask = ((1 << b) - 1) << (4 + 3)
    return addr ^ ((addr & mask) >> 3)


SWIZZLE_BITS = {0: 0, 32: 1, 64: 2, 128: 3}
DESC_MODE = {0: 0, 128: 1, 64: 2, 32: 3}  # the descriptor's swizzle field


def place(image, written, start, major, span, lbo, sbo, mat):
    """Writes mat[mn][k] (16-bit patterns, MN x 16) into image by the canonical layout."""
    shape, stride = canonical_layout(major, span, lbo // 2, sbo // 2)
    for mn in range(mat.shape[0]):
        for k in range(16):
            elem = layout_offset(shape[0], stride[0], mn) + layout_offset(shape[1], stride[1], k)
            addr = cute_swizzle(start + 2 * elem, SWIZZLE_BITS[span])
            assert not written[addr] and not written[addr + 1], "test layout parameters overlap"
            written[addr] = written[addr + 1] = True
            v = int(mat[mn, k]) & 0xffff
            image[addr], image[addr + 1] = v & 0xff, v >> 8


def operand_params(which, major, span, mn):
    """LBO, SBO (bytes) for an operand of mn rows (A: 64, B: N): varied per operand, so that a model
    that swapped them, or used a field the ISA says is unused, would read the wrong bytes."""
    atom = 8 * span  # the swizzle pattern's bytes (1024, 512, 256)
    if span == 0:
        if major == "K":   # LBO: between the two 8-element K halves; SBO: between 8-row groups
            return (1024 * mn // 64, 128) if which == "A" else (128, 256)
        # MN-major: SBO between 8-element MN groups, LBO between the two 8-row K groups
        return (1024, 128) if which == "A" else (128, 256)
    if major == "K":  # LBO unused ("assumed 1"): an odd value shows it is ignored
        return (4096 + 16, atom) if which == "A" else (16, 2 * atom)
    groups = mn // (span // 2)  # span-wide MN groups
    # LBO between span-wide MN groups, SBO between 8-row K groups
    return (2 * atom, atom) if which == "A" else (atom, groups * atom)


def wgmma_image(emu, a, b, c, n, dtype, trans_a, trans_b, span_a, span_b, accumulate):
    major_a, major_b = ("MN" if trans_a else "K"), ("MN" if trans_b else "K")
    lbo_a, sbo_a = operand_params("A", major_a, span_a, 64)
    lbo_b, sbo_b = operand_params("B", major_b, span_b, n)
    a_start, b_start = 1024, 1024 + 16384  # pattern-aligned starts (base offset 0)
    size = b_start + 65536
    image, written = bytearray(b"\xff" * size), [False] * size
    place(image, written, a_start, major_a, span_a, lbo_a, sbo_a, bits(a).to(torch.int32))        # a[m][k]
    place(image, written, b_start, major_b, span_b, lbo_b, sbo_b, bits(b.t()).to(torch.int32))    # b[n][k]
    desc = torch.tensor([a_start, lbo_a, sbo_a, DESC_MODE[span_a], b_start, lbo_b, sbo_b, DESC_MODE[span_b]],
                        dtype=torch.int32)
    used = max(i for i, w in enumerate(written) if w) + 1
    img = torch.frombuffer(bytearray(image[:(used + 1023) // 1024 * 1024]), dtype=torch.uint8)
    regs = emu.emu_sm90_wgmma_image(img, desc, matrix_to_regs(c, n), n, dtype == torch.bfloat16, trans_a, trans_b,
                                    accumulate)
    return regs_to_matrix(regs, n)


SPANS = [(0, 0), (128, 128), (64, 64), (32, 32), (128, 0), (32, 64)]


@pytest.mark.parametrize("spans", SPANS, ids=[f"A{a}-B{b}" for a, b in SPANS])
@pytest.mark.parametrize("trans_b", [0, 1], ids=["B-K-major", "B-N-major"])
@pytest.mark.parametrize("trans_a", [0, 1], ids=["A-K-major", "A-M-major"])
@pytest.mark.parametrize("n", [128, 256])
def test_wgmma_canonical_layouts(emu, n, trans_a, trans_b, spans):
    a, b = small_integers((64, 16), torch.bfloat16), small_integers((16, n), torch.bfloat16)
    c = torch.randint(-50, 51, (64, n)).float()
    d = wgmma_image(emu, a, b, c, n, torch.bfloat16, trans_a, trans_b, *spans, 1)
    assert torch.equal(d.double(), a.double() @ b.double() + c.double())


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 1)])
@pytest.mark.parametrize("spans", [(0, 0), (128, 128)])
def test_wgmma_canonical_layouts_f16_accumulate_off(emu, spans, trans_a, trans_b):
    a, b = small_integers((64, 16), torch.float16), small_integers((16, 128), torch.float16)
    c = torch.full((64, 128), float("nan"))
    d = wgmma_image(emu, a, b, c, 128, torch.float16, trans_a, trans_b, *spans, 0)
    assert torch.equal(d.double(), a.double() @ b.double())


def test_wgmma_is_asynchronous(emu, thread_order):
    # wgmma.wait_group 1 performs all groups but the newest; the newest's accumulators are
    # untouched until wait_group 0; shared memory is read when the wait performs the group.
    a, bt = small_integers((64, 64), torch.bfloat16), small_integers((128, 64), torch.bfloat16)
    c = torch.randint(-50, 51, (64, 128)).float()
    out = emu.emu_sm90_wgmma_async(bits(a), bits(bt), matrix_to_regs(c, 128))
    d1, d2_early, d2, d3 = (regs_to_matrix(out[i], 128).double() for i in range(4))
    product = a[:, :16].double() @ bt[:, :16].double().t()  # the first k-step of the tiles
    assert torch.equal(d1, product)
    assert torch.equal(d2_early, c.double())  # its group not performed yet
    assert torch.equal(d2, c.double() + product)
    assert torch.equal(d3, torch.zeros(64, 128, dtype=torch.float64))  # A was zeroed before the wait


@pytest.mark.parametrize("which, message", [
    (0, r"wgmma.mma_async.m64n128k16.bf16 in a partial warpgroup \(block of 96 threads\)"),
    (1, r"wgmma.mma_async.m64n128k16.bf16: no wgmma.fence before this thread's first wgmma.mma_async"),
    (2, r"wgmma number 0 of thread \d+ differs from thread \d+'s of the same warpgroup"),
    (3, r"thread exited with wgmma work not waited for \(1 uncommitted wgmma / committed groups\)"),
    (4, r"matrix A's descriptor has base offset 3; only 0 .* is modelled"),
    (5, r"mbarrier.arrive: the mbarrier at dynamic shared memory offset 0 used before mbarrier.init"),
    (6, r"mbarrier.arrive: the 8 bytes of the mbarrier at dynamic shared memory offset 0 were overwritten"),
    (7, r"mbarrier.arrive: arrival on the mbarrier .* already has all its 1 arrivals and waits for 64 transaction "
        r"bytes"),
    (8, r"matrix A's element \(\d+, k \d+\) is at offset \d+, past the block's dynamic shared memory \(17408 bytes\)"),
])
def test_sm90_misuse_is_reported(emu, which, message):
    with pytest.raises(RuntimeError, match=message):
        emu.emu_sm90_broken(which)
