import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch

import torchext  # noqa: F401  (loads the ops)

HAS_CUDA = torch.cuda.is_available()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]
CUDA_ONLY = DEVICES[1:]  # for tests of what differs on CUDA

ALL_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------ the CUDA emulation
# tests/cuda_emu runs csrc/cuda's kernels on the CPU; it needs Linux (ucontext fibers) and a C++
# compiler. Tests take the `emu` fixture (its ops, torch.ops.torchext_emu, built once per session)
# and are skipped where it cannot be built.
EMULATION_UNAVAILABLE = (
    "the CUDA emulation needs Linux (ucontext) and a C++ compiler"
    if platform.system() != "Linux" or shutil.which(os.environ.get("CXX", "c++")) is None else None)


@pytest.fixture(scope="session")
def emu():
    if EMULATION_UNAVAILABLE:
        pytest.skip(EMULATION_UNAVAILABLE)
    sys.path.insert(0, os.path.join(TESTS_DIR, "cuda_emu"))
    import emu_build
    return emu_build.load()


@pytest.fixture(params=[False, True], ids=["forward", "reverse"])
def thread_order(emu, request):
    """Runs the test with a block's threads first to last, then last to first."""
    previous = emu.emu_reverse_order()
    emu.emu_set_reverse_order(request.param)
    yield request.param
    emu.emu_set_reverse_order(previous)


def run_at_cpu_level(level, *argv):
    """Runs `python *argv` in a child process with TORCHEXT_CPU_CAPABILITY=level (which caps the SIMD
    level and switches AVX512_BF16 off), importing this checkout's torchext and, from the tests
    folder, the test modules; fails if the child does."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(torchext.__file__)))
    path = [TESTS_DIR, root] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, TORCHEXT_CPU_CAPABILITY=level, PYTHONPATH=os.pathsep.join(path))
    subprocess.run([sys.executable, *map(str, argv)], check=True, env=env, cwd=TESTS_DIR, timeout=300)

def away_from_kink(shape, device):
    """Fresh float64 normals kept at least 0.05 from 0, where ReLU has its kink: finite differences
    (gradcheck) then see a smooth function."""
    x = torch.randn(shape, dtype=torch.float64, device=device)
    return torch.where(x.abs() < 0.05, x.sign() * 0.1 + (x == 0), x)


# Tolerances for elementwise results against torch in the same dtype (one rounding apart at most).
ELEMENTWISE_TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
}


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random data for each test, but reproducible from the test's id.
    torch.manual_seed(hash(request.node.nodeid) % (2**31))
    yield


@pytest.fixture(scope="session")
def gloo_ranks():
    """Two CPU processes in one gloo process group (tests/ranks.py), shared by the session's tests:
    gloo_ranks.run(fn, *args) calls fn(rank, 2, *args) on each and returns their results."""
    from ranks import RankPool

    pool = RankPool(2)
    yield pool
    pool.close()
