"""End-to-end training step: forward, MSE loss, backward, optimizer step.

Models: the tutorial two-layer net (64x1000 -> 100 -> 10, fp32) and a wider MLP (4 x Linear of
width W with ReLU between; W=4096 in bf16 on CUDA, W=1024 in fp32 on CPU). Each is timed with
torch modules + torch.optim.Adam(fused when available) and with torchext modules + torchext Adam,
side by side; on CUDA also torchext with the whole step captured in a CUDA graph.

Two torch.func workloads on the tutorial net follow: per-sample gradients (vmap of grad over a
functional_call, one sample per entry) and an ensemble of 8 models applied to one minibatch
(stack_module_state + vmap).

    python benchmarks/bench_e2e.py [--device cpu|cuda|all] [--quick] [--json out.json]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import bench, devices_from_args, gemm_tflops, report, row  # noqa: E402

import torchext  # noqa: E402


def mlp(nn, sizes, device, dtype):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype)


def make_step(lib, sizes, batch, device, dtype, capturable=False):
    torch.manual_seed(0)
    nn, optim = (torch.nn, torch.optim) if lib == "torch" else (torchext.nn, torchext.optim)
    model = mlp(nn, sizes, device, dtype)
    x = torch.randn(batch, sizes[0], device=device, dtype=dtype)
    y = torch.randn(batch, sizes[-1], device=device, dtype=dtype)
    loss_fn = nn.MSELoss()
    kwargs = {"lr": 1e-4}
    if lib == "torch" and device == "cuda":
        kwargs["fused"] = True
    if capturable:
        kwargs["capturable"] = True
    opt = optim.Adam(model.parameters(), **kwargs)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def graphed(step):
    # Warm up on a side stream (initialises optimizer state), then capture one whole step.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    return g.replay


def make_per_sample_grads(lib, sizes, batch, device, dtype):
    torch.manual_seed(0)
    nn = torch.nn if lib == "torch" else torchext.nn
    model = mlp(nn, sizes, device, dtype)
    loss_fn = nn.MSELoss(reduction="sum")
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(batch, sizes[0], device=device, dtype=dtype)
    y = torch.randn(batch, sizes[-1], device=device, dtype=dtype)

    def loss(p, xi, yi):
        return loss_fn(torch.func.functional_call(model, p, (xi[None],)), yi[None])
    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    return lambda: grads(params, x, y)


def make_ensemble(lib, sizes, batch, device, dtype, models=8):
    torch.manual_seed(0)
    nn = torch.nn if lib == "torch" else torchext.nn
    members = [mlp(nn, sizes, device, dtype) for _ in range(models)]
    params, buffers = torch.func.stack_module_state(members)
    x = torch.randn(batch, sizes[0], device=device, dtype=dtype)
    run = torch.func.vmap(lambda p, b, xx: torch.func.functional_call(members[0], (p, b), (xx,)),
                          in_dims=(0, 0, None))
    return lambda: run(params, buffers, x)


def flops_per_step(sizes, batch):
    # forward 2*M*N*K per layer, backward twice that (dX and dW)
    return sum(6 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def main():
    args = devices_from_args(description=__doc__)
    rows = []
    for device in args.devices:
        configs = [("two-layer 64x1000-100-10", [1000, 100, 10], 64, torch.float32)]
        if device == "cuda":
            w = 1024 if args.quick else 4096
            configs.append(("MLP 4x%d" % w, [w] * 5, w, torch.bfloat16))
        else:
            w = 256 if args.quick else 1024
            configs.append(("MLP 4x%d" % w, [w] * 5, 256, torch.float32))
        for name, sizes, batch, dtype in configs:
            t_torch = bench(make_step("torch", sizes, batch, device, dtype), device=device)
            t_ours = bench(make_step("torchext", sizes, batch, device, dtype), device=device)
            ceiling = gemm_tflops(device, dtype)
            achieved = flops_per_step(sizes, batch) / (t_ours.median_ms * 1e-3) / 1e12
            rows.append(row(name, device, dtype, "batch %d" % batch, "train step", t_torch, t_ours,
                            100 * achieved / ceiling, "of mm TFLOP/s"))
            if device == "cuda":
                t_graph = bench(graphed(make_step("torchext", sizes, batch, device, dtype, capturable=True)),
                                device=device)
                achieved = flops_per_step(sizes, batch) / (t_graph.median_ms * 1e-3) / 1e12
                rows.append(row(name, device, dtype, "batch %d" % batch, "train step, CUDA graph", t_torch, t_graph,
                                100 * achieved / ceiling, "of mm TFLOP/s"))
        sizes, batch, dtype = [1000, 100, 10], 64, torch.float32
        ceiling = gemm_tflops(device, dtype)
        for name, make, flops in (("per-sample grads 64x1000-100-10", make_per_sample_grads,
                                   flops_per_step(sizes, batch)),
                                  ("ensemble of 8, 64x1000-100-10", make_ensemble,
                                   8 * flops_per_step(sizes, batch) / 3)):  # forward only
            t_torch = bench(make("torch", sizes, batch, device, dtype), device=device)
            t_ours = bench(make("torchext", sizes, batch, device, dtype), device=device)
            achieved = flops / (t_ours.median_ms * 1e-3) / 1e12
            rows.append(row(name, device, dtype, "batch %d" % batch, "torch.func", t_torch, t_ours,
                            100 * achieved / ceiling, "of mm TFLOP/s"))
    report(rows, "End-to-end training step (torch eager vs torchext)", args.json)


if __name__ == "__main__":
    main()
