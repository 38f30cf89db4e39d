"""torch.compile(fullgraph=True) over torchext modules and a whole training step."""
import pytest
import torch
import torch._dynamo

import torchext
from conftest import DEVICES


def _models(device, optim_name):
    torch.manual_seed(0)
    nn = torchext.nn
    model = torch.nn.Sequential(nn.Linear(100, 32), nn.ReLU(), nn.LinearReLU(32, 16), nn.Linear(16, 10)).to(device)
    twin = torch.nn.Sequential(nn.Linear(100, 32), nn.ReLU(), nn.LinearReLU(32, 16), nn.Linear(16, 10)).to(device)
    twin.load_state_dict(model.state_dict())
    make = {"sgd": lambda p: torchext.optim.SGD(p, lr=1e-3, momentum=0.9),
            "adam": lambda p: torchext.optim.Adam(p, lr=1e-3),
            "adamw": lambda p: torchext.optim.AdamW(p, lr=1e-3, amsgrad=True)}[optim_name]
    return model, make(model.parameters()), twin, make(twin.parameters())


def _train_step(model, opt, loss_fn, x, y):
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    return loss.detach()  # its graph was consumed by backward()


@pytest.mark.parametrize("device", DEVICES)
def test_forward_and_loss_compile_without_graph_breaks(device):
    model, _, twin, _ = _models(device, "sgd")
    loss_fn = torchext.nn.MSELoss(reduction="sum")
    x, y = torch.randn(64, 100, device=device), torch.randn(64, 10, device=device)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, y: loss_fn(model(x), y), fullgraph=True)
    loss = compiled(x, y)
    loss.backward()
    loss_ref = loss_fn(twin(x), y)
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["complex", "broadcast_bias", "broadcast_bias_relu"])
def test_other_linear_paths_compile_without_graph_breaks(case, device):
    # Complex tensors and a bias that broadcasts take their own paths through F.linear.
    F = torchext.functional
    dtype = torch.complex64 if case == "complex" else torch.float32
    x = torch.randn(6, 5, dtype=dtype, device=device)
    w = torch.randn(3, 5, dtype=dtype, device=device)
    b = torch.randn(3 if case == "complex" else (6, 3), dtype=dtype, device=device)
    fn = F.linear_relu if case.endswith("relu") else F.linear
    torch._dynamo.reset()
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = torch.compile(fn, fullgraph=True)(*leaves)
    out.abs().sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = fn(*ref_leaves)
    ref.abs().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optim_name", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("device", DEVICES)
def test_full_training_step_compiles_to_one_graph_and_matches_eager(device, optim_name):
    # Forward, loss, backward and the optimizer step in one fullgraph region: tracing
    # Tensor.backward needs dynamo's trace_autograd_ops, and torchext's step() is written
    # without the graph break that torch.optim's steps insert.
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):  # torch < 2.10
        pytest.skip("this torch's dynamo cannot trace Tensor.backward (no trace_autograd_ops)")
    model, opt, twin, twin_opt = _models(device, optim_name)
    loss_fn = torchext.nn.MSELoss(reduction="sum")
    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        step = torch.compile(_train_step, fullgraph=True, backend="aot_eager")
        for _ in range(3):
            x, y = torch.randn(64, 100, device=device), torch.randn(64, 10, device=device)
            loss = step(model, opt, loss_fn, x, y)
            loss_ref = _train_step(twin, twin_opt, loss_fn, x, y)
            torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-4)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_export_keeps_torchext_ops(device):
    # torch.export (static and dynamic batch) of a model of torchext modules: the exported graph
    # calls torchext's ops, runs and matches eager, and its batch dimension stays symbolic.
    model, _, _, _ = _models(device, "sgd")
    loss_fn = torchext.nn.MSELoss(reduction="sum")

    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, y):
            return loss_fn(self.model(x), y)

    x, y = torch.randn(64, 100, device=device), torch.randn(64, 10, device=device)
    batch = torch.export.Dim("batch", min=2)
    for dynamic in (None, ({0: batch}, {0: batch})):
        exported = torch.export.export(WithLoss(), (x, y), dynamic_shapes=dynamic)
        targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
        assert {"torchext.linear.default", "torchext.relu.default", "torchext.linear_relu.default"} <= targets
        # mse_loss_forward (loss and the diff saved for backward) while the params require grad.
        assert targets & {"torchext.mse_loss.default", "torchext.mse_loss_forward.default"}, targets
        torch.testing.assert_close(exported.module()(x, y), loss_fn(model(x), y))
        if dynamic is not None:
            x2, y2 = torch.randn(37, 100, device=device), torch.randn(37, 10, device=device)
            torch.testing.assert_close(exported.module()(x2, y2), loss_fn(model(x2), y2))
