"""Sharded data-parallel training (FSDP2) of the two-layer net with torchext modules and optimizer,
optionally with tensor parallelism, and distributed checkpoints.

    torchrun --nproc-per-node 2 examples/fsdp_train.py                  # FSDP2 over 2 CPU processes (gloo)
    torchrun --nproc-per-node 2 examples/fsdp_train.py --tp 2           # tensor parallel over the 2
    torchrun --nproc-per-node 4 examples/fsdp_train.py --tp 2           # 2-D: FSDP over 2 x TP over 2
    torchrun --nproc-per-node 2 examples/fsdp_train.py --backend nccl   # one GPU per process

The ranks form a mesh of (world size / tp) data-parallel groups by tp tensor-parallel ranks. The
first Linear is split by output features (ColwiseParallel), the second by input features
(RowwiseParallel); fully_shard then shards every param over the data-parallel dim. Each
data-parallel group trains on its slice of one batch with a mean loss, so the result equals
single-process training on the whole batch, which --check runs on rank 0 and compares against.
--checkpoint DIR resumes from a torch.distributed.checkpoint checkpoint in DIR, if there is one,
and saves one there at the end (model, optimizer and the step count); a checkpoint written at one
world size or tp loads at another.
"""
import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import torchext

N, D_IN, H, D_OUT = 64, 1000, 100, 10


def make(device, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(N, D_IN)
    y = torch.randn(N, D_OUT)
    model = torch.nn.Sequential(torchext.nn.Linear(D_IN, H), torchext.nn.ReLU(), torchext.nn.Linear(H, D_OUT))
    return model.to(device), x.to(device), y.to(device)


def make_optimizer(name, params):
    if name == "adamw":
        return torchext.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    if name == "adam":
        return torchext.optim.Adam(params, lr=1e-3)
    if name == "sgd-momentum":
        return torchext.optim.SGD(params, lr=1e-2, momentum=0.9)
    raise ValueError("unknown optimizer %r" % name)


def train(model, opt, x, y, steps, log=None, first_step=0):
    loss_fn = torchext.nn.MSELoss()
    for t in range(first_step, first_step + steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and (t == first_step or (t + 1) % 10 == 0):
            log("step %4d  loss %.6f" % (t + 1, loss.item()))


def shard(model, mesh):
    """Tensor parallelism on mesh["tp"], then FSDP2 on mesh["dp"]."""
    if mesh["tp"].size() > 1:
        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh["dp"])
    return fully_shard(model, mesh=mesh["dp"])


def gathered(model):
    # full_tensor() is a collective: every rank calls it, in the same order.
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
            for k, v in model.named_parameters()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="nccl" if torch.cuda.is_available() else "gloo", choices=["gloo", "nccl"])
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (must divide the world size)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "sgd-momentum"])
    p.add_argument("--checkpoint", help="directory to resume from (if it holds a checkpoint) and save to")
    p.add_argument("--check", action="store_true", help="compare with single-process training on the whole batch")
    args = p.parse_args()

    dist.init_process_group(args.backend)  # rank, world size and rendezvous from torchrun's environment
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if args.backend == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if world_size % args.tp or N % (world_size // args.tp):
            raise SystemExit("--tp must divide the world size, and the data-parallel size the batch of %d" % N)
        mesh = init_device_mesh(device.type, (world_size // args.tp, args.tp), mesh_dim_names=("dp", "tp"))
        log = print if rank == 0 else None

        model, x, y = make(device)
        model = shard(model, mesh)
        opt = make_optimizer(args.optimizer, model.parameters())
        done = torch.zeros((), dtype=torch.int64)  # steps trained, saved with the checkpoint
        resume = args.checkpoint and os.path.exists(os.path.join(args.checkpoint, ".metadata"))
        if resume:
            model_sd, optim_sd = get_state_dict(model, opt)
            state = {"model": model_sd, "optim": optim_sd, "steps": done}
            dcp.load(state, checkpoint_id=args.checkpoint)
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
            if log:
                log("resumed from %s after %d steps" % (args.checkpoint, int(done)))

        # Each data-parallel group trains on its rows; the tensor-parallel ranks of a group share them.
        dp_rank, dp_size = mesh["dp"].get_local_rank(), mesh["dp"].size()
        rows = slice(dp_rank * N // dp_size, (dp_rank + 1) * N // dp_size)
        train(model, opt, x[rows], y[rows], args.steps, log, first_step=int(done))
        done += args.steps

        if args.checkpoint:
            model_sd, optim_sd = get_state_dict(model, opt)
            dcp.save({"model": model_sd, "optim": optim_sd, "steps": done},
                     storage_writer=dcp.FileSystemWriter(args.checkpoint, overwrite=True))
            if log:
                log("saved %s after %d steps" % (args.checkpoint, int(done)))

        params = gathered(model)
        worst = None
        if args.check and rank == 0:
            ref, x, y = make(device)
            train(ref, make_optimizer(args.optimizer, ref.parameters()), x, y, int(done))
            worst = max((params[k] - v.detach().cpu()).abs().max().item() for k, v in ref.named_parameters())
            print("largest parameter difference, %d x %d mesh vs single process: %.3g" % (
                world_size // args.tp, args.tp, worst))
    finally:
        dist.destroy_process_group()
    if worst is not None and worst >= 1e-4:
        sys.exit(1)


if __name__ == "__main__":
    main()
