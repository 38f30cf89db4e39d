"""torchext's optimizers on DTensor params, on two gloo ranks on CPU (tests/ranks.py).

One param group mixes what FSDP2 and tensor parallelism hand an optimizer: Shard(0) with uneven
shards and a rank whose shard is empty, Shard(1), Shard(2), Replicate, a param on a second mesh,
a plain tensor, and a param without a grad; another mixes a 2-D mesh, its first dim, a mesh
without rank 1 and a complex param. Every optimizer configuration (SGD with momentum,
dampening, Nesterov; Adam with amsgrad, maximize, weight decay; AdamW; a tensor lr with capturable;
bf16 params with fp32 master weights) must give the params (gathered) and state of the same
optimizer on the whole tensors, and of torch.optim on the same DTensors, in one kernel launch per
step. State tensors are DTensors split as their param, `step` a plain 0-dim tensor. Also:
GradScaler's grad_scale / found_inf, the state initialisation of torch.distributed.checkpoint
(zero grads, lr 0: no param may change), state_dict / load_state_dict between split and whole
state, and bad input (a grad split otherwise than its param, a plain grad on a DTensor param and
the reverse, a Partial param, a sparse grad, state on another mesh): an error, nothing written.
"""
import copy
import functools

import pytest
import torch
import torch.distributed as dist

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict  # noqa: E402
from torch.distributed.tensor import (DTensor, Partial, Replicate, Shard, distribute_tensor,  # noqa: E402
                                      init_device_mesh)

import torchext  # noqa: E402
from optim_common import PARITY_TOL  # noqa: E402

SGD, Adam, AdamW = torchext.optim.SGD, torchext.optim.Adam, torchext.optim.AdamW

# name: (torchext class, arguments, param dtype, compare with torch.optim on the same DTensors)
CONFIGS = {
    "sgd": (SGD, dict(lr=0.1), torch.float32, True),
    "sgd-momentum-dampening-wd": (SGD, dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01),
                                  torch.float32, True),
    "sgd-nesterov-maximize": (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True), torch.float32, True),
    "adam-wd": (Adam, dict(lr=0.01, weight_decay=0.01), torch.float32, True),
    "adam-amsgrad-maximize": (Adam, dict(lr=0.01, amsgrad=True, maximize=True), torch.float32, True),
    "adamw": (AdamW, dict(lr=0.01), torch.float32, True),
    "adam-lr-tensor-capturable": (Adam, dict(lr=torch.tensor(0.01), capturable=True), torch.float32, False),
    "adamw-bf16-master": (AdamW, dict(lr=0.01, master_weights=True), torch.bfloat16, False),
    "sgd-momentum-bf16-master": (SGD, dict(lr=0.1, momentum=0.9, master_weights=True), torch.bfloat16, False),
    # The low-memory modes that are elementwise over a shard (the others are refused, below).
    "adamw-bf16-kahan": (AdamW, dict(lr=0.01, kahan_summation=True), torch.bfloat16, False),
    "sgd-momentum-bf16-state": (SGD, dict(lr=0.1, momentum=0.9, state_dtype=torch.bfloat16), torch.float32, False),
}
STEPS = 3
NO_GRAD = 7  # the index of the param that never gets a grad


@functools.lru_cache(maxsize=None)
def _mesh(name):
    # One mesh per name and process: each is a process group, created by every rank together.
    return init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=(name,))


# (shape, mesh name, placements) of the params of the one group; mesh None: a plain tensor.
LAYOUT = [((7, 13), "dp", (Shard(0),)),      # uneven: 4 and 3 rows
          ((1, 5), "dp", (Shard(0),)),       # rank 1's shard is empty
          ((6, 4), "dp", (Shard(1),)),
          ((33,), "dp", (Replicate(),)),
          ((3, 4, 5), "dp", (Shard(2),)),    # uneven, on the last dim
          ((5, 2), None, None),              # a plain tensor among DTensors
          ((4, 4), "tp", (Shard(0),)),       # another mesh over the same ranks
          ((3, 3), "dp", (Shard(0),))]       # no grad


def _layout():
    return [(shape, _mesh(mesh) if mesh else None, placements) for shape, mesh, placements in LAYOUT]


def _full_values(seed, dtype):
    g = torch.Generator().manual_seed(seed)  # the same values on every rank
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for shape, _, _ in LAYOUT]


