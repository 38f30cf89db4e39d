"""FSDP2 (fully_shard) training and distributed checkpoints with torchext modules and optimizers, on
two gloo ranks on CPU (tests/ranks.py).

Training: the tutorial's two-layer net and a 4-layer MLP, each rank on its half of the batch, with
SGD (momentum, Nesterov), Adam (amsgrad) and AdamW: the params after N steps equal those of the
same FSDP2 run with torch.optim, and of single-process training on the whole batch; bf16 params
with torchext's fp32 master weights equal single-process training with master weights and FSDP2's
own recipe (fp32 params, bf16 compute, MixedPrecisionPolicy) with torch.optim; fp16 autocast with
torch.amp.GradScaler (an overflowing step skipped) equals torch.optim under it.

Checkpoints (torch.distributed.checkpoint with get_state_dict / set_state_dict): saved at step N
and loaded into a fresh model and optimizer, training continues on the trajectory of an
uninterrupted run: on two ranks, on one process (2 -> 1), through a full state dict broadcast from
rank 0, and between torch.optim.AdamW and torchext.optim.AdamW in both directions.
"""
import pytest
import torch
import torch.distributed as dist

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,  # noqa: E402
                                                     set_model_state_dict, set_optimizer_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor, Shard  # noqa: E402

import torchext  # noqa: E402

NETS = {"two-layer": [1000, 100, 10], "mlp4": [24, 40, 33, 17, 5]}  # layer widths
BATCH = 16
OPTIMIZERS = {
    "sgd-momentum": ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "sgd-nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    "adam-amsgrad": ("Adam", dict(lr=1e-3, amsgrad=True)),
    "adamw": ("AdamW", dict(lr=1e-3, weight_decay=0.1)),
}
STEPS = 8


def _net(name, dtype=torch.float32, seed=0):
    """Linear -> ReLU -> ... -> Linear of torchext modules, fixed weights per seed."""
    torch.manual_seed(seed)
    widths = NETS[name]
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(torchext.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torchext.nn.ReLU())
    return torch.nn.Sequential(*layers).to(dtype)


def _data(name, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, NETS[name][0], generator=gen).to(dtype),
            torch.randn(BATCH, NETS[name][-1], generator=gen).to(dtype))


def _shard(model, **kwargs):
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, **kwargs)
    return fully_shard(model, **kwargs)


def _optimizer(library, name, params, **extra):
    cls, kwargs = OPTIMIZERS[name]
    return getattr(library.optim, cls)(params, **kwargs, **extra)


def _train(model, opt, x, y, steps):
    loss_fn = torchext.nn.MSELoss()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _my_rows(x, rank, world_size):
    rows = x.shape[0] // world_size
    return x[rank * rows:(rank + 1) * rows]


def _gathered(model):
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach() for n, p in model.named_parameters()}


def _fsdp_train_on_rank(rank, world_size, net, optimizer, steps):
    x, y = (_my_rows(t, rank, world_size) for t in _data(net))
    out = {}
    for library in (torchext, torch):
        model = _shard(_net(net))
        opt = _optimizer(library, optimizer, model.parameters())
        _train(model, opt, x, y, steps)
        out[library.__name__] = _gathered(model)
        if library is torchext:
            p = next(iter(model.parameters()))
            out["state"] = {k: (type(v).__name__, tuple(v.placements) if isinstance(v, DTensor) else None)
                            for k, v in opt.state[p].items()}
    return out


def _single_process(net, optimizer, steps, dtype=torch.float32, **extra):
    model = _net(net, dtype)
    _train(model, _optimizer(torchext, optimizer, model.parameters(), **extra), *_data(net, dtype), steps)
    return _gathered(model)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("net", NETS)
