"""What the GPU will run, read without a GPU: the SASS of the built CUDA kernels.

Reads the sm_XX code embedded in the built extension (torchext/_C*.so, or any .so / .cubin given)
with cuobjdump, and prints per kernel its registers, stack and local memory, static shared memory,
the dynamic shared memory and threads of its launch (GEMMs: from the tile table in
csrc/cuda/gemm.h and the constants of csrc/cuda/gemm_wgmma.cuh), the theoretical occupancy that
gives, and the counts of the instructions that tell whether a kernel is the one meant: LDGSTS
(cp.async), LDSM (ldmatrix), HMMA.16816 / HMMA.1688 (mma.sync m16n8k16 bf16/f16 / m16n8k8 tf32),
HGMMA (wgmma), UTMALDG (TMA tensor loads), SYNCS (mbarrier operations), LDG/STG.128 and LDS.128
(16-byte accesses), LDL/STL (local memory).

With --check it fails (exit 1) when a kernel spills or uses local memory, when a tensor-core GEMM
lacks cp.async, ldmatrix or its mma, when the float SIMT GEMM lacks LDS.128, or (sm_90a) when the
Hopper GEMM lacks HGMMA, UTMALDG or SYNCS. CI runs it on every build, for sm_90a and sm_80.

    python benchmarks/sass_check.py [--arch sm_90a] [--check] [--markdown] [files...]

cuobjdump comes from $CUOBJDUMP, the PATH, $CUDA_HOME/bin, or the copy that ships with triton (a
dependency of torch's CUDA wheels); pip's nvidia-cuda-cuobjdump provides one too.
"""
import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# sm_80 / sm_90 per-SM limits for the occupancy estimate.
REGS_PER_SM = 65536
MAX_WARPS_PER_SM = {"sm_80": 64, "sm_90": 64, "sm_90a": 64}
MAX_BLOCKS_PER_SM = 32
SMEM_PER_SM = {"sm_80": 164 * 1024, "sm_90": 228 * 1024, "sm_90a": 228 * 1024}
SMEM_RESERVED_PER_BLOCK = 1024

COUNTED = ["LDGSTS", "LDSM", "HMMA.16816", "HMMA.1688", "HGMMA", "UTMALDG", "SYNCS", "LDG.128", "STG.128", "LDS.128", "STS.128", "LDL", "STL",
           "FFMA", "DFMA"]


def find_cuobjdump():
    candidates = [os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump")]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", "cuobjdump"))
    for base in sys.path:
        candidates.append(os.path.join(base, "triton", "backends", "nvidia", "bin", "cuobjdump"))
        candidates.extend(glob.glob(os.path.join(base, "nvidia", "*", "bin", "cuobjdump")))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def tile_table():
    """The tensor-core tiles of csrc/cuda/gemm.h: index -> (threads, dynamic shared memory bytes)."""
    text = open(os.path.join(ROOT, "csrc", "cuda", "gemm.h")).read()
    body = text[text.index("#define TORCHEXT_TC_TILES(X)"):]
    tiles = {}
    for m in re.finditer(r"X\((\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)", body.split("\n\n")[0]):
        i, bm, bn, kc, wm, wn, stages, _ = map(int, m.groups())
        tiles[i] = (32 * wm * wn, stages * (bm + bn) * kc * 16)
    return tiles


def wgmma_launch():
    """(threads, dynamic shared memory bytes) of the Hopper GEMM, from csrc/cuda/gemm_wgmma.cuh."""
    text = "".join(open(os.path.join(ROOT, "csrc", "cuda", f)).read() for f in ("gemm.h", "gemm_wgmma.cuh"))
    c = {k: int(v) for k, v in re.findall(r"\b(k\w+) = (\d+)", text)}
    c.update(kBM=c["kWgmmaTileM"], kBN=c["kWgmmaTileN"], kBK=c["kWgmmaSlice"])
    return c["kThreads"], c["kStages"] * (c["kBM"] + c["kBN"]) * c["kBK"] * 2 + 1024


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def resource_usage(tool, path, arch):
    text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    usage = {}
    current_arch = arch if path.endswith(".cubin") else None  # a lone cubin has no "arch =" header
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*arch = (sm_\d+a?)", line)
        if m:
            current_arch = m.group(1)
        m = re.match(r"\s*Function (\S+):", line)
        if m and current_arch == arch:
            fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", lines[i + 1]))
            usage[m.group(1)] = {k: int(v) for k, v in fields.items()}
    return usage


def sass_counts(tool, path, arch):
    cmd = [tool, "-sass", path] if path.endswith(".cubin") else [tool, "-sass", "-arch", arch, path]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    counts, name = collections.defaultdict(collections.Counter), None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and name:
            op = m.group(1)
            base = op.split(".")[0]
            for key in COUNTED:
                k_base, _, k_width = key.partition(".")
                if base != k_base:
                    continue
                if not k_width or ("." + k_width) in op[len(base):] + ".":
                    counts[name][key] += 1
    return counts


# Threads per block of the kernels whose launches fix them (csrc/cuda): the multi-tensor engine and
# the column sums 512, the tensor-core GEMMs from their tile, the rest 256 (vectorized.cuh's kThreads).
BLOCK_THREADS = [("multi_tensor_apply_kernel", 512), ("column_sum_kernel", 512), ("gemm_simt_kernel", 256)]