def _split(full, mesh, placements):
    return full.clone() if mesh is None else distribute_tensor(full.clone(), mesh, placements, src_data_rank=None)


def _params(seed, dtype, split=True):
    return [torch.nn.Parameter(_split(v, mesh, pl) if split else v.clone())
            for v, (_, mesh, pl) in zip(_full_values(seed, dtype), _layout())]


def _set_grads(params, seed, split=True, scale=1.0, skip=(NO_GRAD,)):
    for i, (g, (_, mesh, pl)) in enumerate(zip(_full_values(seed, params[0].dtype), _layout())):
        params[i].grad = None if i in skip else (_split(g * scale, mesh, pl) if split else g * scale)


def _whole(t):
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _count_launches(opt):
    calls = []
    run, lowmem = opt._eager_op, opt._lowmem_ops

    def counted(*args):
        calls.append(len(args[0]))
        return run(*args)

    def counted_lowmem(*args):
        calls.append(len(args[0]))
        return lowmem[1](*args)
    opt._eager_op = counted
    opt._lowmem_ops = (lowmem[0], counted_lowmem, lowmem[2])
    return calls


def _kwargs(kwargs):
    # A tensor lr is the optimizer's own: each optimizer gets a copy.
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}


def _state_layout(opt, params):
    """Per param index: key -> (DTensor?, placements, dtype, dim) of its state."""
    out = {}
    for i, p in enumerate(params):
        out[i] = {k: (isinstance(v, DTensor), tuple(v.placements) if isinstance(v, DTensor) else None,
                      v.dtype, v.dim()) for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v)}
    return out


def _train_on_rank(rank, world_size, name):
    cls, kwargs, dtype, with_torch = CONFIGS[name]
    split, whole = _params(0, dtype), _params(0, dtype, split=False)
    ours, ref = cls(split, **_kwargs(kwargs)), cls(whole, **_kwargs(kwargs))
    launches = _count_launches(ours)
    runs = [(ours, split, True), (ref, whole, False)]
    if with_torch:
        torch_cls = getattr(torch.optim, cls.__name__)
        theirs = _params(0, dtype)
        runs.append((torch_cls(theirs, **_kwargs(kwargs)), theirs, True))
    for step in range(STEPS):
        for opt, params, is_split in runs:
            _set_grads(params, 100 + step, split=is_split)
            opt.step()
    result = {"launches": launches, "layout": _state_layout(ours, split)}
    result["params"] = [[_whole(p) for p in params] for _, params, _ in runs]
    result["state"] = [{i: {k: _whole(v) for k, v in opt.state[p].items() if k != "momentum_count"}
                        for i, p in enumerate(params) if p in opt.state} for opt, params, _ in runs]
    return result


@pytest.mark.parametrize("name", CONFIGS)
def test_dtensor_params_step_like_whole_tensors_and_torch(gloo_ranks, name):
    cls, kwargs, dtype, with_torch = CONFIGS[name]
    ranks = gloo_ranks.run(_train_on_rank, name)
    out = ranks[0]
    assert out["launches"] == [len(LAYOUT) - 1] * STEPS  # one launch per step, every param with a grad
    tol = PARITY_TOL[dtype]
    start = _full_values(0, dtype)
    for i, (ours, ref) in enumerate(zip(out["params"][0], out["params"][1])):
        torch.testing.assert_close(ours, ref, **tol, msg=lambda m: "param %d: %s" % (i, m))
        if i != NO_GRAD:
            assert not torch.equal(ours, start[i])
    assert out["state"][0].keys() == out["state"][1].keys()
    for i in out["state"][1]:
        assert out["state"][0][i].keys() == out["state"][1][i].keys()
        for k in out["state"][1][i]:
            torch.testing.assert_close(out["state"][0][i][k], out["state"][1][i][k], **tol)
    if with_torch:
        for ours, theirs in zip(out["params"][0], out["params"][2]):
            torch.testing.assert_close(ours, theirs, **tol)
    # Every rank holds the same params after the gather.
    for a, b in zip(out["params"][0], ranks[1]["params"][0]):
        assert torch.equal(a, b)
    # State split as its param; `step` (and SGD's private counter) plain 0-dim float32 tensors.
    master = kwargs.get("master_weights", False)
    for i, (_, mesh, placements) in enumerate(LAYOUT):
        state = out["layout"][i]
        if i == NO_GRAD:
            assert state == {}
            continue
        for key, (is_dtensor, got_placements, got_dtype, dim) in state.items():
            if key in ("step", "momentum_count"):
                assert (is_dtensor, got_dtype, dim) == (False, torch.float32, 0), key
            else:
                assert is_dtensor == (mesh is not None), (i, key)
                assert got_placements == placements, (i, key)
                want = dtype if key == "kahan_comp" else torch.float32 if master else kwargs.get("state_dtype", dtype)
                assert got_dtype == want, (i, key)
        expected = {"master_param"} if master else set()
        expected |= {"kahan_comp"} if kwargs.get("kahan_summation") else set()
        expected |= {"step", "exp_avg", "exp_avg_sq"} if cls is not SGD else set()
        expected |= {"max_exp_avg_sq"} if kwargs.get("amsgrad") else set()
        expected |= {"momentum_buffer", "momentum_count"} if kwargs.get("momentum") else set()
        assert set(state) == expected, i


