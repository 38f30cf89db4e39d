"""Low-memory optimizer state: convergence, bytes per param and step time of torchext's
stochastic_rounding / kahan_summation / state_dtype modes against torch's AdamW.

Convergence: a 64->256->1 ReLU MLP on noisy regression targets, AdamW lr=1e-4, final MSE per
mode; and the tutorial two-layer net (examples/two_layer_net.py: 64 samples, 1000->100->10,
torchext.nn modules, MSELoss(reduction="sum"), random targets) with AdamW lr=1e-4, final loss
after 200 steps (fp32 is then at about 1 from about 650 at the start; past about 300 steps every
bf16 mode, master weights included, stops near 3e-3, where bf16 params and activations cannot
represent a closer fit, while fp32 goes on to 1e-6 by step 500). Bytes: optimizer state + master copies per param. Time: one step over a 4M-
param list, median of a few runs. CPU only here (the CUDA kernels run through the emulation).
    PYTHONPATH=. python benchmarks/bench_lowmem.py [--steps 400] [--time-only]"""
import argparse
import statistics
import time

import torch

import torchext.nn as xnn
import torchext.optim as xo

MODES = [
    ("torch AdamW fp32", torch.float32, "torch", {}),
    ("torchext AdamW fp32", torch.float32, "x", {}),
    ("bf16 params, round-to-nearest", torch.bfloat16, "x", {}),
    ("bf16 + fp32 master weights", torch.bfloat16, "x", dict(master_weights=True)),
    ("bf16 + stochastic rounding", torch.bfloat16, "x", dict(stochastic_rounding=True)),
    ("bf16 + Kahan", torch.bfloat16, "x", dict(kahan_summation=True)),
    ("bf16 + SR + bf16 state", torch.bfloat16, "x", dict(stochastic_rounding=True, state_dtype=torch.bfloat16)),
    ("fp32 params + int8 state", torch.float32, "x", dict(state_dtype="int8")),
    ("bf16 + SR + int8 state", torch.bfloat16, "x", dict(stochastic_rounding=True, state_dtype="int8")),
]


def make_opt(kind, params, lr, kw):
    if kind == "torch":
        return torch.optim.AdamW(params, lr=lr)
    return xo.AdamW(params, lr=lr, **kw)


def converge(dtype, kind, kw, steps):
    torch.manual_seed(0)
    x = torch.randn(2048, 64)
    teacher = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    with torch.no_grad():
        y = teacher(x) + 0.01 * torch.randn(2048, 1)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)).to(dtype)
    opt = make_opt(kind, list(model.parameters()), 1e-4, kw)
    for i in range(steps):
        idx = torch.randint(0, 2048, (256,))
        loss = ((model(x[idx].to(dtype)).float() - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((model(x.to(dtype)).float() - y) ** 2).mean().item()


def converge_tutorial(dtype, kind, kw, steps):
    torch.manual_seed(0)
    x, y = torch.randn(64, 1000), torch.randn(64, 10)
    model = torch.nn.Sequential(xnn.Linear(1000, 100), xnn.ReLU(), xnn.Linear(100, 10)).to(dtype)
    loss_fn = xnn.MSELoss(reduction="sum")
    opt = make_opt(kind, list(model.parameters()), 1e-4, kw)
    for _ in range(steps):
        loss = loss_fn(model(x.to(dtype)).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return loss_fn(model(x.to(dtype)).float(), y).item()


def state_bytes(dtype, kind, kw, n=1 << 16):
    p = torch.nn.Parameter(torch.zeros(n, dtype=dtype))
    opt = make_opt(kind, [p], 1e-3, kw)
    p.grad = torch.zeros_like(p)
    opt.step()
    return sum(v.numel() * v.element_size() for v in opt.state[p].values()
               if isinstance(v, torch.Tensor) and v.dim() > 0) / n


def step_time(dtype, kind, kw, n=1 << 22, reps=5):
    params = [torch.nn.Parameter(torch.randn(n // 16, dtype=dtype)) for _ in range(16)]
    if kind == "torch":
        opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    else:
        opt = make_opt(kind, params, 1e-3, kw)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--tutorial-steps", type=int, default=200)
    ap.add_argument("--time-only", action="store_true", help="skip the convergence runs")
    args = ap.parse_args()
    print("threads: %d" % torch.get_num_threads())
    print("| mode | MLP final MSE (%d steps) | vs fp32 | two-layer net final loss (%d steps) | vs fp32 "
          "| state+master bytes/param | step ms (4M params) |" % (args.steps, args.tutorial_steps))
    print("|---|---|---|---|---|---|---|")
    ref = None
    for name, dtype, kind, kw in MODES:
        if args.time_only:
            mse = tut = float("nan")
        else:
            mse, tut = converge(dtype, kind, kw, args.steps), converge_tutorial(dtype, kind, kw, args.tutorial_steps)
        ref = (mse, tut) if ref is None else ref
        print("| %s | %.3g | %.2fx | %.4g | %.2fx | %.2f | %.1f |" % (
            name, mse, mse / ref[0], tut, tut / ref[1], state_bytes(dtype, kind, kw), step_time(dtype, kind, kw)),
            flush=True)


if __name__ == "__main__":
    main()
