"""Builds torchext's CUDA sources (csrc/cuda) for the CPU emulation in emu_runtime.h.

The .cu/.cuh files are copied with a few mechanical edits: each `kernel<<<grid, block, smem,
stream>>>(args)` launch becomes a call of the emulated launcher, the CUDA kernel registrations
become CPU ones, shared
arrays are filled with NaN bytes at the start of each block, and the rest of EDITS below. The
C++ namespace and the op library are renamed `torchext_emu` (so the ops are
`torch.ops.torchext_emu.*` and nothing clashes with the real extension), with the schemas taken
from csrc/ops.cpp into emu_schemas.h, which emu_ops.cpp (the emulation's controls and its test
kernels) includes. The PTX instructions of csrc/cuda/ptx.cuh come from the CPU models in
include/emu_ptx.h (TORCHEXT_EMU is defined), which emu_ptx_tests.cpp tests. Everything else is the
kernels' own code, compiled by the host compiler.
"""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
HERE = os.path.dirname(os.path.abspath(__file__))


def _match_back(text, end, open_ch, close_ch):
    """Index of the `open_ch` matching the `close_ch` at text[end]."""
    depth = 0
    for i in range(end, -1, -1):
        if text[i] == close_ch:
            depth += 1
        elif text[i] == open_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced " + close_ch)


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


def _split_top(text):
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def rewrite_launches(src):
    out = src
    while True:
        at = out.find("<<<")
        if at < 0:
            return out
        # The kernel expression: an identifier path, optionally with template arguments.
        k_end = at
        while out[k_end - 1].isspace():
            k_end -= 1
        k_start = k_end
        if out[k_start - 1] == ">":
            k_start = _match_back(out, k_start - 1, "<", ">")
        while k_start > 0 and (out[k_start - 1].isalnum() or out[k_start - 1] in "_:"):
            k_start -= 1
        kernel = out[k_start:k_end]
        cfg_end = out.index(">>>", at)
        cfg = _split_top(out[at + 3:cfg_end])
        if len(cfg) != 4:
            raise ValueError("launch without four configuration arguments: " + out[at:cfg_end])
        a_start = cfg_end + 3
        while out[a_start].isspace():
            a_start += 1
        a_end = _match_forward(out, a_start, "(", ")")
        args = out[a_start + 1:a_end - 1].strip()
        call = "::torchext_emu_rt::launch(dim3({}), dim3({}), {}, {}, {}{})".format(
            cfg[0], cfg[1], cfg[2], cfg[3], kernel, (", " + args) if args else "")
        out = out[:k_start] + call + out[a_end:]


# Plain text edits besides the launches: (what, replacement). Each must apply somewhere, so that a
# change to the sources cannot silently turn one off.
EDITS = [
    ("TORCH_LIBRARY_IMPL(torchext, CUDA,", "TORCH_LIBRARY_IMPL(torchext, CPU,"),
    # No pinned memory without a GPU; the staging copy is an ordinary one.
    (".pinned_memory(true)", ".pinned_memory(false)"),
    # The GEMMs cap gridDim.y (column tiles) at CUDA's 65535 and loop over the rest; a cap of 2 makes
    # that loop run at test sizes (N > 128).
    ("constexpr int64_t kMaxGridY = 65535;", "constexpr int64_t kMaxGridY = 2;"),
    # Every tensor here is a CPU tensor: a test switch makes a CPU lr tensor take the device-lr path.
    ("if (lr_tensor->is_cpu()) {", "if (lr_tensor->is_cpu() && !::torchext_emu_rt::lr_as_device()) {"),
]


# A static __shared__ array declaration: its name is group 1.
SHARED_DECL = re.compile(r"__shared__[^;{}]*?\b(\w+)\s*(?:\[[^\]]*\])+\s*;")


def poison_shared(src):
    """Appends to each __shared__ declaration a call that fills the array with 0xff bytes (NaN in
    every floating type) when the block's first thread reaches it, so a kernel that reads shared
    memory it did not write in this block sees NaN, not zeros or the previous block's values.
    Mentions in // comments and `extern __shared__` (dynamic shared memory, which the launch fills
    instead; ptx.cuh's TORCHEXT_DYNAMIC_SMEM) need no call."""
    out = SHARED_DECL.sub(lambda m: m.group(0) + " TORCHEXT_EMU_POISON_SHARED(" + m.group(1) + ");", src)
    code = re.sub(r"//[^\n]*", "", src)
    expected = code.count("__shared__") - len(re.findall(r"\bextern\s+__shared__", code))
    if len(SHARED_DECL.findall(code)) != expected:
        raise RuntimeError("CUDA emulation: a __shared__ declaration the build does not recognise; extend "
                           "SHARED_DECL in tests/cuda_emu/emu_build.py")
    return out


def translate(src, used):
    src = poison_shared(rewrite_launches(src))
    for i, (old, new) in enumerate(EDITS):
        if old in src:
            used.add(i)
            src = src.replace(old, new)
    return src


def schema_block():
    text = open(os.path.join(CSRC, "ops.cpp")).read()
    start = text.index("TORCH_LIBRARY(torchext, m)")
    brace = text.index("{", start)
    return text[start:_match_forward(text, brace, "{", "}")]


def generate(out_dir):
    """Writes the translated sources under out_dir; returns the .cpp files to compile."""
    os.makedirs(os.path.join(out_dir, "cuda"), exist_ok=True)
    sources, used = [], set()
    for name in sorted(os.listdir(os.path.join(CSRC, "cuda"))):
        src = open(os.path.join(CSRC, "cuda", name)).read()
        dst_name = name[:-3] + ".cpp" if name.endswith(".cu") else name
        dst = os.path.join(out_dir, "cuda", dst_name)
        _write_if_changed(dst, translate(src, used))
        if name.endswith(".cu"):
            sources.append(dst)
    unused = [EDITS[i][0] for i in range(len(EDITS)) if i not in used]
    if unused:
        raise RuntimeError("CUDA emulation: csrc/cuda no longer contains " + ", ".join(map(repr, unused)) +
                           "; update EDITS in tests/cuda_emu/emu_build.py")
    schemas = "// Generated from csrc/ops.cpp.\n#pragma once\n#include <torch/library.h>\n\n" + schema_block() + "\n"
    _write_if_changed(os.path.join(out_dir, "emu_schemas.h"), schemas)
    own = []
    for name in ["emu_ops.cpp", "emu_ptx_tests.cpp"]:  # the emulation's controls, the PTX models' tests
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
