"""The CPU optimizer kernels at every SIMD level the machine offers (TORCHEXT_CPU_CAPABILITY caps
it): the baseline path converts half types in software, AVX2 and AVX-512 convert float16 with F16C
in registers. Each level runs in its own process and must land where torch.optim in float32 does."""
import os
import subprocess
import sys

import pytest
import torch

import torchext

HERE = os.path.dirname(os.path.abspath(__file__))
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
    code = "import sys; sys.path.insert(0, %r); import test_optim_levels as t; t.run_cases(%r)" % (HERE, str(out))
    env = dict(os.environ, TORCHEXT_CPU_CAPABILITY=level)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
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


def _lowmem_at(level, out):
    code = "import sys; sys.path.insert(0, %r); import test_optim_levels as t; t.run_lowmem_cases(%r)" % (HERE, str(out))
    env = dict(os.environ, TORCHEXT_CPU_CAPABILITY=level)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return torch.load(out)


@pytest.mark.parametrize("level", LEVELS[1:])
def test_low_memory_modes_give_the_same_bits_at_every_simd_level(level, tmp_path):
    got = _lowmem_at(level, tmp_path / "level.pt")
    if got["level"] != level:
        pytest.skip("this CPU has no %s" % level)
    base = _lowmem_at("default", tmp_path / "default.pt")
    assert len(base["results"]) == len(LOWMEM_CASES)
    start = [torch.randn(s, generator=torch.Generator().manual_seed(2000)) for s in LOWMEM_SHAPES[:1]]
    assert not torch.equal(base["results"][0][0][0].float(), start[0].to(torch.bfloat16).float())  # it trained
    for i in base["results"]:
        (bp, bs), (gp, gs) = base["results"][i], got["results"][i]
        for j, (a, b) in enumerate(zip(bp, gp)):
            assert torch.equal(a.view(torch.int16) if a.element_size() == 2 else a, b.view(torch.int16)
                               if b.element_size() == 2 else b), (LOWMEM_CASES[i], "param", j)
        for j, (sa, sb) in enumerate(zip(bs, gs)):
            assert sa.keys() == sb.keys()
            for k in sa:
                assert torch.equal(sa[k], sb[k]) or (sa[k].isnan().any() and torch.equal(
                    sa[k].nan_to_num(), sb[k].nan_to_num())), (LOWMEM_CASES[i], j, k)
