"""A guard against silently wrong training: the two-layer net (64x1000 -> 100 -> 10,
MSELoss(reduction="sum")) trained with torchext's modules and optimizers, Adam and SGD, must follow
torch.nn + torch.optim step for step and its loss must fall at every step.

Modes: eager; torch.compile (backend "eager") of a step that calls zero_grad() first; forward
under torch.autocast("cpu", bfloat16); torch.amp.GradScaler("cpu"), also from a scale that
overflows the first steps (those must be skipped exactly where torch skips them, and change
nothing); two-process DDP over gloo. The last tests make the optimizer's step a no-op, for every
step or for one, and check that the guard then fails.
"""
import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchext

N, D_IN, H, D_OUT = 64, 1000, 100, 10
STEPS = 10
LR = {"adam": 1e-3, "sgd": 1e-5}  # the sum over 640 outputs makes the gradients large
# Per-step loss against torch: float32 math in another order, bfloat16 GEMMs under autocast.
LOSS_RTOL = {"float32": 1e-4, "bfloat16": 5e-3}


def _setup(lib, optimizer, seed=0):
    """Data, model, loss and optimizer for one library; the same data and initial weights for both."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N, D_IN, generator=g), torch.randn(N, D_OUT, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(D_IN, H), torch.nn.ReLU(), torch.nn.Linear(H, D_OUT))
    nn, optim = (torch.nn, torch.optim) if lib == "torch" else (torchext.nn, torchext.optim)
    if lib == "torchext":
        model = torchext.nn.convert(model, fuse=False)  # the same weights, torchext's modules
        assert type(model[0]) is torchext.nn.Linear and type(model[1]) is torchext.nn.ReLU
    kw = {"foreach": False} if lib == "torch" else {}
    opt = (optim.Adam(model.parameters(), lr=LR["adam"], **kw) if optimizer == "adam"
           else optim.SGD(model.parameters(), lr=LR["sgd"], **kw))
    return x, y, model, nn.MSELoss(reduction="sum"), opt


def _make_step(model, loss_fn, opt, scaler=None, autocast=False):
    def step(x, y):
        opt.zero_grad()  # first, as in the compiled arrangement that used to be a no-op
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return loss.detach()
    return step


def _train(lib, optimizer, mode, init_scale=2.0 ** 16, steps=STEPS):
    """The losses before each step and after the last, and for each step whether it updated the
    params (False where GradScaler skipped it)."""
    x, y, model, loss_fn, opt = _setup(lib, optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale) if mode.startswith("grad_scaler") else None
    step = _make_step(model, loss_fn, opt, scaler, autocast=mode == "autocast")
    if mode == "compile" and lib == "torchext":
        torch._dynamo.reset()
        step = torch.compile(step, backend="eager")
    if mode == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.bfloat16  # the GEMMs do run in bfloat16
    losses, stepped = [], []
    for _ in range(steps):
        scale = scaler.get_scale() if scaler is not None else None
        losses.append(step(x, y).item())
        stepped.append(scaler is None or scaler.get_scale() >= scale)  # GradScaler halves the scale on a skip
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        losses.append(loss_fn(model(x), y).item())
    return losses, stepped


def check_training(losses, ref_losses, stepped, rtol):
    """The guard: every loss (before each step, and after the last) equals torch's, and falls at
    every step that updated the params; a step GradScaler skipped leaves the loss as it was."""
    assert len(losses) == len(ref_losses) == len(stepped) + 1
    for i, (loss, ref) in enumerate(zip(losses, ref_losses)):
        if abs(loss - ref) > rtol * abs(ref):
            raise AssertionError("loss %d is %.8g, torch's %.8g" % (i, loss, ref))
    for i, did_step in enumerate(stepped):
        if did_step and not losses[i + 1] < losses[i]:
            raise AssertionError("step %d did not lower the loss (%.8g -> %.8g)" % (i, losses[i], losses[i + 1]))
        if not did_step and losses[i + 1] != losses[i]:
            raise AssertionError("skipped step %d changed the loss (%.8g -> %.8g)" % (i, losses[i], losses[i + 1]))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("mode", ["eager", "compile", "autocast", "grad_scaler"])
def test_training_follows_torch_step_for_step(mode, optimizer):
    ref_losses, ref_stepped = _train("torch", optimizer, mode)
    losses, stepped = _train("torchext", optimizer, mode)
    assert all(ref_stepped) and stepped == ref_stepped
    check_training(ref_losses, ref_losses, ref_stepped, 0.0)  # torch itself passes the guard
    check_training(losses, ref_losses, stepped, LOSS_RTOL["bfloat16" if mode == "autocast" else "float32"])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_training_skips_overflowing_steps_where_torch_does(optimizer):
    # From a scale that makes the first scaled gradients overflow float32 (they reach about 40,
    # times 2**127; the scaled loss is inf, which alone skips nothing), GradScaler skips those
    # steps, halving the scale each time (torchext's optimizers skip them on the device, torch's
    # are not called), then trains.
    ref_losses, ref_stepped = _train("torch", optimizer, "grad_scaler_overflow", init_scale=2.0 ** 127)
    losses, stepped = _train("torchext", optimizer, "grad_scaler_overflow", init_scale=2.0 ** 127)
    assert not all(ref_stepped[:2]) and sum(ref_stepped) >= 4  # both kinds of step happen
    assert stepped == ref_stepped
    check_training(losses, ref_losses, stepped, LOSS_RTOL["float32"])


# ------------------------------------------------------------------------------------------ DDP

def _ddp_worker(rank, world_size, port, out_path):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        shard = N // world_size
        results = {}
        for optimizer in ("adam", "sgd"):
            x, y, model, loss_fn, opt = _setup("torchext", optimizer)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            xs, ys = x[rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard]
            step = _make_step(ddp, loss_fn, opt)
            losses = []
            for _ in range(STEPS + 1):  # the last loss only measures the last step's effect
                loss = step(xs, ys) if len(losses) < STEPS else loss_fn(ddp(xs), ys).detach()
                dist.all_reduce(loss)  # the sum over the shards: the whole batch's loss
                losses.append(loss.item())
            results[optimizer] = losses
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _ddp_reference(optimizer, world_size):
    """Single-process torch on the whole batch. DDP averages the ranks' gradients of their shard
    sums, which is the gradient of the whole batch's sum over world_size."""
    x, y, model, loss_fn, opt = _setup("torch", optimizer)
    losses = []
    for i in range(STEPS + 1):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        losses.append(loss.item())
        if i < STEPS:
            (loss / world_size).backward()
            opt.step()
    return losses


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_ddp_training_follows_torch_step_for_step(tmp_path):
    world_size, out = 2, str(tmp_path / "ddp.pt")
    context = mp.spawn(_ddp_worker, args=(world_size, _free_port(), out), nprocs=world_size, join=False)
    deadline = time.monotonic() + 240  # the workers' own collectives time out after 60 s
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):  # False until all have exited
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP workers did not finish in time")
    results = torch.load(out)
    for optimizer in ("adam", "sgd"):
        check_training(results[optimizer], _ddp_reference(optimizer, world_size), [True] * STEPS,
                       LOSS_RTOL["float32"])


