"""torchext's ops on DTensor inputs (their sharding rules) and tensor-parallel training, on two gloo
ranks on CPU (tests/ranks.py).

Each op, forward and backward, with inputs split as each of its sharding rules takes them (rows,
columns, the contraction dim, partial sums, uneven shards) and as none does (DTensor redistributes
them first): the gathered outputs and input gradients equal the op's on whole tensors, and the
outputs come out split as the rule says. Then ColwiseParallel / RowwiseParallel (and
SequenceParallel on ReLU) over an MLP of torchext.nn.Linear, LinearReLU and ReLU train with
torchext's optimizers to the weights of single-process training; an MSE loss over a sharded
output reduces as partial sums; FSDP2 over tensor parallelism on a 2-D mesh; torch.compile over a
tensor-parallel module, and over the optimizer step on its params. The sharding rules are registered whether torch.distributed.tensor is
imported before torchext or after it, and `import torchext` alone does not import it.
"""
import functools
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor  # noqa: E402
from torch.distributed.tensor import init_device_mesh  # noqa: E402
from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel, SequenceParallel,  # noqa: E402
                                               parallelize_module)

import torchext  # noqa: E402

ops = torch.ops.torchext
F = torchext.functional
PLACEMENT = {"R": Replicate(), "S0": Shard(0), "S1": Shard(1), "S2": Shard(2), "P": Partial()}

# name: (function of the inputs, input shapes (None: an absent optional tensor), input placements,
#        output placements the op's rule gives, or None where DTensor picks among several)
OP_CASES = {
    "linear-replicated": (F.linear, [(6, 5), (4, 5), (4,)], ["R", "R", "R"], ["R"]),
    "linear-rows": (F.linear, [(7, 5), (4, 5), (4,)], ["S0", "R", "R"], ["S0"]),
    "linear-colwise": (F.linear, [(6, 5), (4, 5), (4,)], ["R", "S0", "S0"], ["S1"]),
    "linear-colwise-uneven": (F.linear, [(6, 5), (5, 5), (5,)], ["R", "S0", "S0"], ["S1"]),
    "linear-rowwise": (F.linear, [(6, 5), (4, 5), (4,)], ["S1", "S1", "R"], ["P"]),
    "linear-rowwise-no-bias": (F.linear, [(6, 5), (4, 5), None], ["S1", "S1", None], ["P"]),
    "linear-partial-input": (F.linear, [(6, 5), (4, 5), (4,)], ["P", "R", "R"], ["P"]),
    "linear-3d-input": (F.linear, [(2, 3, 5), (4, 5), (4,)], ["R", "S0", "S0"], None),
    "linear-3d-batch-sharded": (F.linear, [(4, 3, 5), (4, 5), (4,)], ["S0", "R", "R"], ["S0"]),
    "linear-3d-sequence-sharded": (F.linear, [(2, 6, 5), (4, 5), (4,)], ["S1", "R", "R"], None),  # gathered
    "linear-relu-rows": (F.linear_relu, [(7, 5), (4, 5), (4,)], ["S0", "R", "R"], ["S0"]),
    "linear-relu-colwise": (F.linear_relu, [(6, 5), (4, 5), (4,)], ["R", "S0", "S0"], ["S1"]),
    "linear-relu-rowwise": (F.linear_relu, [(6, 5), (4, 5), (4,)], ["S1", "S1", "R"], None),  # no partial ReLU
    "linear-bias-grad-rows": (ops.linear_bias_grad, [(7, 4)], ["S0"], ["P"]),
    "linear-bias-grad-cols": (ops.linear_bias_grad, [(7, 4)], ["S1"], ["S0"]),
    "linear-relu-grad-rows": (ops.linear_relu_grad, [(7, 4), (7, 4)], ["S0", "S0"], ["S0", "P"]),
    "linear-relu-grad-cols": (ops.linear_relu_grad, [(7, 4), (7, 4)], ["S1", "S1"], ["S1", "S0"]),
    "linear-relu-grad-partial": (ops.linear_relu_grad, [(7, 4), (7, 4)], ["P", "R"], ["P", "P"]),
    "linear-batched-entries": (functools.partial(ops.linear_batched, relu=True), [(4, 3, 5), (4, 2, 5), (4, 2)],
                               ["S0", "S0", "S0"], ["S0"]),
    "linear-batched-features": (functools.partial(ops.linear_batched, relu=False), [(4, 3, 5), (4, 6, 5), (4, 6)],
                                ["R", "S1", "S1"], ["S2"]),
    "relu-rows": (F.relu, [(5, 4)], ["S0"], ["S0"]),
    "relu-cols": (F.relu, [(5, 4, 3)], ["S2"], ["S2"]),
    "relu-partial": (F.relu, [(5, 4)], ["P"], None),  # summed first: relu(a + b) is not relu(a) + relu(b)
    "relu-backward-partial": (ops.relu_backward, [(5, 4), (5, 4)], ["P", "R"], ["P"]),
    "mse-none": (functools.partial(F.mse_loss, reduction="none"), [(6, 5), (6, 5)], ["S1", "S1"], ["S1"]),
    "mse-sum": (functools.partial(F.mse_loss, reduction="sum"), [(7, 5), (7, 5)], ["S0", "S0"], ["P"]),
    "mse-mean": (F.mse_loss, [(7, 5), (7, 5)], ["S1", "S1"], ["P"]),
    "mse-mean-op": (functools.partial(ops.mse_loss, reduction=1), [(7, 5), (7, 5)], ["S0", "S0"], ["R"]),
    "mse-mean-bf16": (F.mse_loss, [(7, 5), (7, 5)], ["S0", "S0"], ["P"]),
}