def _grad_scaler_on_rank(rank, world_size):
    """grad_scale divides the grads; a nonzero found_inf leaves params and state bit for bit."""
    out = {}
    for name in ("adam-amsgrad-maximize", "sgd-momentum-dampening-wd"):
        cls, kwargs, dtype, _ = CONFIGS[name]
        split, whole = _params(0, dtype), _params(0, dtype, split=False)
        ours, ref = cls(split, **kwargs), cls(whole, **kwargs)
        for step in range(2):
            _set_grads(split, 100 + step, scale=8.0)
            ours.step(grad_scale=torch.tensor(8.0))
            _set_grads(whole, 100 + step, split=False)
            ref.step()
        before = [_whole(p) for p in split], {i: {k: _whole(v) for k, v in ours.state[p].items()}
                                              for i, p in enumerate(split) if p in ours.state}
        _set_grads(split, 200)
        ours.step(grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
        after = [_whole(p) for p in split], {i: {k: _whole(v) for k, v in ours.state[p].items()}
                                             for i, p in enumerate(split) if p in ours.state}
        out[name] = ([_whole(p) for p in split], [_whole(p) for p in whole], before, after)
    return out


def test_grad_scale_and_found_inf_on_dtensor_params(gloo_ranks):
    for name, (ours, ref, before, after) in gloo_ranks.run(_grad_scaler_on_rank)[0].items():
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, **PARITY_TOL[torch.float32])
        for a, b in zip(before[0], after[0]):
            assert torch.equal(a, b), name
        assert before[1].keys() == after[1].keys()
        for i in before[1]:
            for k in before[1][i]:
                assert torch.equal(before[1][i][k], after[1][i][k]), (name, i, k)


def _state_init_on_rank(rank, world_size, name):
    """What torch.distributed.checkpoint's get/set_optimizer_state_dict do with a fresh optimizer: a
    step with zero grads and lr 0.0 to create the state, which must change no param; then the state
    of an optimizer trained elsewhere (here: on whole tensors, as a full state dict) loaded."""
    cls, kwargs, dtype, _ = CONFIGS[name]
    model = torch.nn.ParameterList(_params(0, dtype))
    opt = cls(model.parameters(), **_kwargs(kwargs))
    start = [p.to_local().clone() if isinstance(p, DTensor) else p.detach().clone() for p in model]
    lr = opt.param_groups[0]["lr"]
    osd = get_optimizer_state_dict(model, opt)  # runs the state initialisation
    unchanged = all(torch.equal(p.to_local() if isinstance(p, DTensor) else p.detach(), s)
                    for p, s in zip(model, start))
    lr_kept = opt.param_groups[0]["lr"] is lr
    saved_layout = {k: {key: (type(v).__name__, tuple(v.placements) if isinstance(v, DTensor) else None)
                        for key, v in entry.items()} for k, entry in osd["state"].items()}
    # Whole tensors trained for a few steps; their state, keyed by name, loaded into `opt`.
    whole_model = torch.nn.ParameterList(_params(0, dtype, split=False))
    whole_opt = cls(whole_model.parameters(), **_kwargs(kwargs))
    for step in range(STEPS):
        _set_grads(list(whole_model), 100 + step, split=False, skip=())
        whole_opt.step()
    # A copy, as from a file: torch's load_state_dict keeps tensors it need not convert, which would
    # leave the two optimizers sharing buffers.
    full_osd = copy.deepcopy(get_optimizer_state_dict(whole_model, whole_opt))
    with torch.no_grad():  # the trained values, split as the model's
        for p, q, (_, mesh, placements) in zip(model, whole_model, _layout()):
            p.copy_(_split(q.detach(), mesh, placements) if mesh is not None else q)
    set_optimizer_state_dict(model, opt, full_osd)
    for step in range(2):
        _set_grads(list(model), 300 + step, skip=())
        opt.step()
        _set_grads(list(whole_model), 300 + step, split=False, skip=())
        whole_opt.step()
    return unchanged, lr_kept, saved_layout, [_whole(p) for p in model], [_whole(p) for p in whole_model]


