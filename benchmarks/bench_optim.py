"""torchext.optim Adam / SGD steps against torch.optim (for-loop, foreach and fused) in one run.

Optimizer steps are memory bound, so each row reports torchext's effective bandwidth as a share of
a bandwidth measured in the same run: device-to-device copy on CUDA, and on CPU an in-place
`a += b`, which like an optimizer step writes back lines it has just read (a CPU copy also pays a
read of every destination line, so copy bandwidth would understate the ceiling). Bytes per fp32
param and step: Adam 28 (reads p, g, m, v; writes p, m, v), SGD with momentum 20 (reads p, g, buf;
writes p, buf); half the bytes for float16 / bfloat16.

The low-memory modes of torchext's AdamW (stochastic rounding, Kahan summation, int8 state; see
bench_lowmem.py for their convergence and bytes) are timed against torch's fused AdamW on the
same params, on the first size of each device; their bytes per param and step: bf16 with SR 14
(p, g, m, v read; p, m, v written), with Kahan 18 (and the compensation), bf16 with int8 state 10,
fp32 with int8 state 16 (per-block scales add under 1%).

    python benchmarks/bench_optim.py [--device cpu|cuda|all] [--quick] [--json PATH]
"""
import gc

import torch

from harness import bench, copy_bandwidth_gbps, devices_from_args, inplace_bandwidth_gbps, report, row

import torchext

BYTES_PER_PARAM = {"Adam": 28, "SGD": 20}  # float32; scaled by element size / 4
# Half-type rows are compared against torch's fused kernels only (the fastest torch variant).
HALF_DTYPES = {"cpu": [torch.bfloat16, torch.float16], "cuda": [torch.bfloat16]}
KWARGS = {"Adam": dict(lr=1e-3), "SGD": dict(lr=1e-3, momentum=0.9)}
TORCH_MODES = [("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True)), ("fused", dict(fused=True))]
# (mode, param dtype, AdamW options, bytes per param and step)
LOWMEM_MODES = [("stochastic rounding", torch.bfloat16, dict(stochastic_rounding=True), 14),
                ("Kahan summation", torch.bfloat16, dict(kahan_summation=True), 18),
                ("SR + int8 state", torch.bfloat16, dict(stochastic_rounding=True, state_dtype="int8"), 10),
                ("int8 state", torch.float32, dict(state_dtype="int8"), 16)]


def gpt2_small_shapes():
    """The parameter list of GPT-2 small (124M parameters, 148 tensors)."""
    d, v, ctx, layers = 768, 50257, 1024, 12
    shapes = [(v, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def cases(device, quick):
    if device == "cpu":
        count = 2 if quick else 10
        yield "%d x 1M" % count, [(1 << 20,)] * count
        if not quick:  # per-tensor overhead (Python and launch) against memory traffic
            yield "2000 x 4K", [(4096,)] * 2000
        return
    if quick:
        yield "1 x 10M", [(10_000_000,)]
        yield "200 x 4K", [(4096,)] * 200
        return
    yield "1 x 100M", [(100_000_000,)]
    yield "GPT-2 small (148 tensors, 124M)", gpt2_small_shapes()
    yield "2000 x 4K", [(4096,)] * 2000


def make_params(shapes, device, dtype=torch.float32):
    params = [torch.nn.Parameter(torch.randn(s, device=device, dtype=dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def time_step(opt_cls, kw, shapes, device, dtype=torch.float32):
    params = make_params(shapes, device, dtype)
    opt = opt_cls(params, **kw)
    opt.step()  # creates the state outside the timed region
    t = bench(opt.step, device=device)
    del opt, params
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return t


def main():
    args = devices_from_args(description=__doc__)
    rows = []
    for device in args.devices:
        if device == "cpu":
            bw, ceiling = inplace_bandwidth_gbps(device), "in-place BW"
        else:
            bw, ceiling = copy_bandwidth_gbps(device), "copy BW"
        for first, (label, shapes) in enumerate(cases(device, args.quick)):
            numel = sum(torch.Size(s).numel() for s in shapes)
            runs = [(torch.float32, TORCH_MODES)]
            if not args.quick:
                runs += [(dt, TORCH_MODES[-1:]) for dt in HALF_DTYPES.get(device, [])]
            for dtype, modes in runs:
                scale = torch.empty((), dtype=dtype).element_size() / 4
                for name in ("Adam", "SGD"):
                    kw = KWARGS[name]
                    for mode, extra in modes:
                        # Timed back to back with each torch variant, so a shared machine's load
                        # drift does not favour either side.
                        ours = time_step(getattr(torchext.optim, name), kw, shapes, device, dtype)
                        ref = time_step(getattr(torch.optim, name), dict(kw, **extra), shapes, device, dtype)
                        gbps = BYTES_PER_PARAM[name] * scale * numel / (ours.median_ms * 1e-3) / 1e9
                        rows.append(row(name, device, dtype, label, "vs torch " + mode, ref, ours,
                                        pct_ceiling=100 * gbps / bw, ceiling=ceiling))
            if first == 0:
                for mode, dtype, kw, nbytes in LOWMEM_MODES:
                    ours = time_step(torchext.optim.AdamW, dict(lr=1e-3, **kw), shapes, device, dtype)
                    ref = time_step(torch.optim.AdamW, dict(lr=1e-3, fused=True), shapes, device, dtype)
                    gbps = nbytes * numel / (ours.median_ms * 1e-3) / 1e9
                    rows.append(row("AdamW " + mode, device, dtype, label, "vs torch fused", ref, ours,
                                    pct_ceiling=100 * gbps / bw, ceiling=ceiling))
    report(rows, "torchext.optim step vs torch.optim (ms per step)", args.json)


if __name__ == "__main__":
    main()
