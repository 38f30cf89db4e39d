"""Linear regression with torchext: fit y = 2x + noise with one Linear(1, 1).

The weight starts at 1.0 and the bias at 0.0; MSELoss and SGD(lr=1e-4) for 3000 epochs bring the
weight to about 2 while the bias stays near 0.
"""
import torch

import torchext


def train(epochs=3000, seed=0, quiet=False, nn=torchext.nn, optim=torchext.optim):
    torch.manual_seed(seed)
    x = torch.arange(1, 101, dtype=torch.float32).unsqueeze(1)
    y = 2 * x + torch.randn_like(x)
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    loss_fn = nn.MSELoss()
    opt = optim.SGD(model.parameters(), lr=1e-4)
    for epoch in range(epochs):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not quiet and (epoch + 1) % 500 == 0:
            print("epoch %4d  loss %.4f  weight %.4f  bias %.4f" % (
                epoch + 1, loss.item(), model.weight.item(), model.bias.item()))
    return model


if __name__ == "__main__":
    m = train()
    print("learned weight %.4f (true 2), bias %.4f (true 0)" % (m.weight.item(), m.bias.item()))