# ------------------------------------------------------------------------------ the guard itself

def _no_op(real, after):
    """A stand-in for an optimizer's step op that does nothing from its (after+1)-th call on."""
    def op(*args):
        op.calls += 1
        if op.calls <= after:
            real(*args)
    op.calls = 0
    return op


# Under torch.compile the op is called once, while dynamo traces the step: only "every step" applies.
@pytest.mark.parametrize("mode, which", [("eager", "every_step"), ("eager", "fourth_step"), ("compile", "every_step")])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_guard_fails_when_a_step_does_nothing(optimizer, mode, which, monkeypatch):
    cls = torchext.optim.Adam if optimizer == "adam" else torchext.optim.SGD
    attr = "_eager_op" if mode == "eager" else "_op"  # what eager and compiled steps launch
    ref_losses, ref_stepped = _train("torch", optimizer, mode)
    op = _no_op(getattr(cls, attr), after=0 if which == "every_step" else 3)
    monkeypatch.setattr(cls, attr, staticmethod(op))
    losses, stepped = _train("torchext", optimizer, mode)
    # The stand-in ran: at every step eagerly, while tracing when compiled.
    assert op.calls == STEPS if mode == "eager" else op.calls >= 1
    with pytest.raises(AssertionError, match="torch's"):
        check_training(losses, ref_losses, stepped, LOSS_RTOL["float32"])
    # The falling-loss half catches it on its own too, without torch's losses to compare with.
    with pytest.raises(AssertionError, match="did not lower the loss"):
        check_training(losses, losses, stepped, 0.0)