def _inputs(name, split):
    """The case's inputs, whole or split as the case says, float64 (bf16 where the name says) and
    requiring grad; a partial input is the whole value halved on each rank."""
    _, shapes, placements, _ = OP_CASES[name]
    dtype = torch.bfloat16 if name.endswith("bf16") else torch.float64
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    out = []
    for shape, placement in zip(shapes, placements):
        if shape is None:
            out.append(None)
            continue
        t = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        if split:
            mesh = _mesh()
            if placement == "P":
                t = DTensor.from_local(t / dist.get_world_size(), mesh, [Partial()], run_check=False)
            else:
                t = distribute_tensor(t, mesh, [PLACEMENT[placement]], src_data_rank=None)
        out.append(t.requires_grad_())
    return out


@functools.lru_cache(maxsize=None)
def _mesh(shape=None, names=("tp",)):
    return init_device_mesh("cpu", shape or (dist.get_world_size(),), mesh_dim_names=names)


def _gathered(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def _forward_backward(name, split):
    fn = OP_CASES[name][0]
    inputs = _inputs(name, split)
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    placements = [tuple(o.placements) if isinstance(o, DTensor) else None for o in outs]
    whole = [_gathered(o) for o in outs]
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.dtype) for w in whole]
    loss = sum((w * c).sum() for w, c in zip(whole, weights))
    given = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(loss, given)
    return placements, whole, [_gathered(g) for g in grads]


def _op_case_on_rank(rank, world_size, name):
    return _forward_backward(name, split=True), _forward_backward(name, split=False)


@pytest.mark.parametrize("name", OP_CASES)
def test_op_on_dtensors_equals_op_on_whole_tensors(gloo_ranks, name):
    (placements, outs, grads), (_, ref_outs, ref_grads) = gloo_ranks.run(_op_case_on_rank, name)[0]
    expected = OP_CASES[name][3]
    if expected is not None:
        assert placements == [(PLACEMENT[p],) for p in expected]
    tol = dict(rtol=2e-2, atol=2e-2) if name.endswith("bf16") else dict(rtol=1e-10, atol=1e-10)
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, **tol)
    assert len(grads) == len(ref_grads)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **tol)


def _relu_inplace_on_rank(rank, world_size):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    d = distribute_tensor(x.clone(), _mesh(), [Shard(1)], src_data_rank=None)
    address = d.to_local().data_ptr()
    F.relu(d, inplace=True)
    return tuple(d.placements), d.to_local().data_ptr() == address, d.full_tensor(), torch.relu(x)


def test_relu_inplace_on_a_sharded_tensor(gloo_ranks):
    placements, same_local, out, ref = gloo_ranks.run(_relu_inplace_on_rank)[0]
    assert placements == (Shard(1),) and same_local
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


# Tensor-parallel MLPs. D_IN -> H -> H -> D_OUT: LinearReLU (colwise), Linear (rowwise), ReLU,
# Linear (colwise), then a rowwise Linear to the output.
N, D_IN, H, D_OUT = 16, 12, 10, 6


def _mlp(nn=torchext.nn, seed=0):
    torch.manual_seed(seed)
    linear_relu = nn.LinearReLU(D_IN, H) if nn is torchext.nn else torch.nn.Sequential(
        torch.nn.Linear(D_IN, H), torch.nn.ReLU())
    model = torch.nn.Sequential(linear_relu, nn.Linear(H, H), nn.ReLU(), nn.Linear(H, H), nn.Linear(H, D_OUT))
    if nn is not torchext.nn:  # the same weights as the torchext model
        ours = _mlp(torchext.nn, seed)
        with torch.no_grad():
            for p, q in zip(model.parameters(), ours.parameters()):
                p.copy_(q)
    return model


def _data(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, D_IN, generator=gen), torch.randn(N, D_OUT, generator=gen)


