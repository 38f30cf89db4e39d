"""torchext Linear / LinearReLU vs torch.nn.Linear (-> ReLU), forward and forward+backward.

Each row: median time of both, the speed-up (torch / torchext) and torchext's achieved FLOP rate
as a % of torch.mm's measured rate in the same dtype on the same device (the vendor-BLAS ceiling).
FLOPs: forward 2*B*I*O, forward+backward 3x that (dX and dW GEMMs). On the CPU, integer Linear
(forward only) follows, against torch.nn.functional.linear in the same integer dtype.

    python benchmarks/bench_linear.py [--device cpu|cuda|all] [--quick] [--json PATH]
"""
import torch

from harness import bench, devices_from_args, gemm_tflops, report, row

import torchext

# (batch, in_features, out_features)
TUTORIAL = [(64, 1000, 100), (64, 100, 10)]
# Batch 1 to 16: inference on one sample (a matrix-vector product) and a few.
CPU_SHAPES = TUTORIAL + [(1, 1024, 1024), (4, 1024, 1024), (16, 1024, 1024), (8, 4096, 4096), (256, 1024, 1024),
                         (1024, 1024, 1024)]
CPU_QUICK = TUTORIAL + [(256, 512, 512)]
CUDA_SHAPES = TUTORIAL + [(1024, 1024, 1024), (64, 4096, 4096), (4096, 4096, 4096), (8192, 8192, 8192)]
CUDA_QUICK = TUTORIAL + [(1024, 1024, 1024), (4096, 4096, 4096)]


def _make(cls, i, o, device, dtype):
    torch.manual_seed(0)
    return cls(i, o, device=device, dtype=dtype)


def run_case(device, dtype, shape, fused, min_run_time):
    b, i, o = shape
    ref = _make(torch.nn.Linear, i, o, device, dtype)
    ours = _make(torchext.nn.LinearReLU if fused else torchext.nn.Linear, i, o, device, dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(b, i, device=device, dtype=dtype)
    xg = x.clone().requires_grad_()
    g = torch.randn(b, o, device=device, dtype=dtype)

    def torch_fwd():
        y = ref(x)
        return torch.relu(y) if fused else y

    def fwd_bwd(model_fn, params):
        def step():
            for p in params:
                p.grad = None
            xg.grad = None
            model_fn(xg).backward(g)
        return step

    torch_model = (lambda t: torch.relu(ref(t))) if fused else ref
    rows = []
    name = "Linear->ReLU" if fused else "Linear"
    flops = 2.0 * b * i * o
    ceiling = gemm_tflops(device, dtype)
    for mode, t_fn, o_fn, mult in (
        ("fwd", torch_fwd, lambda: ours(x), 1),
        ("fwd+bwd", fwd_bwd(torch_model, list(ref.parameters())), fwd_bwd(ours, list(ours.parameters())), 3),
    ):
        with torch.no_grad() if mode == "fwd" else torch.enable_grad():
            tt = bench(t_fn, device=device, min_run_time=min_run_time)
            to = bench(o_fn, device=device, min_run_time=min_run_time)
        achieved = mult * flops / (to.median_ms * 1e-3) / 1e12
        rows.append(row(name, device, dtype, "%dx%d->%d" % shape, mode, tt, to,
                        pct_ceiling=100.0 * achieved / ceiling, ceiling="mm"))
    return rows


# Integer Linear (CPU only, forward only: integers take no gradients), torchext.functional.linear
# against torch.nn.functional.linear, which computes it on the CPU too.
CPU_INTEGER_SHAPES = TUTORIAL + [(256, 512, 256), (1024, 1024, 1024)]
CPU_INTEGER_DTYPES = [torch.int32, torch.int64, torch.uint8]


def run_integer_case(dtype, shape, min_run_time):
    b, i, o = shape
    torch.manual_seed(0)
    x = torch.randint(0, 100, (b, i), dtype=dtype)
    w = torch.randint(0, 100, (o, i), dtype=dtype)
    bias = torch.randint(0, 100, (o,), dtype=dtype)
    tt = bench(lambda: torch.nn.functional.linear(x, w, bias), min_run_time=min_run_time)
    to = bench(lambda: torchext.functional.linear(x, w, bias), min_run_time=min_run_time)
    # FLOP here means integer multiply-adds counted as 2 operations, as for the float rows.
    achieved = 2.0 * b * i * o / (to.median_ms * 1e-3) / 1e12
    return [row("Linear", "cpu", dtype, "%dx%d->%d" % shape, "fwd", tt, to,
                pct_ceiling=100.0 * achieved / gemm_tflops("cpu", dtype), ceiling="mm")]


def main():
    args = devices_from_args(description=__doc__)
    rows = []
    for device in args.devices:
        if device == "cpu":
            shapes = CPU_QUICK if args.quick else CPU_SHAPES
            # bfloat16: what torch.autocast("cpu") runs Linear in
            dtypes = [torch.float32] if args.quick else [torch.float32, torch.bfloat16]
        else:
            shapes = CUDA_QUICK if args.quick else CUDA_SHAPES
            dtypes = [torch.float32, torch.bfloat16] if args.quick else [torch.float32, torch.float16, torch.bfloat16]
        for dtype in dtypes:
            for shape in shapes:
                for fused in (False, True):
                    rows += run_case(device, dtype, shape, fused, 0.1 if args.quick else 0.3)
        if device == "cpu":
            for dtype in CPU_INTEGER_DTYPES[:1] if args.quick else CPU_INTEGER_DTYPES:
                for shape in CPU_INTEGER_SHAPES[:2] if args.quick else CPU_INTEGER_SHAPES:
                    rows += run_integer_case(dtype, shape, 0.1 if args.quick else 0.3)
    report(rows, "Linear: torchext vs torch", json_path=args.json)


if __name__ == "__main__":
    main()
