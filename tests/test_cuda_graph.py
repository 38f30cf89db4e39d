"""A whole training step (forward, MSE loss, backward, capturable optimizer step) captured in a
CUDA graph and replayed gives what eager execution gives."""
import pytest
import torch

import torchext
from conftest import HAS_CUDA

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def _setup(optim_name):
    torch.manual_seed(0)
    nn = torchext.nn
    model = torch.nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.LinearReLU(48, 32), nn.Linear(32, 8)).cuda()
    kw = dict(lr=1e-3, capturable=True)
    opt = {"adam": lambda p: torchext.optim.Adam(p, **kw),
           "adamw": lambda p: torchext.optim.AdamW(p, amsgrad=True, **kw),
           "sgd": lambda p: torchext.optim.SGD(p, lr=torch.tensor(1e-2, device="cuda"), momentum=0.9)}[optim_name]
    return model, opt(model.parameters())


@pytest.mark.parametrize("optim_name", ["adam", "adamw", "sgd"])
def test_captured_training_step_matches_eager(optim_name):
    model, opt = _setup(optim_name)
    twin, twin_opt = _setup(optim_name)
    loss_fn = torchext.nn.MSELoss()
    static_x = torch.randn(32, 64, device="cuda")
    static_y = torch.randn(32, 8, device="cuda")

    def step(m, o, x, y):
        o.zero_grad(set_to_none=False)
        loss = loss_fn(m(x), y)
        loss.backward()
        o.step()
        return loss

    # Warm-up on a side stream creates the optimizer state outside the capture.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step(model, opt, static_x, static_y)
            step(twin, twin_opt, static_x, static_y)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(model, opt, static_x, static_y)
    for _ in range(5):
        static_x.copy_(torch.randn_like(static_x))
        static_y.copy_(torch.randn_like(static_y))
        graph.replay()
        loss = step(twin, twin_opt, static_x, static_y)
        torch.testing.assert_close(static_loss, loss, rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    if optim_name != "sgd":
        # The step counter lives on the device and advanced on every replay.
        state = opt.state[next(model.parameters())]
        assert state["step"].device.type == "cuda" and state["step"].item() == 2 + 5  # capture itself runs nothing


def test_capturing_a_step_with_a_cpu_lr_tensor_is_refused():
    # A CPU lr is read on the host; captured, the graph would replay that value forever.
    p = torch.nn.Parameter(torch.randn(1000, device="cuda"))
    p.grad = torch.randn_like(p)
    opt = torchext.optim.SGD([p], lr=torch.tensor(0.1), momentum=0.9)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        opt.step()  # state created outside the capture
    torch.cuda.current_stream().wait_stream(s)
    before = p.detach().clone()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="'lr'.*CPU tensor"):
        with torch.cuda.graph(graph):
            opt.step()
    torch.cuda.synchronize()
    assert torch.equal(p.detach(), before)
