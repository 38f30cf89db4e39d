"""User-defined modules built from torchext pieces.

TwoLayerNet: the two-layer net as an nn.Module subclass. DynamicNet: each forward pass reuses one
middle Linear a random 0-3 times (weight sharing: its gradient accumulates over the uses).
"""
import random

import torch

import torchext


class TwoLayerNet(torch.nn.Module):
    def __init__(self, d_in, h, d_out, nn=torchext.nn):
        super().__init__()
        self.linear1 = nn.Linear(d_in, h)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(h, d_out)

    def forward(self, x):
        return self.linear2(self.relu(self.linear1(x)))


class DynamicNet(torch.nn.Module):
    def __init__(self, d_in, h, d_out, nn=torchext.nn):
        super().__init__()
        self.input_linear = nn.Linear(d_in, h)
        self.middle_linear = nn.Linear(h, h)
        self.output_linear = nn.Linear(h, d_out)
        self.relu = nn.ReLU()

    def forward(self, x, repeats=None):
        repeats = random.randint(0, 3) if repeats is None else repeats
        h = self.relu(self.input_linear(x))
        for _ in range(repeats):
            h = self.relu(self.middle_linear(h))
        return self.output_linear(h)


def train(model_cls, steps=500, seed=0, quiet=False, nn=torchext.nn, optim=torchext.optim, lr=1e-4,
          momentum=0.0):
    torch.manual_seed(seed)
    rng = random.Random(seed)  # the same sequence of depths for every run with this seed
    x, y = torch.randn(64, 1000), torch.randn(64, 10)
    model = model_cls(1000, 100, 10, nn=nn)
    loss_fn = nn.MSELoss(reduction="sum")
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    for t in range(steps):
        out = model(x, repeats=rng.randint(0, 3)) if isinstance(model, DynamicNet) else model(x)
        loss = loss_fn(out, y)
        losses.append(loss.item())
        if not quiet and (t + 1) % 100 == 0:
            print("%s step %4d  loss %.4f" % (model_cls.__name__, t + 1, losses[-1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, losses


if __name__ == "__main__":
    train(TwoLayerNet)
    train(DynamicNet, lr=1e-4, momentum=0.9)
