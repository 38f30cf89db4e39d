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
