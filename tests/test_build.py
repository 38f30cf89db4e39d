"""The package, its build record and the import-time ABI guard."""
import os
import platform
import subprocess
import sys

import pytest
import torch

import torchext
from torchext import _C, _build_info, _loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_record_matches_running_torch():
    assert _C.built_torch_version() == torch.__version__
    assert _build_info.TORCH_VERSION == torch.__version__
    assert _C.with_cuda() == _build_info.WITH_CUDA


def test_cuda_kernels_compiled_when_expected():
    # CI sets TORCHEXT_EXPECT_CUDA=1 for the CUDA build and 0 for the CPU-only one.
    expect = os.environ.get("TORCHEXT_EXPECT_CUDA")
    if expect is None:
        pytest.skip("TORCHEXT_EXPECT_CUDA not set")
    assert _C.with_cuda() == (expect == "1")
    if _C.with_cuda():
        archs = _C.cuda_archs()
        assert archs, "a CUDA build must record its target archs"
        has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("torchext::relu", "CUDA")
        assert has_cuda_kernel


def test_cpu_kernels_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("torchext::relu", "CPU")


def test_cpu_capability_is_known():
    assert _C.cpu_capability() in ("avx512", "avx2", "default")


def test_x86_kernel_variants_only_where_built():
    # The AVX2 / AVX-512 variants exist on x86-64 unless the build asked for the portable kernels
    # (TORCHEXT_PORTABLE=1, what other CPUs compile); without them everything runs the baseline code.
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert _C.cpu_x86_kernels() == (x86 and not getattr(_build_info, "PORTABLE", False))
    if not _C.cpu_x86_kernels():
        assert _C.cpu_capability() == "default" and not _C.cpu_bf16_dot()


def test_mismatch_message_names_both_versions():
    with pytest.raises(ImportError) as err:
        _loader.check_torch_version("1.0.0+fake", found="2.99.0")
    msg = str(err.value)
    assert "1.0.0+fake" in msg and "2.99.0" in msg and "--no-build-isolation" in msg
    _loader.check_torch_version(torch.__version__)  # the real one passes


def test_import_fails_cleanly_when_built_for_another_torch():
    # Fake the recorded build version in a fresh interpreter, before torchext is imported.
    code = (
        "import sys, types\n"
        "fake = types.ModuleType('torchext._build_info')\n"
        "fake.TORCH_VERSION = '1.13.0+fake'\n"
        "sys.modules['torchext._build_info'] = fake\n"
        "try:\n"
        "    import torchext\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR:', e)\n"
        "else:\n"
        "    print('IMPORTED')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "IMPORT-ERROR:" in out.stdout, out.stdout
    assert "1.13.0+fake" in out.stdout and torch.__version__ in out.stdout
    assert "pip install --no-build-isolation" in out.stdout


def test_info_prints_build_facts():
    out = subprocess.run([sys.executable, "-m", "torchext.info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert torch.__version__ in out.stdout
    assert "CPU SIMD level" in out.stdout and _C.cpu_capability() in out.stdout
    assert ("yes (archs:" in out.stdout) == _C.with_cuda()


@pytest.mark.parametrize("level", ["default", "avx2"])
def test_lower_simd_levels_give_identical_results(level):
    # The environment can cap the dispatch level; every level must compute the same thing.
    code = (
        "import torch, torchext\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(100003)\n"
        "print(torchext._C.cpu_capability(), torch.equal(torchext.functional.relu(x), torch.relu(x)))\n"
    )
    env = dict(os.environ, TORCHEXT_CPU_CAPABILITY=level)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    got_level, same = out.stdout.split()
    assert same == "True"
    assert got_level in (level, "default")  # never above what was asked


def test_public_api():
    assert torchext.__version__
    assert callable(torchext.functional.relu)
    assert issubclass(torchext.nn.ReLU, torch.nn.Module)
