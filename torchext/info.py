"""`python -m torchext.info`: what this torchext build is and what it runs on."""
import platform
import sys


def collect():
    import torch

    import torchext
    from torchext import _C

    cuda_archs = _C.cuda_archs()
    return {
        "torchext": torchext.__version__,
        "built against torch": _C.built_torch_version(),
        "running torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none",
        "CUDA kernels compiled": "yes (archs: %s)" % cuda_archs if _C.with_cuda() else "no (CPU-only build)",
        "CUDA device": torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible",
        "CPU SIMD level": _C.cpu_capability() if _C.cpu_x86_kernels() else "%s (portable build: no x86 kernel variants)" % _C.cpu_capability(),
        "CPU bf16 GEMM": "AVX512_BF16 dot products" if _C.cpu_bf16_dot() else "via float32",
        "CPU threads": torch.get_num_threads(),
        "python": "%s (%s)" % (platform.python_version(), sys.platform),
    }


def main():
    info = collect()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print("%s : %s" % (key.ljust(width), value))


if __name__ == "__main__":
    main()