@pytest.mark.parametrize("name", ["sgd-momentum-dampening-wd", "adam-amsgrad-maximize", "adamw",
                                  "adam-lr-tensor-capturable", "adamw-bf16-master"])
def test_checkpoint_state_init_changes_no_param_and_full_state_loads(gloo_ranks, name):
    unchanged, lr_kept, layout, ours, ref = gloo_ranks.run(_state_init_on_rank, name)[0]
    assert unchanged
    assert lr_kept
    # Keyed by name (ParameterList names them "0", "1", ...), buffers split as their params.
    assert set(layout["0"]) >= ({"step", "exp_avg"} if "adam" in name else {"momentum_buffer"})
    for key, (kind, placements) in layout["0"].items():
        assert (kind, placements) == (("Tensor", None) if key == "step" else ("DTensor", (Shard(0),))), key
    assert layout["5"] and all(kind == "Tensor" for kind, _ in layout["5"].values())
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **PARITY_TOL[CONFIGS[name][2]])


def _state_dict_round_trip_on_rank(rank, world_size):
    """state_dict() of split state loads into a fresh optimizer on split params, into one on whole
    params (gathered), and split state saved under other placements is redistributed to the param's."""
    cls, kwargs = Adam, dict(lr=0.01, amsgrad=True)
    split = _params(0, torch.float32)
    opt = cls(split, **kwargs)
    for step in range(2):
        _set_grads(split, 100 + step)
        opt.step()
    sd = opt.state_dict()
    # Another optimizer on the same values split as Replicate: each state tensor is redistributed.
    replicated = [torch.nn.Parameter(_split(_whole(p), mesh, (Replicate(),) if mesh is not None else None))
                  for p, (_, mesh, _) in zip(split, _layout())]
    others = [cls(_params(0, torch.float32), **kwargs), cls(_params(0, torch.float32, split=False), **kwargs),
              cls(replicated, **kwargs)]
    for other in others:
        other.load_state_dict(copy.deepcopy(sd))  # as from a file (see _state_init_on_rank)
        params = other.param_groups[0]["params"]
        with torch.no_grad():
            for p, q in zip(params, split):
                if isinstance(p, DTensor):
                    p.copy_(_split(_whole(q), p.device_mesh, p.placements))
                else:
                    p.copy_(_whole(q))
    layouts = [_state_layout(o, o.param_groups[0]["params"]) for o in others]
    every = [opt] + others
    for step in range(2):
        for o in every:
            params = o.param_groups[0]["params"]
            _set_grads(params, 200 + step, split=isinstance(params[0], DTensor))
            if o is others[2]:  # Replicate grads for the Replicate params
                for p in params:
                    if isinstance(p, DTensor) and p.grad is not None:
                        p.grad = p.grad.redistribute(p.device_mesh, p.placements)
            o.step()
    return layouts, [[_whole(p) for p in o.param_groups[0]["params"]] for o in every]


def test_state_dict_between_split_and_whole_params(gloo_ranks):
    layouts, params = gloo_ranks.run(_state_dict_round_trip_on_rank)[0]
    split_layout, whole_layout, replicated_layout = layouts
    assert split_layout[0]["exp_avg"][:2] == (True, (Shard(0),))
    assert whole_layout[0]["exp_avg"][:2] == (False, None)
    assert replicated_layout[0]["exp_avg"][:2] == (True, (Replicate(),))
    assert replicated_layout[0]["step"][:2] == (False, None)
    for other in params[1:]:
        for a, b in zip(params[0], other):
            torch.testing.assert_close(a, b, **PARITY_TOL[torch.float32])


