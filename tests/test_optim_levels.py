"""The CPU optimizer kernels at every SIMD level the machine offers (TORCHEXT_CPU_CAPABILITY caps
it): the baseline path converts half types in software, AVX2 and AVX-512 convert float16 with F16C
in registers. Each level runs in its own process and must land where torch.optim in float32 does."""

import pytest
import torch

import torchext
from conftest import run_at_cpu_level

LEVELS = ["default", "avx2", "avx512"]
# Sizes straddle the 8- and 16-lane steps so the vector loops and their scalar tails both run.
SHAPES = [(1031,), (7,), (8, 3), (17,)]
STEPS = 3
CASES = [
    ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# One rounding of the param dtype per step, plus torch's float32 order of operations.
TOL = {"float32": dict(atol=1e-6, rtol=1e-5), "float16": dict(atol=4e-3, rtol=4e-3),
       "bfloat16": dict(atol=3e-2, rtol=3e-2)}


def run_cases(out_path):
    """Runs every case with torchext at this process's SIMD level and saves the final params."""
    results = {}
    for i, (name, kw) in enumerate(CASES):
        for dname, dtype in DTYPES.items():
            for master in ([False, True] if dtype != torch.float32 else [False]):
                gen = torch.Generator().manual_seed(1000 + i)
                params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]
                opt = getattr(torchext.optim, name)(params, master_weights=master, **kw)
                for _ in range(STEPS):
                    for p in params:
                        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
                    opt.step()
                results[(i, dname, master)] = [p.detach().clone() for p in params]
    torch.save({"level": torchext._C.cpu_capability(), "results": results}, out_path)


def reference(i, dtype):
    """torch.optim in float32 math from the same (rounded) starting point and grads."""
    name, kw = CASES[i]
    gen = torch.Generator().manual_seed(1000 + i)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype).float()) for s in SHAPES]
    opt = getattr(torch.optim, name)(params, foreach=False, **kw)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype).float()
        opt.step()
    return params


@pytest.mark.parametrize("level", LEVELS)
def test_optimizers_match_torch_at_every_simd_level(level, tmp_path):
    out = tmp_path / "results.pt"
    run_at_cpu_level(level, "-c", "import test_optim_levels as t; t.run_cases(%r)" % str(out))
    saved = torch.load(out)
    if saved["level"] != level:
        assert level != "default"  # the baseline is always available
        pytest.skip("this CPU has no %s" % level)
    assert len(saved["results"]) == len(CASES) * 5
    for (i, dname, master), got in saved["results"].items():
        want = reference(i, DTYPES[dname])
        for g, w in zip(got, want):
            assert g.dtype == DTYPES[dname]
            torch.testing.assert_close(g.float(), w.detach(), **TOL[dname], msg=lambda m: "%s %s master=%s: %s" % (
                CASES[i][0], dname, master, m))


# The low-memory modes: the same bits at every level (the element loop is vectorised per level
# with FMA contraction off; tests/test_optim_lowmem_emulated.py checks the CUDA twin's bits).
LOWMEM_CASES = [
    ("AdamW", torch.bfloat16, dict(lr=1e-3, stochastic_rounding=True)),
    ("AdamW", torch.float16, dict(lr=1e-3, stochastic_rounding=True, state_dtype="int8")),
    ("Adam", torch.bfloat16, dict(lr=1e-3, kahan_summation=True, amsgrad=True, weight_decay=0.1)),
    ("AdamW", torch.float32, dict(lr=1e-3, state_dtype="int8", maximize=True)),
    ("SGD", torch.bfloat16, dict(lr=0.1, momentum=0.9, nesterov=True, stochastic_rounding=True, state_dtype="int8")),
    ("SGD", torch.float16, dict(lr=0.1, kahan_summation=True, weight_decay=0.01)),
]
LOWMEM_SHAPES = [(5000,), (7,), (64, 80)]  # int8 state for the two of at least 4096 elements


def run_lowmem_cases(out_path):
    results = {}
    for i, (name, dtype, kw) in enumerate(LOWMEM_CASES):
        gen = torch.Generator().manual_seed(2000 + i)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in LOWMEM_SHAPES]
        opt = getattr(torchext.optim, name)(params, generator=torch.Generator().manual_seed(7), **kw)
        for _ in range(STEPS):
            for p in params:
                p.grad = (torch.randn(p.shape, generator=gen) * 1e-2).to(dtype)
            opt.step()
        results[i] = ([p.detach().clone() for p in params],
                      [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in params])
    torch.save({"level": torchext._C.cpu_capability(), "results": results}, out_path)


def _bits(t):
    """t's storage bits, to compare results bit for bit (NaN payloads and signed zeros included)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(ints[t.element_size()]) if t.is_floating_point() else t


@pytest.mark.parametrize("level", LEVELS[1:])
def test_low_memory_modes_give_the_same_bits_at_every_simd_level(level, tmp_path):
    runs = {}
    for lv in ("default", level):
        out = tmp_path / ("%s.pt" % lv)
        run_at_cpu_level(lv, "-c", "import test_optim_levels as t; t.run_lowmem_cases(%r)" % str(out))
        runs[lv] = torch.load(out)
    if runs[level]["level"] != level:
        pytest.skip("this CPU has no %s" % level)
    base, got = runs["default"]["results"], runs[level]["results"]
    assert len(base) == len(LOWMEM_CASES)
    start = torch.randn(LOWMEM_SHAPES[0], generator=torch.Generator().manual_seed(2000)).to(torch.bfloat16)
    assert not torch.equal(base[0][0][0], start)  # it trained
    for i in base:
        (bp, bs), (gp, gs) = base[i], got[i]
        for j, (a, b) in enumerate(zip(bp, gp)):
            assert torch.equal(_bits(a), _bits(b)), (LOWMEM_CASES[i], "param", j)
        for j, (sa, sb) in enumerate(zip(bs, gs)):
            assert sa.keys() == sb.keys()
            for k in sa:
                assert torch.equal(_bits(sa[k]), _bits(sb[k])), (LOWMEM_CASES[i], j, k)