OPTIMIZERS = {
    "adam": lambda params: torchext.optim.Adam(params, lr=1e-2, amsgrad=True),
    "sgd-nesterov": lambda params: torchext.optim.SGD(params, lr=0.2, momentum=0.9, nesterov=True),
    "adamw": lambda params: torchext.optim.AdamW(params, lr=1e-2),
}
TP_PLAN = {"0": ColwiseParallel(), "1": RowwiseParallel(), "3": ColwiseParallel(), "4": RowwiseParallel()}


def _train(model, opt, x, y, steps, loss_fn=torchext.nn.MSELoss()):
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _tp_train_on_rank(rank, world_size, optimizer, steps):
    model = parallelize_module(_mlp(), _mesh(), TP_PLAN)
    layout = {n: tuple(p.placements) for n, p in model.named_parameters()}
    x, y = _data()
    losses = _train(model, OPTIMIZERS[optimizer](model.parameters()), x, y, steps)
    return layout, losses, {n: p.full_tensor() for n, p in model.named_parameters()}


def _single_process(optimizer, steps, nn=torchext.nn):
    model = _mlp(nn)
    x, y = _data()
    if nn is torchext.nn:
        opt = OPTIMIZERS[optimizer](model.parameters())
    else:
        opt = {"adam": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
               "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, nesterov=True),
               "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2)}[optimizer](model.parameters())
    losses = _train(model, opt, x, y, steps, torchext.nn.MSELoss() if nn is torchext.nn else torch.nn.MSELoss())
    return losses, model


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_tensor_parallel_mlp_trains_like_one_process(gloo_ranks, optimizer):
    steps = 15
    layout, losses, params = gloo_ranks.run(_tp_train_on_rank, optimizer, steps)[0]
    assert layout["0.weight"] == (Shard(0),) and layout["1.weight"] == (Shard(1),)
    assert layout["1.bias"] == (Replicate(),) and layout["3.bias"] == (Shard(0),)
    ref_losses, ref = _single_process(optimizer, steps)
    torch_losses, torch_ref = _single_process(optimizer, steps, nn=torch.nn)
    assert ref_losses[-1] < 0.9 * ref_losses[0]  # it trains
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(torch_losses), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), torch_ref.parameters()):
        torch.testing.assert_close(params[name], p.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(params[name], q.detach(), rtol=1e-4, atol=1e-5)


def _sequence_parallel_on_rank(rank, world_size, steps):
    # A sequence-parallel ReLU ahead of the tensor-parallel pair: activations [batch, seq, features]
    # sharded on seq between them, and the loss taken over the output sharded on seq too.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torchext.nn.ReLU(), torchext.nn.Linear(D_IN, H), torchext.nn.ReLU(),
                                torchext.nn.Linear(H, D_OUT))
    ref = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(D_IN, H), torch.nn.ReLU(), torch.nn.Linear(H, D_OUT))
    ref.load_state_dict(model.state_dict())
    mesh = _mesh()
    parallelize_module(model, mesh, {"0": SequenceParallel(),
                                     "1": ColwiseParallel(input_layouts=Shard(1)),
                                     "3": RowwiseParallel(output_layouts=Shard(1), use_local_output=False)})
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 8, D_IN, generator=gen), torch.randn(2, 8, D_OUT, generator=gen)
    y_split = distribute_tensor(y, mesh, [Shard(1)], src_data_rank=None)
    opt = torchext.optim.Adam(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    placements, losses, ref_losses = None, [], []
    for _ in range(steps):
        out = model(distribute_tensor(x, mesh, [Shard(1)], src_data_rank=None))
        loss = torchext.nn.MSELoss()(out, y_split)
        placements = (tuple(out.placements), tuple(loss.placements))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.full_tensor().item())
        ref_loss = torch.nn.MSELoss()(ref(x), y)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        ref_losses.append(ref_loss.item())
    return (placements, losses, ref_losses, [p.full_tensor() for p in model.parameters()],
            [p.detach() for p in ref.parameters()])