def test_fsdp2_training_matches_torch_optim_and_one_process(gloo_ranks, net, optimizer):
    out = gloo_ranks.run(_fsdp_train_on_rank, net, optimizer, STEPS)[0]
    single = _single_process(net, optimizer, STEPS)
    start = _gathered(_net(net))
    kinds = {"step": ("Tensor", None), "momentum_count": ("Tensor", None)}
    assert out["state"] and all(kind == kinds.get(k, ("DTensor", (Shard(0),))) for k, kind in out["state"].items())
    for name in single:
        assert not torch.equal(out["torchext"][name], start[name])  # it trained
        # The same gradients in both runs: only the optimizer differs, by a rounding per step.
        torch.testing.assert_close(out["torchext"][name], out["torch"][name], rtol=1e-5, atol=1e-6)
        # Gradients averaged over two half batches instead of one whole batch: rounding apart.
        torch.testing.assert_close(out["torchext"][name], single[name], rtol=1e-5, atol=1e-5)


def _grad_scaler_on_rank(rank, world_size, steps):
    # fp16 autocast with torch.amp.GradScaler, one step overflowing on purpose: GradScaler hands
    # torchext's optimizers grad_scale / found_inf, torch's unscales the grads itself.
    x, y = (_my_rows(t, rank, world_size) for t in _data("mlp4"))
    out = {}
    for library in (torchext, torch):
        model = _shard(_net("mlp4"))
        opt = _optimizer(library, "adam-amsgrad", model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        for step in range(steps):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = torchext.nn.MSELoss()(model(x), y)
            opt.zero_grad()
            scaler.scale(loss * (1e30 if step == 1 else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
        out[library.__name__] = _gathered(model), scaler.get_scale()
    return out


def test_fsdp2_with_grad_scaler_matches_torch_optim(gloo_ranks):
    out = gloo_ranks.run(_grad_scaler_on_rank, 4)[0]
    (ours, our_scale), (theirs, their_scale) = out["torchext"], out["torch"]
    assert our_scale == their_scale < 2.0 ** 16  # the overflowing step was skipped and the scale cut
    start = _gathered(_net("mlp4"))
    for name in ours:
        assert not torch.equal(ours[name], start[name])
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


def _master_weights_on_rank(rank, world_size, optimizer, steps):
    net = "mlp4"
    x, y = (_my_rows(t, rank, world_size) for t in _data(net, torch.bfloat16))
    model = _shard(_net(net, torch.bfloat16))
    opt = _optimizer(torchext, optimizer, model.parameters(), master_weights=True)
    _train(model, opt, x, y, steps)
    masters = {n: opt.state[p]["master_param"].full_tensor() for n, p in model.named_parameters()}
    # FSDP2's own recipe: fp32 params (from the same bf16 start), gathered in bf16 for the forward
    # and backward, gradients reduced in bf16 (as the bf16 params' are) and handed to the optimizer
    # in fp32. The forward then sees the same bf16 weights (the masters rounded) and the optimizer
    # the same gradients.
    ref = _shard(_net(net, torch.bfloat16).float(),
                 mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16))
    _train(ref, _optimizer(torch, optimizer, ref.parameters()), x, y, steps)
    return _gathered(model), masters, _gathered(ref)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd-momentum"])
def test_fsdp2_bf16_params_with_master_weights(gloo_ranks, optimizer):
    params, masters, fsdp_recipe = gloo_ranks.run(_master_weights_on_rank, optimizer, STEPS)[0]
    single_model = _net("mlp4", torch.bfloat16)
    single_opt = _optimizer(torchext, optimizer, single_model.parameters(), master_weights=True)
    _train(single_model, single_opt, *_data("mlp4", torch.bfloat16), STEPS)
    start = _gathered(_net("mlp4"))
    for name, p in single_model.named_parameters():
        assert params[name].dtype == torch.bfloat16 and masters[name].dtype == torch.float32
        assert torch.equal(params[name], masters[name].to(torch.bfloat16))  # the params are the masters rounded
        assert not torch.equal(masters[name], start[name])
        torch.testing.assert_close(masters[name], fsdp_recipe[name], rtol=1e-5, atol=1e-6)
        # Half batches on the ranks against the whole batch here: the bf16 gradients differ by bf16
        # roundings, which the steps carry into the masters.
        torch.testing.assert_close(masters[name], single_opt.state[p]["master_param"], rtol=2e-2, atol=1e-2)


def _checkpoint_on_rank(rank, world_size, path, save_with, load_with, steps, full_state_dict):
    """Trains with `save_with` (torchext or torch), checkpoints at `steps`, trains on; a fresh model
    (other initial weights) and `load_with` optimizer load the checkpoint and train as far."""
    libraries = {"torchext": torchext, "torch": torch}
    net, optimizer = "mlp4", "adamw"
    x, y = (_my_rows(t, rank, world_size) for t in _data(net))
    model = _shard(_net(net))
    opt = _optimizer(libraries[save_with], optimizer, model.parameters())
    _train(model, opt, x, y, steps)
    if full_state_dict:  # whole tensors, saved by rank 0 with torch.save
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(model, opt, options=options)
        if rank == 0:
            torch.save({"model": model_sd, "optim": optim_sd}, path)
        dist.barrier()
    else:
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    _train(model, opt, x, y, steps)
    uninterrupted = _gathered(model)

    fresh = _shard(_net(net, seed=5))
    fresh_opt = _optimizer(libraries[load_with], optimizer, fresh.parameters())
    if full_state_dict:
        # Read by rank 0 alone, broadcast to the others. Separate calls: set_state_dict would take the
        # other ranks' empty model dict for "optimizer only" and skip the model's broadcast.
        loaded = torch.load(path, weights_only=False) if rank == 0 else {"model": {}, "optim": {}}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(fresh, loaded["model"], options=options)
        set_optimizer_state_dict(fresh, fresh_opt, loaded["optim"], options=options)
    else:
        model_sd, optim_sd = get_state_dict(fresh, fresh_opt)
        loaded = {"model": model_sd, "optim": optim_sd}
        dcp.load(loaded, checkpoint_id=path)
        set_state_dict(fresh, fresh_opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    _train(fresh, fresh_opt, x, y, steps)
    return uninterrupted, _gathered(fresh)


@pytest.mark.parametrize("save_with, load_with, full", [("torchext", "torchext", False), ("torchext", "torchext", True),
                                                       ("torch", "torchext", False), ("torchext", "torch", False)],
                         ids=["torchext", "torchext-full-state-dict", "torch-to-torchext", "torchext-to-torch"])
def test_checkpoint_resumes_the_same_trajectory(gloo_ranks, tmp_path, save_with, load_with, full):
    path = str(tmp_path / ("ckpt.pt" if full else "ckpt"))
    uninterrupted, resumed = gloo_ranks.run(_checkpoint_on_rank, path, save_with, load_with, 4, full)[0]
    start = _gathered(_net("mlp4"))
    for name in uninterrupted:
        assert not torch.equal(uninterrupted[name], start[name])
        # The same optimizer resumed retraces its steps; torch's and torchext's AdamW agree to rounding.
        tol = dict(rtol=0, atol=0) if save_with == load_with else dict(rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(resumed[name], uninterrupted[name], **tol)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled, unavailable or uninitialized")  # as meant here
def test_checkpoint_from_two_ranks_resumes_on_one_process(gloo_ranks, tmp_path):
    path = str(tmp_path / "ckpt")
    uninterrupted, _ = gloo_ranks.run(_checkpoint_on_rank, path, "torchext", "torchext", 4, False)[0]
    # In this process, without a process group: whole tensors, loaded from the two ranks' shards.
    model = _net("mlp4", seed=5)
    opt = _optimizer(torchext, "adamw", model.parameters())
    model_sd, optim_sd = get_state_dict(model, opt)
    loaded = {"model": model_sd, "optim": optim_sd}
    dcp.load(loaded, checkpoint_id=path, no_dist=True)
    set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    assert float(opt.state[model[0].weight]["step"]) == 4
    _train(model, opt, *_data("mlp4"), 4)
    for name, p in model.named_parameters():
        # Two half batches on the ranks, the whole batch here: rounding apart.
        torch.testing.assert_close(p.detach(), uninterrupted[name], rtol=1e-5, atol=1e-5)