def launch_config(pretty, tiles):
    """(threads, dynamic shared memory) of a kernel's launches, where the sources fix them."""
    m = re.search(r"gemm_tc_kernel<[^,]+, (\d+),", pretty)
    if m:
        return tiles.get(int(m.group(1)), (None, 0))
    if "gemm_wgmma_kernel<" in pretty:
        return wgmma_launch()
    for name, threads in BLOCK_THREADS:
        if name in pretty:
            return (threads, 0)
    return (256, 0) if "kernel" in pretty else (None, 0)


def occupancy(arch, regs, static_smem, threads, dynamic_smem):
    if not threads:
        return None
    warps = (threads + 31) // 32
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
    by_regs = REGS_PER_SM // (regs_per_warp * warps)
    by_warps = MAX_WARPS_PER_SM[arch] // warps
    smem = static_smem + dynamic_smem + SMEM_RESERVED_PER_BLOCK
    by_smem = SMEM_PER_SM[arch] // smem
    blocks = max(0, min(by_regs, by_warps, by_smem, MAX_BLOCKS_PER_SM))
    return blocks, blocks * warps / MAX_WARPS_PER_SM[arch]


def short(pretty):
    pretty = re.sub(r"\(torchext::cuda::(?:tc::)?Major\)0", "K", pretty)
    pretty = re.sub(r"\(torchext::cuda::(?:tc::)?Major\)1", "MN", pretty)
    pretty = re.sub(r"\((?:[^()]|\([^()]*\))*\)$", "", pretty)  # the parameter list
    for a, b in (("void ", ""), ("torchext::cuda::", ""), ("(anonymous namespace)::", ""), ("c10::BFloat16", "bf16"),
                 ("c10::Half", "f16")):
        pretty = pretty.replace(a, b)
    return pretty


def problems(pretty, use, counts, arch):
    out = []
    if use.get("STACK", 0) or use.get("LOCAL", 0) or counts["LDL"] or counts["STL"]:
        out.append("spills or local memory (stack %d, local %d, LDL %d, STL %d)" % (
            use.get("STACK", 0), use.get("LOCAL", 0), counts["LDL"], counts["STL"]))
    if "gemm_tc_kernel" in pretty:
        mma = "HMMA.1688" if "<float" in pretty else "HMMA.16816"
        for op in ("LDGSTS", "LDSM", mma):
            if counts[op] == 0:
                out.append("no %s in a tensor-core GEMM" % op)
    if "gemm_wgmma_kernel<" in pretty and arch == "sm_90a":  # elsewhere its body is a trap
        for op in ("HGMMA", "UTMALDG", "SYNCS"):
            if counts[op] == 0:
                out.append("no %s in the Hopper GEMM" % op)
    if "gemm_simt_kernel<float" in pretty and counts["LDS.128"] == 0:
        out.append("no LDS.128 in the float SIMT GEMM")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", help="extension .so or .cubin files (default: the built torchext/_C*.so)")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--check", action="store_true", help="fail on spills, local memory or missing instructions")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--filter", default="", help="only kernels whose name contains this")
    args = parser.parse_args()
    tool = find_cuobjdump()
    if tool is None:
        sys.exit("sass_check: no cuobjdump found (set CUOBJDUMP, or pip install nvidia-cuda-cuobjdump)")
    files = args.files or glob.glob(os.path.join(ROOT, "torchext", "_C*.so"))
    if not files:
        sys.exit("sass_check: no extension built (torchext/_C*.so) and no file given")
    tiles = tile_table()
    rows, failures = [], []
    for path in files:
        usage = resource_usage(tool, path, args.arch)
        if not usage:
            sys.exit("sass_check: %s has no %s code (was it built with CUDA for that arch?)" % (path, args.arch))
        counts = sass_counts(tool, path, args.arch)
        pretty = demangle(sorted(usage))
        for name in sorted(usage, key=lambda n: pretty[n]):
            p = pretty[name]
            if args.filter and args.filter not in p:
                continue
            use, cnt = usage[name], counts.get(name, collections.Counter())
            threads, dyn = launch_config(p, tiles)
            occ = occupancy(args.arch, use.get("REG", 0), use.get("SHARED", 0), threads, dyn)
            rows.append((short(p), use.get("REG", 0), use.get("STACK", 0) + use.get("LOCAL", 0), use.get("SHARED", 0),
                         threads, dyn, occ, cnt))
            failures += ["%s: %s" % (short(p), msg) for msg in problems(p, use, cnt, args.arch)]
    header = ["kernel", "regs", "stack+local", "static smem", "threads", "dyn smem", "CTAs/SM (occupancy)"] + COUNTED
    fmt_occ = lambda o: "-" if o is None else "%d (%.0f%%)" % (o[0], 100 * o[1])
    table = [[r[0], r[1], r[2], r[3], r[4] or "-", r[5], fmt_occ(r[6])] + [r[7][k] for k in COUNTED] for r in rows]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in table:
            print("| " + " | ".join(str(c) for c in row) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
        for row in [header] + table:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if failures:
        print("\nproblems:\n  " + "\n  ".join(failures))
        if args.check:
            sys.exit(1)
    elif args.check:
        print("\nsass_check: %d kernels for %s: no spills or local memory, the GEMMs use the instructions meant"
              % (len(rows), args.arch))


if __name__ == "__main__":
    main()