def test_sequence_parallel_relu_and_a_loss_over_sharded_output(gloo_ranks):
    placements, losses, ref_losses, params, ref = gloo_ranks.run(_sequence_parallel_on_rank, 10)[0]
    assert placements == ((Shard(1),), (Partial(),))  # the mean over a sharded output: partial sums
    assert ref_losses[-1] < ref_losses[0]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def _fsdp_tp_on_rank(rank, world_size, mesh_shape, steps):
    # FSDP2 over tensor parallelism: params split on both dims of the mesh ("dp", "tp").
    mesh = _mesh(mesh_shape, ("dp", "tp"))
    model = parallelize_module(_mlp(), mesh["tp"], TP_PLAN)
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    layout = {n: (p.device_mesh.ndim, tuple(p.placements)) for n, p in model.named_parameters()}
    x, y = _data()
    dp_rank, dp_size = mesh["dp"].get_local_rank(), mesh["dp"].size()
    rows = N // dp_size
    opt = torchext.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, x[dp_rank * rows:(dp_rank + 1) * rows], y[dp_rank * rows:(dp_rank + 1) * rows], steps)
    state_layout = {k: tuple(v.placements) for k, v in opt.state[next(iter(model.parameters()))].items()
                    if isinstance(v, DTensor)}
    return layout, state_layout, {n: p.full_tensor() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mesh_shape", [(2, 1), (1, 2)], ids=["dp2-tp1", "dp1-tp2"])
def test_fsdp2_over_tensor_parallel_on_a_2d_mesh(gloo_ranks, mesh_shape):
    steps = 8
    layout, state_layout, params = gloo_ranks.run(_fsdp_tp_on_rank, mesh_shape, steps)[0]
    assert all(ndim == 2 for ndim, _ in layout.values())
    assert state_layout["exp_avg"] == layout["0.weight"][1]
    model = _mlp()
    x, y = _data()
    _train(model, torchext.optim.AdamW(model.parameters(), lr=1e-2), x, y, steps)
    for name, p in model.named_parameters():
        torch.testing.assert_close(params[name], p.detach(), rtol=1e-5, atol=1e-6)


def _compiled_tp_on_rank(rank, world_size, steps):
    torch._dynamo.reset()
    model = parallelize_module(_mlp(), _mesh(), TP_PLAN)
    inductor, traced = torch._dynamo.lookup_backend("inductor"), set()

    def backend(gm, example_inputs):  # inductor, noting which torchext ops the graph calls
        traced.update(str(n.target) for n in gm.graph.nodes if str(n.target).startswith("torchext."))
        return inductor(gm, example_inputs)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x, y = _data()
    losses = _train(compiled, OPTIMIZERS["adam"](model.parameters()), x, y, steps)
    return losses, {n: p.full_tensor() for n, p in model.named_parameters()}, sorted(traced)


def test_compiled_tensor_parallel_module(gloo_ranks):
    steps = 4
    losses, params, traced = gloo_ranks.run(_compiled_tp_on_rank, steps, timeout_s=240)[0]
    assert traced == ["torchext.linear.default", "torchext.linear_relu.default", "torchext.relu.default"]
    ref_losses, ref = _single_process("adam", steps)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(params[name], p.detach(), rtol=1e-5, atol=1e-6)


def _compiled_step_on_rank(rank, world_size, steps):
    # The optimizer step compiled alone over tensor-parallel params (a whole training step does not
    # compile over DTensors in torch 2.14, with torch.optim either).
    torch._dynamo.reset()
    model = parallelize_module(_mlp(), _mesh(), TP_PLAN)
    opt = OPTIMIZERS["adam"](model.parameters())
    graphs = []  # the torchext ops each compiled graph calls

    def backend(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if str(n.target).startswith("torchext.")])
        return gm.forward
    step = torch.compile(opt.step, backend=backend)
    x, y = _data()
    loss_fn = torchext.nn.MSELoss()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        step()
    return graphs, {n: p.full_tensor() for n, p in model.named_parameters()}


def test_compiled_optimizer_step_on_tensor_parallel_params(gloo_ranks):
    steps = 4
    graphs, params = gloo_ranks.run(_compiled_step_on_rank, steps)[0]
    assert graphs and all(g == ["torchext.adam_step_"] for g in graphs)  # one fused launch, on the local shards
    _, ref = _single_process("adam", steps)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(params[name], p.detach(), rtol=1e-5, atol=1e-6)


_CHECK_RULES = """
import sys, torch
{first}
{second}
from torch.distributed.tensor import DTensor
funcs = DTensor._op_dispatcher.sharding_propagator.op_strategy_funcs
ops = torch.ops.torchext
missing = [str(op) for op in (ops.linear.default, ops.linear_relu.default, ops.linear_batched.default,
           ops.linear_bias_grad.default, ops.linear_relu_grad.default, ops.relu.default, ops.relu_.default,
           ops.relu_backward.default, ops.mse_loss.default, ops.mse_loss_forward.default,
           ops.mse_loss_backward.default) if op not in funcs]
assert not missing, missing
"""


@pytest.mark.parametrize("order", ["torchext-first", "dtensor-first"])
def test_sharding_rules_register_whichever_is_imported_first(order):
    first, second = "import torchext", "import torch.distributed.tensor"
    if order == "dtensor-first":
        first, second = second, first
    else:  # torchext alone leaves the half-second import of torch.distributed.tensor to who needs it
        first += "\nassert 'torch.distributed.tensor' not in sys.modules"
    root = os.path.dirname(os.path.dirname(os.path.abspath(torchext.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run([sys.executable, "-c", _CHECK_RULES.format(first=first, second=second)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
