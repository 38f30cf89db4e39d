"""The CUDA twin of the low-memory optimizer steps (csrc/cuda/optim_lowmem.cu), run through the CPU
emulation (tests/cuda_emu) as torch.ops.torchext_emu.*, against the CPU kernels: every mode must
give the same bits (params, state, int8 codes and scales, compensation, generator offset), since
both run csrc/optim_lowmem.h's element math with the same Philox keys."""

import pytest
import torch

import torchext  # noqa: F401


# sizes: under one quantization block, a partial last block, two engine chunks (1 << 16 each)
SIZES = [7, 4096 + 77, (1 << 16) + 300]
MODES = {
    "sr": dict(sr=True, kahan=False, state=None),
    "kahan": dict(sr=False, kahan=True, state=None),
    "int8": dict(sr=False, kahan=False, state=torch.int8),
    "sr+kahan+int8": dict(sr=True, kahan=True, state=torch.int8),
    "sr+bf16": dict(sr=True, kahan=False, state=torch.bfloat16),
}


def _blocks(n):
    return (n + 255) // 256


def _state(dtype, mode, nbuf, sizes):
    torch.manual_seed(0)
    params = [torch.randn(n).to(dtype) for n in sizes]
    grads = [(torch.randn(n) * 1e-2).to(dtype) for n in sizes]
    sd = mode["state"] if mode["state"] is not None else dtype
    bufs = [[torch.zeros(n, dtype=sd) for n in sizes] for _ in range(nbuf)]
    scales = [[torch.zeros(_blocks(n)) for n in sizes] if sd == torch.int8 else [] for _ in range(nbuf)]
    comps = [torch.zeros(n, dtype=dtype) for n in sizes] if mode["kahan"] else []
    sr = torch.tensor([1234567, 5], dtype=torch.int64) if mode["sr"] else None
    counts = [torch.zeros(()) for _ in sizes]
    return params, grads, bufs, scales, comps, sr, counts


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    return x


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat(v)]
    return []


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adam_lowmem_bit_identical(emu, dtype, mode):
    m = MODES[mode]
    state = _state(dtype, m, 2, SIZES)
    other = _clone(state)
    for ops, st in ((torch.ops.torchext, state), (emu, other)):
        params, grads, bufs, scales, comps, sr, counts = st
        for _ in range(3):
            ops.adam_lowmem_step_(params, grads, bufs[0], bufs[1], [], counts, [], 1e-2, 0.9, 0.999, 1e-8, 1e-2,
                                  False, False, True, None, None, None, scales[0], scales[1], comps, sr)
    for a, b in zip(_flat(state), _flat(other)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    if m["sr"]:
        assert int(state[5][1]) == 8


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sgd_lowmem_bit_identical(emu, mode):
    m = MODES[mode]
    state = _state(torch.bfloat16, m, 1, SIZES)
    other = _clone(state)
    for ops, st in ((torch.ops.torchext, state), (emu, other)):
        params, grads, bufs, scales, comps, sr, counts = st
        for _ in range(3):
            ops.sgd_lowmem_step_(params, grads, bufs[0], counts, [], 0.1, 0.9, 0.0, 1e-2, True, False, None, None,
                                 None, scales[0], comps, sr)
    for a, b in zip(_flat(state), _flat(other)):
        assert torch.equal(a, b)


def test_skipped_step_writes_nothing(emu):
    state = _state(torch.bfloat16, MODES["sr+kahan+int8"], 2, SIZES)
    before = _clone(state)
    params, grads, bufs, scales, comps, sr, counts = state
    emu.adam_lowmem_step_(params, grads, bufs[0], bufs[1], [], counts, [], 1e-2, 0.9, 0.999, 1e-8, 0.0, False, False,
                          True, None, torch.tensor(2.0), torch.tensor(1.0), scales[0], scales[1], comps, sr)
    for a, b in zip(_flat(state), _flat(before)):
        assert torch.equal(a, b)
