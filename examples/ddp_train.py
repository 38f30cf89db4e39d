"""Data-parallel training of the two-layer net with torchext modules and optimizer.

    python examples/ddp_train.py --backend gloo --world-size 2      # CPU processes on loopback
    python examples/ddp_train.py --backend nccl --world-size 2      # one GPU per process

Each rank trains on its slice of one batch; DistributedDataParallel averages the gradients, so
with a mean-reduced loss the result equals single-process training on the whole batch, which
the script also runs and compares against (--check).
"""
import argparse
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchext

N, D_IN, H, D_OUT = 64, 1000, 100, 10


def make(device, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(N, D_IN)
    y = torch.randn(N, D_OUT)
    model = torch.nn.Sequential(torchext.nn.Linear(D_IN, H), torchext.nn.ReLU(), torchext.nn.Linear(H, D_OUT))
    return model.to(device), x.to(device), y.to(device)


def train(model, x, y, steps, lr):
    loss_fn = torchext.nn.MSELoss()
    opt = torchext.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def worker(rank, world_size, backend, port, steps, lr, out_path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model, x, y = make(device)
        shard = N // world_size
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
        # Every rank sees a mean over its own slice; DDP averages the gradients over ranks.
        train(ddp, x[rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard], steps, lr)
        if rank == 0:
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out_path)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(backend="gloo", world_size=2, steps=50, lr=1e-3, out_path="ddp_result.pt"):
    if N % world_size:
        raise ValueError("world_size must divide the batch size %d" % N)
    mp.spawn(worker, args=(world_size, backend, free_port(), steps, lr, out_path), nprocs=world_size, join=True)
    return torch.load(out_path)


def run_single(device="cpu", steps=50, lr=1e-3):
    model, x, y = make(device)
    train(model, x, y, steps, lr)
    return {k: v.cpu() for k, v in model.state_dict().items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", default="ddp_result.pt")
    p.add_argument("--check", action="store_true", help="compare with single-process training on the whole batch")
    args = p.parse_args()
    distributed = run_distributed(args.backend, args.world_size, args.steps, out_path=args.out)
    if args.check:
        single = run_single("cuda" if args.backend == "nccl" else "cpu", args.steps)
        worst = max((distributed[k] - single[k]).abs().max().item() for k in single)
        print("largest parameter difference, DDP vs single process: %.3g" % worst)
        sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
