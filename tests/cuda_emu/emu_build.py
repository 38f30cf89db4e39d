"""Builds torchext's CUDA sources (csrc/cuda) for the CPU emulation in emu_runtime.h.

The sources reach the emulation only through hook points they define for it: the macros of
csrc/cuda/hooks.cuh (the launch, the sm_80 code guard, the dispatch key, the grid-y limit, pinned
staging, the device-lr switch, the marking of shared arrays) and the PTX wrappers of
csrc/cuda/ptx.cuh, for which emu_runtime.h (included first) and include/emu_ptx.h give their own
definitions (TORCHEXT_EMU is defined). The .cu/.cuh files are copied unchanged (as .cpp, for the
host compiler); the build only checks that they keep to the hooks: no `<<<` launch outside
hooks.cuh, every static __shared__ array marked with TORCHEXT_SHARED. The C++ namespace and the op
library are renamed `torchext_emu` (so the ops are `torch.ops.torchext_emu.*` and nothing clashes
with the real extension), with the schemas taken from csrc/ops.cpp into emu_schemas.h, which
emu_ops.cpp (the emulation's controls and its test kernels) includes. The emulation's own test
kernels (emu_ops.cpp, emu_ptx_tests.cpp, emu_ptx_sm90_tests.cpp) get their shared arrays filled by
the build.
"""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
HERE = os.path.dirname(os.path.abspath(__file__))


def _match_forward(text, start, open_ch, close_ch):
    """Index just past the `close_ch` matching the `open_ch` at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced " + open_ch)


# A static __shared__ array declaration: its name is group 1.
SHARED_DECL = re.compile(r"__shared__[^;{}]*?\b(\w+)\s*(?:\[[^\]]*\])+\s*;")


def _code(src):
    """src without // comments."""
    return re.sub(r"//[^\n]*", "", src)


def _check_declarations_recognised(code):
    expected = code.count("__shared__") - len(re.findall(r"\bextern\s+__shared__", code))
    if len(SHARED_DECL.findall(code)) != expected:
        raise RuntimeError("CUDA emulation: a __shared__ declaration the build does not recognise; extend "
                           "SHARED_DECL in tests/cuda_emu/emu_build.py")


def check_hooks(name, src):
    """The rules csrc/cuda keeps so that the emulation needs no edits of it."""
    code = _code(src)
    if name != "hooks.cuh" and "<<<" in code:
        raise RuntimeError("CUDA emulation: csrc/cuda/%s launches a kernel with <<<...>>>; use "
                           "TORCHEXT_LAUNCH(kernel, grid, block, smem, stream, args...) (cuda/hooks.cuh)" % name)
    _check_declarations_recognised(code)
    for m in SHARED_DECL.finditer(code):
        if not re.match(r"\s*TORCHEXT_SHARED\(\s*%s\s*\);" % re.escape(m.group(1)), code[m.end():]):
            raise RuntimeError("CUDA emulation: csrc/cuda/%s declares __shared__ %s without TORCHEXT_SHARED(%s); "
                               "right after it (cuda/hooks.cuh)" % (name, m.group(1), m.group(1)))


def poison_shared(src):
    """For the emulation's own test kernels: appends to each __shared__ declaration the call that
    TORCHEXT_SHARED makes in csrc/cuda (fill with 0xff bytes, NaN in every floating type, when the
    block's first thread reaches it). `extern __shared__` (dynamic shared memory, which the launch
    fills) needs none."""
    _check_declarations_recognised(_code(src))
    return SHARED_DECL.sub(lambda m: m.group(0) + " TORCHEXT_EMU_POISON_SHARED(" + m.group(1) + ");", src)


def schema_block():
    text = open(os.path.join(CSRC, "ops.cpp")).read()
    start = text.index("TORCH_LIBRARY(torchext, m)")
    brace = text.index("{", start)
    return text[start:_match_forward(text, brace, "{", "}")]


def generate(out_dir):
    """Writes the sources to compile under out_dir; returns the .cpp files."""
    os.makedirs(os.path.join(out_dir, "cuda"), exist_ok=True)
    sources = []
    for name in sorted(os.listdir(os.path.join(CSRC, "cuda"))):
        src = open(os.path.join(CSRC, "cuda", name)).read()
        check_hooks(name, src)
        dst_name = name[:-3] + ".cpp" if name.endswith(".cu") else name
        dst = os.path.join(out_dir, "cuda", dst_name)
        _write_if_changed(dst, src)
        if name.endswith(".cu"):
            sources.append(dst)
    schemas = ("// Generated from csrc/ops.cpp.\n#pragma once\n#include <torch/library.h>\n\n"
               "#include \"optim_args.h\"\n\n" + schema_block() + "\n")
    _write_if_changed(os.path.join(out_dir, "emu_schemas.h"), schemas)
    own = []
    # the emulation's controls, the PTX models' tests (sm_80, sm_90a)
    for name in ["emu_ops.cpp", "emu_ptx_tests.cpp", "emu_ptx_sm90_tests.cpp"]:
        own.append(os.path.join(out_dir, name))
        _write_if_changed(own[-1], poison_shared(open(os.path.join(HERE, name)).read()))
    return own + sources


def _write_if_changed(path, text):
    if os.path.exists(path) and open(path).read() == text:
        return
    with open(path, "w") as f:
        f.write(text)


def load(verbose=False):
    """Builds (or reuses) the emulated extension and loads it; its ops are torch.ops.torchext_emu.*

    With TORCHEXT_EMU_ASAN=1 the kernels are built with AddressSanitizer, which then reports any
    read or write outside a tensor's allocation (the emulation's counterpart of compute-sanitizer's
    memcheck); Python must then run with the ASan runtime preloaded, as tests/cuda_emu/asan.sh does.
    """
    import torch
    from torch.utils import cpp_extension

    asan = os.environ.get("TORCHEXT_EMU_ASAN") == "1"
    build = os.path.join(ROOT, "build", "cuda_emu_asan" if asan else "cuda_emu")
    src_dir = os.path.join(build, "src")
    sources = generate(src_dir)
    obj_dir = os.path.join(build, "obj")
    os.makedirs(obj_dir, exist_ok=True)
    sanitize = ["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []
    cpp_extension.load(
        name="torchext_cuda_emu_asan" if asan else "torchext_cuda_emu",
        sources=sources,
        extra_include_paths=[os.path.join(HERE, "include"), src_dir, CSRC],
        # TORCHEXT_EMU: csrc/cuda/ptx.cuh takes the PTX models of include/emu_ptx.h.
        extra_cflags=["-O1", "-include", os.path.join(HERE, "emu_runtime.h"), "-Dtorchext=torchext_emu",
                      "-DTORCHEXT_EMU", "-fno-math-errno", "-w"] + sanitize,
        extra_ldflags=sanitize,
        build_directory=obj_dir,
        is_python_module=False,
        verbose=verbose,
    )
    return torch.ops.torchext_emu


if __name__ == "__main__":
    load(verbose=True)
    print("built")
