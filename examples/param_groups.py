"""Changing the learning rate mid-training through optimizer.param_groups, and print(optimizer)."""
import torch

import torchext


def train(steps=300, switch_at=150, seed=0, quiet=False, nn=torchext.nn, optim=torchext.optim):
    torch.manual_seed(seed)
    x, y = torch.randn(64, 1000), torch.randn(64, 10)
    model = torch.nn.Sequential(nn.Linear(1000, 100), nn.ReLU(), nn.Linear(100, 10))
    loss_fn = nn.MSELoss(reduction="sum")
    opt = optim.Adam(model.parameters(), lr=1e-4)
    if not quiet:
        print(opt)
    losses = []
    for t in range(steps):
        if t == switch_at:
            opt.param_groups[0]["lr"] = 1e-3  # takes effect from this step on
            if not quiet:
                print("step %d: lr -> %g" % (t, opt.param_groups[0]["lr"]))
        loss = loss_fn(model(x), y)
        losses.append(loss.item())
        if not quiet and (t + 1) % 100 == 0:
            print("step %4d  loss %.4f" % (t + 1, losses[-1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt, losses


if __name__ == "__main__":
    train()