def _meshes_on_rank(rank, world_size, name):
    """A group whose params live on a 2-D mesh, on its first dim alone, and on a mesh of rank 0
    alone (rank 1 holds an empty local tensor of it), beside a complex param and a plain one."""
    from torch.distributed.device_mesh import DeviceMesh
    cls, kwargs, _, _ = CONFIGS[name]
    grid = init_device_mesh("cpu", (world_size, 1), mesh_dim_names=("dp", "tp"))
    splits = [(grid, (Shard(0), Shard(1))), (grid["dp"], (Replicate(),)), (DeviceMesh("cpu", [0]), (Replicate(),)),
              (grid["dp"], (Shard(1),)), (None, None)]
    gen = torch.Generator().manual_seed(0)
    full = [torch.randn(shape, generator=gen, dtype=dtype) for shape, dtype in
            [((5, 3), torch.float32), ((4,), torch.float32), ((3, 2), torch.float32), ((2, 5), torch.complex64),
             ((3,), torch.float32)]]
    split = [torch.nn.Parameter(_split(f, mesh, pl)) for f, (mesh, pl) in zip(full, splits)]
    whole = [torch.nn.Parameter(f.clone()) for f in full]
    ours, ref = cls(split, **kwargs), cls(whole, **kwargs)
    launches = _count_launches(ours)
    for step in range(STEPS):
        grads = [torch.randn(f.shape, generator=gen, dtype=f.dtype) for f in full]
        for p, g, (mesh, pl) in zip(split, grads, splits):
            p.grad = _split(g, mesh, pl)
        for p, g in zip(whole, grads):
            p.grad = g
        ours.step()
        ref.step()
    # Rank 1 is not in the third param's mesh: its local tensors stay empty; rank 0 holds the values.
    others = [i for i in range(len(full)) if i != 2]
    return (launches, [_whole(split[i]) for i in others], [_whole(whole[i]) for i in others],
            split[2].to_local().detach().clone(), whole[2].detach().clone())


@pytest.mark.parametrize("name", ["adam-amsgrad-maximize", "sgd-nesterov-maximize"])
def test_params_on_several_meshes_in_one_group(gloo_ranks, name):
    for rank, (launches, ours, ref, local, ref_local) in enumerate(gloo_ranks.run(_meshes_on_rank, name)):
        assert launches == [4, 1] * STEPS  # float32 and complex64: one launch each per step
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, **PARITY_TOL[torch.float32])
        if rank == 0:
            torch.testing.assert_close(local, ref_local, **PARITY_TOL[torch.float32])
        else:
            assert local.numel() == 0


def _bad_input_on_rank(rank, world_size, case):
    dp = _mesh("dp")
    first = [torch.nn.Parameter(distribute_tensor(torch.ones(4, 3), dp, [Shard(0)], src_data_rank=None))]
    params = _params(0, torch.float32)
    opt = Adam([{"params": first}, {"params": params}], lr=0.1)
    first[0].grad = torch.ones_like(first[0])
    _set_grads(params, 1)
    opt.step()  # state exists: the failed step must leave it as it is too
    _set_grads(params, 2)
    first[0].grad = torch.ones_like(first[0])
    if case == "grad-replicated":
        params[0].grad = params[0].grad.redistribute(dp, [Replicate()])
    elif case == "grad-other-mesh":
        params[0].grad = distribute_tensor(_full_values(2, torch.float32)[0], _mesh("tp"), [Shard(0)],
                                           src_data_rank=None)
    elif case == "grad-plain":
        params[0].grad = params[0].grad.full_tensor()
    elif case == "grad-dtensor-on-plain-param":
        params[5].grad = distribute_tensor(params[5].grad, dp, [Replicate()], src_data_rank=None)
    elif case == "sparse-grad":
        params[5].grad = params[5].grad.to_sparse()
    elif case == "partial-param":
        p = torch.nn.Parameter(DTensor.from_local(torch.ones(3), dp, [Partial()]))
        opt.add_param_group({"params": [p]})
        p.grad = DTensor.from_local(torch.ones(3), dp, [Partial()])
    every = first + params + [p for g in opt.param_groups[2:] for p in g["params"]]
    before = [p.to_local().clone() if isinstance(p, DTensor) else p.detach().clone() for p in every]
    state_before = {i: {k: (v.to_local() if isinstance(v, DTensor) else v).clone() for k, v in opt.state[p].items()}
                    for i, p in enumerate(every) if p in opt.state}
    try:
        opt.step()
        error = None
    except Exception as e:  # noqa: BLE001  (the test process checks which)
        error = (type(e).__name__, str(e))
    after = [p.to_local() if isinstance(p, DTensor) else p.detach() for p in every]
    unchanged = all(torch.equal(a, b) for a, b in zip(before, after))
    state_after = {i: {k: (v.to_local() if isinstance(v, DTensor) else v) for k, v in opt.state[p].items()}
                   for i, p in enumerate(every) if p in opt.state}
    unchanged = unchanged and state_after.keys() == state_before.keys() and all(
        state_after[i].keys() == state_before[i].keys() and all(torch.equal(state_after[i][k], v)
                                                                  for k, v in state_before[i].items())
        for i in state_before)
    return error, unchanged


