"""ReLU and MSE loss: torchext against torch, forward and forward+backward, side by side.

Sizes run from the two-layer tutorial's activations (64x100, 64x10) up to 2^24 elements on CPU
and 2^28 on CUDA. Every row gives % of the copy bandwidth measured in the same run, counting the
bytes a single-pass implementation must move per element (element size times):
  relu     fwd      2   read x, write y
  relu     fwd+bwd  5   + read grad_y and y, write grad_x
  mse_loss fwd      2   read input and target (reduction sum: the output is one scalar)
  mse_loss fwd+bwd  5   read input and target, write diff; read diff, write grad_input
float32 runs at every size, bfloat16 and float16 at one large size. At the tutorial sizes the
data sits in cache and per-call overhead dominates, so the % column only means something for the
large sizes; on CPU a 2^24-element output also pays the kernel's first-touch page faults (torch's
kernels as much as ours), which the copy ceiling, into a reused buffer, does not.

    python benchmarks/bench_relu_mse.py [--device cpu|cuda|all] [--quick] [--json PATH]
"""
import torch

import harness
import torchext

ELEMENTS_MOVED = {("relu", "fwd"): 2, ("relu", "fwd+bwd"): 5, ("mse_loss", "fwd"): 2, ("mse_loss", "fwd+bwd"): 5}


def cases_for(device, quick):
    """(shape, dtype) pairs: float32 at every size, the half types at one large size."""
    shapes = shapes_for(device, quick)
    half_shape = shapes[-1] if quick else shapes[-2]
    return [(s, torch.float32) for s in shapes] + [(half_shape, dt) for dt in (torch.bfloat16, torch.float16)]


def shapes_for(device, quick):
    small = [(64, 100), (64, 10)]
    if device == "cpu":
        return small + ([(512, 512)] if quick else [(1024, 1024), (4096, 4096)])  # up to 2^24
    return small + ([(4096, 4096)] if quick else [(1024, 1024), (4096, 4096), (16384, 16384)])  # up to 2^28


def relu_cases(x, g):
    def fwd(fn):
        return lambda: fn(x)

    def fwd_bwd(fn):
        xg = x.detach().clone().requires_grad_()

        def run():
            xg.grad = None
            fn(xg).backward(g)

        return run

    return {"fwd": (fwd(torch.relu), fwd(torchext.functional.relu)),
            "fwd+bwd": (fwd_bwd(torch.relu), fwd_bwd(torchext.functional.relu))}


def mse_cases(x, t):
    ref = torch.nn.functional.mse_loss
    ours = torchext.functional.mse_loss

    def fwd(fn):
        return lambda: fn(x, t, reduction="sum")

    def fwd_bwd(fn):
        xg = x.detach().clone().requires_grad_()

        def run():
            xg.grad = None
            fn(xg, t, reduction="sum").backward()

        return run

    return {"fwd": (fwd(ref), fwd(ours)), "fwd+bwd": (fwd_bwd(ref), fwd_bwd(ours))}


def main():
    args = harness.devices_from_args(description=__doc__)
    rows = []
    for device in args.devices:
        bandwidth = harness.copy_bandwidth_gbps(device)
        min_run_time = 0.1 if args.quick else 0.3
        for shape, dtype in cases_for(device, args.quick):
            x = torch.randn(shape, device=device, dtype=dtype)
            g = torch.randn(shape, device=device, dtype=dtype)
            t = torch.randn(shape, device=device, dtype=dtype)
            for op, cases in (("relu", relu_cases(x, g)), ("mse_loss", mse_cases(x, t))):
                for mode, (torch_fn, ours_fn) in cases.items():
                    torch_t = harness.bench(torch_fn, device=device, min_run_time=min_run_time)
                    ours_t = harness.bench(ours_fn, device=device, min_run_time=min_run_time)
                    nbytes = ELEMENTS_MOVED[(op, mode)] * x.numel() * x.element_size()
                    pct = 100.0 * nbytes / (ours_t.median_ms * 1e-3) / 1e9 / bandwidth
                    rows.append(harness.row(op, device, dtype, "x".join(map(str, shape)), mode, torch_t, ours_t,
                                            pct_ceiling=pct, ceiling="copy BW"))
            del x, g, t
    harness.report(rows, "ReLU and MSE loss (reduction='sum'), torchext vs torch", json_path=args.json)


if __name__ == "__main__":
    main()
