"""The ops' autograd kernels (csrc/autograd/), each op called directly.

Every call of a public function reaches these kernels: they record the op's node in the autograd
graph and carry forward-mode tangents, for torch.autograd, torch.autograd.forward_ad and the
torch.func transforms alike. A backward or a tangent is computed with the same ops, so derivatives
of every order are torchext's kernels too."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd import gradcheck, gradgradcheck

import torchext

from conftest import DEVICES, away_from_kink

ops = torch.ops.torchext


# name -> (function of tensors, shapes, which inputs are differentiable). Shapes are odd on purpose.
OP_CALLS = {
    "relu": (ops.relu, [(5, 7)], [True]),
    "relu_backward": (ops.relu_backward, [(5, 7), (5, 7)], [True, False]),
    "linear": (ops.linear, [(5, 7), (3, 7), (3,)], [True, True, True]),
    "linear_no_bias": (lambda x, w: ops.linear(x, w, None), [(5, 7), (3, 7)], [True, True]),
    "linear_relu": (ops.linear_relu, [(5, 7), (3, 7), (3,)], [True, True, True]),
    "linear_relu_no_bias": (lambda x, w: ops.linear_relu(x, w, None), [(5, 7), (3, 7)], [True, True]),
    "linear_bias_grad": (ops.linear_bias_grad, [(6, 4)], [True]),
    "linear_relu_grad": (ops.linear_relu_grad, [(6, 4), (6, 4)], [True, False]),
    "mse_loss_none": (lambda a, b: ops.mse_loss(a, b, 0), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_mean": (lambda a, b: ops.mse_loss(a, b, 1), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_sum": (lambda a, b: ops.mse_loss(a, b, 2), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_forward_mean": (lambda a, b: ops.mse_loss_forward(a, b, 1), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_forward_none": (lambda a, b: ops.mse_loss_forward(a, b, 0), [(4, 6), (4, 6)], [True, False]),
    "mse_loss_backward_none": (lambda g, d: ops.mse_loss_backward(g, d, 0), [(4, 6), (4, 6)], [True, True]),
    "mse_loss_backward_mean": (lambda g, d: ops.mse_loss_backward(g, d, 1), [(), (4, 6)], [True, True]),
    "mse_loss_backward_sum": (lambda g, d: ops.mse_loss_backward(g, d, 2), [(), (4, 6)], [True, True]),
    "linear_batched": (lambda x, w, b: ops.linear_batched(x, w, b, False), [(2, 5, 7), (2, 3, 7), (2, 3)],
                       [True, True, True]),
    "linear_batched_relu": (lambda x, w, b: ops.linear_batched(x, w, b, True), [(3, 4, 6), (3, 5, 6), (3, 5)],
                            [True, True, True]),
    "linear_batched_no_bias": (lambda x, w: ops.linear_batched(x, w, None, False), [(2, 5, 7), (2, 3, 7)],
                               [True, True]),
}


def _args(shapes, differentiable, device):
    return [away_from_kink(s, device).requires_grad_(d) for s, d in zip(shapes, differentiable)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OP_CALLS))
def test_gradcheck_and_gradgradcheck(name, device):
    # Reverse and forward mode, and both through vmap (batched grads run the ops' vmap rules on the
    # backward's own calls); second order as reverse-over-reverse and forward-over-reverse.
    fn, shapes, differentiable = OP_CALLS[name]
    args = _args(shapes, differentiable, device)
    assert gradcheck(fn, args, check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradgradcheck(fn, args, check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize("device", DEVICES)
def test_ops_record_only_when_asked(device):
    x = torch.randn(4, 5, device=device, requires_grad=True)
    w = torch.randn(3, 5, device=device, requires_grad=True)
    assert ops.linear(x, w, None).grad_fn is not None
    assert ops.relu(x).grad_fn is not None
    with torch.no_grad():
        y = ops.linear(x, w, None)
        assert y.grad_fn is None and not y.requires_grad
        assert not ops.relu(x).requires_grad
    plain = ops.linear(x.detach(), w.detach(), None)
    assert plain.grad_fn is None and not plain.requires_grad
    # A create_graph backward records the backward's own graph; a plain one records nothing.
    (gx,) = torch.autograd.grad(ops.relu(x).sum(), x, create_graph=True)
    assert gx.requires_grad
    (gx,) = torch.autograd.grad(ops.relu(x).sum(), x)
    assert not gx.requires_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("no_grad", [False, True], ids=["grad_mode", "no_grad"])
@pytest.mark.parametrize("name", list(OP_CALLS))
def test_tangents_on_a_direct_op_call(name, no_grad, device):
    # A dual input gets its tangent carried through the op, with grad mode on or off (forward mode
    # does not need it), equal to the directional derivative that reverse mode gives: for a
    # tangent v and any output weight u, <u, J v> = <J^T u, v>.
    fn, shapes, differentiable = OP_CALLS[name]
    primals = _args(shapes, differentiable, device)
    tangents = [torch.randn_like(p) if d else None for p, d in zip(primals, differentiable)]
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p.detach(), t) if t is not None else p.detach() for p, t in zip(primals, tangents)]
        with torch.set_grad_enabled(not no_grad):
            out = fn(*duals)
        outs = out if isinstance(out, tuple) else (out,)
        jvps = [fwAD.unpack_dual(o).tangent for o in outs]
    outs = fn(*primals)
    outs = outs if isinstance(outs, tuple) else (outs,)
    weights = [torch.randn_like(o) for o in outs]
    vjps = torch.autograd.grad(sum((o * u).sum() for o, u in zip(outs, weights)),
                               [p for p, d in zip(primals, differentiable) if d], allow_unused=True)
    forward = sum((j * u).sum() for j, u in zip(jvps, weights) if j is not None)
    backward = sum((g * t).sum() for g, t in zip(vjps, [t for t in tangents if t is not None]) if g is not None)
    assert any(j is not None for j in jvps)
    torch.testing.assert_close(forward, backward, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_saved_tensors_are_freed_and_checked(device):
    # After a backward without retain_graph the node's saved tensors are gone: a second backward
    # fails with torch's message. An input modified in place after the forward is refused too.
    x = torch.randn(4, 5, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, device=device, dtype=torch.float64, requires_grad=True)
    out = ops.linear_relu(x, w, None).sum()
    out.backward(retain_graph=True)
    out.backward()  # retained: works, and accumulates
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.backward()
    y = x * 1
    out = ops.linear(y, w, None).sum()
    with torch.no_grad():
        y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()
    assert ops.linear(x, w, None).grad_fn.name() == "torchext::LinearBackward"


@pytest.mark.parametrize("create_graph", [False, True], ids=["backward", "double_backward"])
def test_compiled_autograd_matches_eager(create_graph):
    # torch._dynamo.compiled_autograd traces the backward graph through each node's apply (with
    # its saved tensors swapped for proxies): every node kind here, results equal to eager's.
    import torchext
    F = torchext.functional
    x = torch.randn(6, 5, dtype=torch.float64)
    w1, b1 = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    w2 = torch.randn(3, 4, dtype=torch.float64)
    target = torch.randn(6, 3, dtype=torch.float64)

    def run(compiled):
        params = [t.clone().requires_grad_() for t in (x, w1, b1, w2)]
        xx, a, b, c = params
        h = F.relu(F.linear_relu(xx, a, b) - 0.5, inplace=False)
        h2 = F.linear(h * 1, c)
        F.relu(h2, inplace=True)
        loss = F.mse_loss(h2, target, reduction="mean") + F.mse_loss(F.linear(xx, a, b), xx[:, :4], reduction="sum")
        if compiled:
            torch._dynamo.reset()
            with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager", fullgraph=True)):
                grads = torch.autograd.grad(loss, params, create_graph=create_graph)
                if create_graph:
                    grads = torch.autograd.grad(sum((g * g).sum() for g in grads), params)
        else:
            grads = torch.autograd.grad(loss, params, create_graph=create_graph)
            if create_graph:
                grads = torch.autograd.grad(sum((g * g).sum() for g in grads), params)
        return grads

    for got, expected in zip(run(True), run(False)):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_checkpointing_and_saved_tensor_hooks_match_torch(device):
    # Activation checkpointing (both implementations) re-runs the forward in the backward, and
    # saved-tensor hooks (save_on_cpu, user hooks) see every tensor the nodes save: the gradients
    # equal those of the same model of torch modules.
    from torch.utils.checkpoint import checkpoint

    nn = torchext.nn
    model = torch.nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.LinearReLU(16, 12), nn.ReLU(),
                                nn.Linear(12, 4)).to(device, torch.float64)
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(inplace=True), torch.nn.Linear(16, 12),
                               torch.nn.ReLU(), torch.nn.ReLU(), torch.nn.Linear(12, 4)).to(device, torch.float64)
    for ours, theirs in ((0, 0), (2, 2), (4, 5)):
        twin[theirs].load_state_dict(model[ours].state_dict())
    x = torch.randn(5, 3, 8, device=device, dtype=torch.float64)

    def grads(net, run):
        net.zero_grad()
        leaf = x.clone().requires_grad_()
        (run(net, leaf) ** 2).sum().backward()
        return [leaf.grad] + [p.grad.clone() for p in net.parameters()]

    want = grads(twin, lambda net, t: net(t))
    packed = []

    def with_hooks(net, t):
        def pack(saved):
            packed.append(saved.shape)
            return saved.clone()  # the node gets a copy back: it must not rely on identity

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved):
            return net(t)

    def on_cpu(net, t):
        with torch.autograd.graph.save_on_cpu():
            return net(t)

    runs = {"checkpoint": lambda net, t: checkpoint(net, t, use_reentrant=False),
            "checkpoint_reentrant": lambda net, t: checkpoint(net, t, use_reentrant=True),
            "saved_tensors_hooks": with_hooks, "save_on_cpu": on_cpu}
    for name, run in runs.items():
        for got, expected in zip(grads(model, run), want):
            torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12, msg=name)
    assert len(packed) >= 7  # inputs and weights of three GEMMs, and the ReLU results
