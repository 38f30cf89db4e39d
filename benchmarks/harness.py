"""Shared benchmark harness: timing, measured ceilings and reporting for every bench_*.py script.

Timing uses torch.utils.benchmark (warm-up, CUDA synchronisation, adaptive repeat count) and
reports the median and the 20th/80th percentiles. Ceilings are measured in the same run, so each
row can say how close it is to what the machine can do:
  * copy bandwidth: a large tensor copy (bytes read + bytes written per second), the roofline of
    every memory-bound kernel (ReLU, MSE, optimizer steps);
  * in-place bandwidth: a large `a += b` (reads a and b, writes a where it was read). Optimizer
    steps update in place like this; on CPUs a copy's writes also cost a read of the destination
    line (write-allocate), so the copy ceiling understates what in-place updates can reach;
  * GEMM throughput: torch.mm in the same dtype (MKL/oneDNN on CPU, cuBLAS on CUDA).
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass

import torch
import torch.utils.benchmark as tbench

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, _ROOT)


@dataclass
class Timing:
    median_ms: float
    q20_ms: float
    q80_ms: float


def bench(fn, device="cpu", min_run_time=0.3):
    """Time fn() and return median / 20% / 80% quantiles in milliseconds."""
    if device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda"):
        torch.cuda.synchronize()
    fn()  # warm-up (also triggers lazy init and allocator growth)
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = sorted(m.times)

    def q(p):
        return times[min(len(times) - 1, int(p * len(times)))] * 1e3

    return Timing(median_ms=m.median * 1e3, q20_ms=q(0.2), q80_ms=q(0.8))


_CEILINGS = {}


def copy_bandwidth_gbps(device="cpu"):
    """Measured copy bandwidth in GB/s, counting bytes read plus bytes written.

    The buffers (256 MiB on CPU, 1 GiB on CUDA) are far larger than any cache, so this is DRAM/HBM
    bandwidth, the ceiling of a memory-bound kernel.
    """
    key = ("copy", str(device))
    if key not in _CEILINGS:
        n = (1 << 26) if str(device) == "cpu" else (1 << 28)
        src = torch.rand(n, device=device)
        dst = torch.empty_like(src)
        t = bench(lambda: dst.copy_(src), device=device)
        _CEILINGS[key] = 2 * src.numel() * src.element_size() / (t.median_ms * 1e-3) / 1e9
    return _CEILINGS[key]


def inplace_bandwidth_gbps(device="cpu"):
    """Measured bandwidth of `a += b` in GB/s (2 reads + 1 in-place write per element), buffers as
    large as copy_bandwidth_gbps's."""
    key = ("in-place", str(device))
    if key not in _CEILINGS:
        n = (1 << 26) if str(device) == "cpu" else (1 << 28)
        a = torch.rand(n, device=device)
        b = torch.rand(n, device=device)
        t = bench(lambda: a.add_(b, alpha=1e-30), device=device)
        _CEILINGS[key] = 3 * a.numel() * a.element_size() / (t.median_ms * 1e-3) / 1e9
    return _CEILINGS[key]


def gemm_tflops(device="cpu", dtype=torch.float32, n=2048):
    """Measured torch.mm throughput (TFLOP/s) for n x n x n in dtype: the vendor-BLAS ceiling."""
    key = ("gemm", str(device), dtype, n)
    if key not in _CEILINGS:
        if dtype.is_floating_point:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
        else:  # integer GEMMs (CPU): small values, the product wraps around in the type anyway
            a = torch.randint(0, 100, (n, n), device=device, dtype=dtype)
            b = torch.randint(0, 100, (n, n), device=device, dtype=dtype)
        t = bench(lambda: torch.mm(a, b), device=device)
        _CEILINGS[key] = 2 * n**3 / (t.median_ms * 1e-3) / 1e12
    return _CEILINGS[key]


def row(op, device, dtype, shape, mode, torch_t, ours_t, pct_ceiling=None, ceiling=""):
    """One result row; speedup > 1 means torchext is faster."""
    return {
        "op": op, "device": str(device), "dtype": str(dtype).replace("torch.", ""), "shape": str(shape),
        "mode": mode, "torch_ms": torch_t.median_ms, "torchext_ms": ours_t.median_ms,
        "torchext_q20_ms": ours_t.q20_ms, "torchext_q80_ms": ours_t.q80_ms,
        "speedup": torch_t.median_ms / ours_t.median_ms, "pct_ceiling": pct_ceiling, "ceiling": ceiling,
    }


def markdown_table(rows):
    head = "| op | device | dtype | shape | mode | torch ms | torchext ms | speed-up | % of ceiling |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        pct = "-" if r.get("pct_ceiling") is None else "%.0f%% %s" % (r["pct_ceiling"], r.get("ceiling", ""))
        lines.append("| %s | %s | %s | %s | %s | %.4f | %.4f | %.2fx | %s |" % (
            r["op"], r["device"], r["dtype"], r["shape"], r["mode"], r["torch_ms"], r["torchext_ms"],
            r["speedup"], pct))
    return "\n".join(lines)


def report(rows, title, json_path=None):
    """Print rows as a Markdown table (last, so it is what a reader sees) and optionally save JSON."""
    meta = environment()
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump({"title": title, "environment": meta, "ceilings": ceilings_summary(), "rows": rows}, f,
                      indent=1, default=str)
    print()
    print("### %s" % title)
    print("%s; ceilings: %s" % (", ".join("%s %s" % kv for kv in meta.items()), ceilings_summary() or "none"))
    print()
    print(markdown_table(rows))


def ceilings_summary():
    parts = []
    for key, value in _CEILINGS.items():
        if key[0] in ("copy", "in-place"):
            parts.append("%s %s %.1f GB/s" % (key[0], key[1], value))
        else:
            parts.append("mm %s %s n=%d %.2f TFLOP/s" % (key[1], str(key[2]).replace("torch.", ""), key[3], value))
    return ", ".join(parts)


def environment():
    info = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import torchext
        info["torchext"] = torchext.__version__
        info["cpu_simd"] = torchext._C.cpu_capability()
    except ImportError:
        pass
    return info


def devices_from_args(argv=None, description=""):
    """Common CLI: --device cpu|cuda|all (default all available), --quick, --json PATH."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--quick", action="store_true", help="fewer, smaller sizes (smoke test)")
    p.add_argument("--json", default=None, help="write results as JSON to this path")
    args = p.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device: skipping the CUDA half", file=sys.stderr)
        devices.remove("cuda")
    args.devices = devices
    return args
