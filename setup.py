"""Build torchext._C: hand-written CPU kernels, plus CUDA kernels when torch and a toolkit allow.

The CUDA kernels are compiled whenever torch was built with CUDA and a CUDA toolkit is found,
whether or not a GPU is visible (CI compiles and links them without one).
Environment:
  TORCHEXT_CPU_ONLY=1      build the CPU kernels only
  TORCHEXT_PORTABLE=1      leave out the x86 SIMD kernel variants (AVX2, AVX-512, F16C, AVX512_BF16):
                           the CPU kernels then build as they do on non-x86 machines (aarch64)
  CUDA_HOME / CUDA_PATH    the toolkit to use (else /usr/local/cuda, else the real nvcc on PATH)
  TORCH_CUDA_ARCH_LIST     target archs; default: the visible GPUs', else "8.0+PTX;9.0a". A plain "9.0"
                           becomes "9.0a": sm_90a code runs on every compute capability 9.0 GPU
                           and is the only target with the Hopper GEMM (wgmma, setmaxnreg)
  MAX_JOBS                 parallel compile jobs (ninja)
  TORCHEXT_NO_EXTENSION=1  build nothing: the package only, for an editable install beside an
                           extension already built in place (`build_ext --inplace`, as .ci/env.sh does)
"""
import glob
import os
import re
import shutil
import site
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"
# sm_80 code (and its PTX, which newer GPUs compile at load time) and sm_90a code for Hopper.
DEFAULT_ARCHS = "8.0+PTX;9.0a"


def cuda_arch_list(torch):
    """TORCH_CUDA_ARCH_LIST, else the visible GPUs' capabilities, else DEFAULT_ARCHS; "9.0" -> "9.0a"."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", ";")
    if not archs:
        caps = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = ";".join(caps) if caps else DEFAULT_ARCHS
    return ";".join("9.0a" if a == "9.0" else a for a in archs.split(";") if a)


def _is_toolkit(home):
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
        os.path.join(home, "include", "cuda_runtime.h"))


def find_cuda_home():
    """CUDA_HOME, CUDA_PATH, /usr/local/cuda, then the directory of the real nvcc on PATH.

    A wrapper script named nvcc (e.g. /usr/local/bin/nvcc exec'ing the real one) would make torch
    guess /usr/local as the toolkit, so a candidate only counts if it holds bin/nvcc and the headers.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper script that execs the real compiler: read the path it names
            with open(nvcc, "rb") as f:
                head = f.read(4096)
            if not head.startswith(b"\x7fELF"):
                for path in re.findall(rb"(/[^\s\"']+)/bin/nvcc", head):
                    candidates.append(path.decode())
        except OSError:
            pass
    for home in candidates:
        if _is_toolkit(home):
            return os.path.realpath(home)
    return None


def nvidia_pip_includes(cuda_home):
    """Headers torch's CUDA headers include but a slim toolkit may lack ship in the nvidia wheels."""
    needed = ["cublas_v2.h", "cusparse.h"]
    missing = [h for h in needed if not os.path.isfile(os.path.join(cuda_home, "include", h))]
    if not missing:
        return []
    dirs = []
    roots = list(site.getsitepackages()) + [site.getusersitepackages()]
    import torch
    roots.append(os.path.dirname(os.path.dirname(torch.__file__)))
    for root in roots:
        for inc in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if any(os.path.isfile(os.path.join(inc, h)) for h in missing) and inc not in dirs:
                dirs.append(inc)
    return dirs


def main():
    if os.environ.get("TORCHEXT_NO_EXTENSION", "0") not in ("", "0"):
        setup(**package_metadata())
        return
    import torch

    cpu_only = os.environ.get("TORCHEXT_CPU_ONLY", "0") not in ("", "0")
    cuda_home = None if cpu_only or not torch.version.cuda else find_cuda_home()
    with_cuda = cuda_home is not None
    if with_cuda:
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
        os.environ["CUDA_HOME"] = cuda_home
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list(torch)  # read by torch's build of the .cu files
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    archs = os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else ""

    # Every .cpp under csrc/ (csrc/cpu, csrc/autograd, ...), so a new file cannot be left out; the
    # CUDA sources when building them.
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    macros = [("TORCHEXT_TORCH_VERSION", '"%s"' % torch.__version__),
              ("TORCHEXT_CUDA_ARCHS", '"%s"' % archs)]
    if with_cuda:
        macros.append(("TORCHEXT_WITH_CUDA", "1"))
    portable = os.environ.get("TORCHEXT_PORTABLE", "0") not in ("", "0")
    if portable:
        macros.append(("TORCHEXT_PORTABLE", "1"))
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno"]  # no -march=native: SIMD level is chosen at run time
    # -fno-math-errno lets GCC vectorise std::sqrt (we never read errno).
    nvcc_flags = ["-O3", "-Xptxas=-O3", "--expt-relaxed-constexpr",
                  "-lineinfo"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        include_dirs += nvidia_pip_includes(cuda_home)
    ext_cls = CUDAExtension if with_cuda else CppExtension
    ext = ext_cls(
        name="torchext._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else {"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
    print("torchext: building %s kernels%s (torch %s%s)" % (
        "CPU+CUDA" if with_cuda else "CPU-only", ", portable CPU kernels" if portable else "", torch.__version__,
        ", CUDA_HOME=%s, archs=%s" % (cuda_home, archs) if with_cuda else ""), file=sys.stderr)

    # Recorded for the import-time ABI check and `python -m torchext.info`; rewritten only when it
    # changes, so that a rebuild with nothing changed writes nothing a running test could read.
    info = "".join(["# Generated by setup.py; do not edit.\n",
                    "TORCH_VERSION = %r\n" % torch.__version__,
                    "TORCH_CUDA_VERSION = %r\n" % (torch.version.cuda if with_cuda else None),
                    "WITH_CUDA = %r\n" % with_cuda,
                    "CUDA_ARCHS = %r\n" % archs,
                    "PORTABLE = %r\n" % portable])
    info_path = os.path.join(ROOT, "torchext", "_build_info.py")
    old_info = None
    if os.path.isfile(info_path):
        with open(info_path) as f:
            old_info = f.read()
    if old_info != info:
        with open(info_path, "w") as f:
            f.write(info)

    setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
          **package_metadata())


def package_metadata():
    return dict(
        name="torchext",
        version=VERSION,
        description="Hand-written C++/CUDA kernels for Linear, ReLU, MSE loss and fused optimizers",
        packages=find_packages(include=["torchext", "torchext.*"]),
        python_requires=">=3.9",
        install_requires=["torch"],
        zip_safe=False,
    )


if __name__ == "__main__":
    main()