BAD_INPUT = {
    "grad-replicated": ("RuntimeError", "the grad of params[0] of param group 1 has placements (Replicate(),)"),
    "grad-other-mesh": ("RuntimeError", "the grad must be split as its param is"),
    "grad-plain": ("RuntimeError", "params[0] of param group 1 is a DTensor ((Shard(dim=0),) on"),
    "grad-dtensor-on-plain-param": ("RuntimeError", "params[5] of param group 1 is a plain tensor but its grad is "
                                                    "a DTensor"),
    "sparse-grad": ("RuntimeError", "Adam does not support sparse gradients"),
    "partial-param": ("RuntimeError", "a param holding partial values cannot be updated"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_dtensor_input_raises_and_writes_nothing(gloo_ranks, case):
    for error, unchanged in gloo_ranks.run(_bad_input_on_rank, case):
        assert error is not None and error[0] == BAD_INPUT[case][0], error
        assert BAD_INPUT[case][1] in error[1], error[1]
        assert unchanged


def _state_on_other_mesh_on_rank(rank, world_size):
    params = _params(0, torch.float32)
    opt = Adam(params, lr=0.1)
    _set_grads(params, 1)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0] = dict(sd["state"][0], exp_avg=distribute_tensor(
        sd["state"][0]["exp_avg"].full_tensor(), _mesh("tp"), [Shard(0)], src_data_rank=None))
    fresh = Adam(_params(0, torch.float32), lr=0.1)
    try:
        fresh.load_state_dict(sd)
        return None, len(fresh.state)
    except ValueError as e:
        return str(e), len(fresh.state)


def test_state_on_another_mesh_is_refused_by_load_state_dict(gloo_ranks):
    for message, loaded in gloo_ranks.run(_state_on_other_mesh_on_rank):
        assert message is not None and "state 'exp_avg' of param 0 is on" in message
        assert loaded == 0


def _refused_lowmem_on_rank(rank, world_size):
    out = []
    for kwargs in (dict(stochastic_rounding=True), dict(state_dtype="int8")):
        # At construction ...
        try:
            AdamW(_params(0, torch.bfloat16), lr=0.01, **kwargs)
            out.append(None)
        except ValueError as e:
            out.append(str(e))
        # ... and at a step, for params that became DTensors after it: nothing written.
        whole = _params(0, torch.bfloat16, split=False)
        opt = AdamW([torch.nn.Parameter(w.detach().clone()) for w in whole], lr=0.01, **kwargs)
        split = _params(0, torch.bfloat16)
        opt.param_groups[0]["params"] = split
        _set_grads(split, 1)
        before = [_whole(p) for p in split]
        try:
            opt.step()
            out.append(None)
        except ValueError as e:
            out.append(str(e))
        out.append(all(torch.equal(a, _whole(b)) for a, b in zip(before, split)) and not opt.state)
    return out


def test_low_memory_modes_that_need_whole_tensors_refuse_dtensor_params(gloo_ranks):
    for out in gloo_ranks.run(_refused_lowmem_on_rank):
        for i, what in enumerate(("stochastic_rounding=True", 'state_dtype="int8"')):
            at_init, at_step, unchanged = out[3 * i:3 * i + 3]
            for message in (at_init, at_step):
                assert message is not None and what in message and "DTensor params" in message, message
            assert unchanged
