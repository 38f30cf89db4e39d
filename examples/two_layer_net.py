"""The classic two-layer net (N=64, D_in=1000, H=100, D_out=10) trained with torchext drop-ins.

Fits random targets from random inputs with MSELoss(reduction="sum"), printing the loss every
100 steps. --optimizer picks Adam (lr=1e-4, default), SGD (lr=1e-4) or SGD with momentum 0.9.
`train(..., nn=torch.nn, optim=torch.optim)` runs the same flow on plain torch, which is how the
tests check that the two agree.
"""
import argparse

import torch

import torchext

N, D_IN, H, D_OUT = 64, 1000, 100, 10


def make_optimizer(optim, name, params):
    if name == "adam":
        return optim.Adam(params, lr=1e-4)
    if name == "sgd":
        return optim.SGD(params, lr=1e-4)
    if name == "sgd-momentum":
        return optim.SGD(params, lr=1e-4, momentum=0.9)
    raise ValueError("unknown optimizer %r" % name)


def train(steps=500, optimizer="adam", device="cpu", seed=0, log_every=100, quiet=False,
          nn=torchext.nn, optim=torchext.optim):
    torch.manual_seed(seed)
    x = torch.randn(N, D_IN, device=device)
    y = torch.randn(N, D_OUT, device=device)
    model = torch.nn.Sequential(nn.Linear(D_IN, H), nn.ReLU(), nn.Linear(H, D_OUT)).to(device)
    loss_fn = nn.MSELoss(reduction="sum")
    opt = make_optimizer(optim, optimizer, model.parameters())
    losses = []
    for t in range(steps):
        loss = loss_fn(model(x), y)
        losses.append(loss.item())
        if not quiet and (t == 0 or (t + 1) % log_every == 0):
            print("step %4d  loss %.6f" % (t + 1, losses[-1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, losses


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "sgd-momentum"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    print("torchext %s on %s (CPU SIMD %s), optimizer %s" % (
        torchext.__version__, args.device, torchext._C.cpu_capability(), args.optimizer))
    _, losses = train(args.steps, args.optimizer, args.device)
    print("loss went from %.3f to %.3f in %d steps" % (losses[0], losses[-1], args.steps))


if __name__ == "__main__":
    main()
