"""Forward-mode AD (torch.autograd.forward_ad, gradcheck's check_forward_ad) and the torch.func
transforms (grad, jvp, vjp, jacrev, jacfwd, hessian, vmap) through every torchext op, against the
same calls on torch's ops. Before forward-mode rules existed, a dual input went through the bare
kernels and came out with no tangent at all: the tests below would fail on that."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import torchext
from conftest import ALL_DTYPES, DEVICES, ELEMENTWISE_TOL, away_from_kink

F = torchext.functional


@pytest.fixture
def no_vmap_fallback():
    # functorch's generic per-entry fallback (slow, warns, fails on an empty batch) switched off:
    # under vmap every op must have its own rule.
    enabled = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(enabled)


def _relu_inplace(mod):
    return lambda x: mod.relu(x.clone(), inplace=True)


# name -> (torchext function, torch function, input shapes); each function takes tensors only.
# Every function here is a sum of products of its inputs (ReLU picks terms out), so rounding errors
# scale with the same sum taken over absolute values. _MAGNITUDE_SIGNS gives, per function, the
# sign to put on each absolute input so that evaluating it in float64 gives that sum (mse works on
# input - target, so its target is negated); by default all are positive.
_MSE_SIGNS = (1, -1)
_MAGNITUDE_SIGNS = {"mse_mean": _MSE_SIGNS, "mse_sum": _MSE_SIGNS, "mse_none": _MSE_SIGNS,
                    "mse_broadcast": _MSE_SIGNS}
OPS = {
    "linear": (F.linear, TF.linear, [(5, 7), (3, 7), (3,)]),
    "linear_no_bias": (F.linear, TF.linear, [(5, 7), (3, 7)]),
    "linear_3d_input": (F.linear, TF.linear, [(2, 5, 7), (3, 7), (3,)]),
    "linear_1d_weight": (F.linear, TF.linear, [(5, 7), (7,)]),
    "linear_relu": (F.linear_relu, lambda x, w, b: TF.relu(TF.linear(x, w, b)), [(5, 7), (3, 7), (3,)]),
    "relu": (F.relu, TF.relu, [(4, 6)]),
    "relu_inplace": (_relu_inplace(F), _relu_inplace(TF), [(4, 6)]),
    "mse_mean": (F.mse_loss, TF.mse_loss, [(4, 6), (4, 6)]),
    "mse_sum": (lambda a, b: F.mse_loss(a, b, reduction="sum"),
                lambda a, b: TF.mse_loss(a, b, reduction="sum"), [(4, 6), (4, 6)]),
    "mse_none": (lambda a, b: F.mse_loss(a, b, reduction="none"),
                 lambda a, b: TF.mse_loss(a, b, reduction="none"), [(4, 6), (4, 6)]),
    "mse_broadcast": (lambda a, b: F.mse_loss(a, b, reduction="sum"),
                      lambda a, b: TF.mse_loss(a, b, reduction="sum"), [(4, 6), (6,)]),
}


def _inputs(shapes, device, dtype=torch.float64, requires_grad=True):
    return [away_from_kink(shape, device).to(dtype).requires_grad_(requires_grad) for shape in shapes]


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_gradcheck_forward_mode(name, device):
    ours, _, shapes = OPS[name]
    args = _inputs(shapes, device)
    # Forward mode, reverse mode, and vmap over the tangents.
    assert gradcheck(ours, args, check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    # Forward over reverse: the tangents of the backward's own pieces.
    assert gradgradcheck(ours, args, check_fwd_over_rev=True, check_rev_over_rev=True)


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("name", list(OPS))
def test_dual_tensors_match_torch(name, dtype, device):
    # forward_ad by hand, in each dtype, with a tangent on one input at a time and on all of them;
    # grad mode off too (forward-mode AD does not depend on it). Below float64: ours within twice
    # torch's own error (both against the same formula in float64) plus a few units in the last
    # place of the magnitude of the terms summed (see _MAGNITUDE_SIGNS), since a reduced result can
    # cancel to far below its terms. (Scaled by the result instead, 1 to 2% of runs of each mse_sum
    # case failed on rounding alone, with errors up to 20 units of the result's last place.)
    ours, ref, shapes = OPS[name]
    primals = _inputs(shapes, device, dtype, requires_grad=False)
    tangents = _inputs(shapes, device, dtype, requires_grad=False)
    signs = _MAGNITUDE_SIGNS.get(name, (1,) * len(shapes))

    def evaluate(fn, which, primals, tangents):
        with fwAD.dual_level():
            args = [fwAD.make_dual(p, t) if i in which else p for i, (p, t) in enumerate(zip(primals, tangents))]
            primal_out, tangent_out = fwAD.unpack_dual(fn(*args))
            assert tangent_out is not None, "the output lost its tangent"
            return primal_out.detach().clone(), tangent_out.detach().clone()

    for which in [list(range(len(shapes)))] + [[i] for i in range(len(shapes))]:
        wide = [[a.double() for a in args] for args in (primals, tangents)]
        truth = evaluate(ref, which, *wide)
        magnitude = evaluate(ref, which, *[[s * a.abs() for s, a in zip(signs, args)] for args in wide])
        for grad_mode in (True, False):
            with torch.set_grad_enabled(grad_mode):
                (p, t), (p_ref, t_ref) = (evaluate(fn, which, primals, tangents) for fn in (ours, ref))
            assert t.dtype == t_ref.dtype == dtype and t.shape == t_ref.shape
            if dtype == torch.float64:
                torch.testing.assert_close(p, p_ref, **ELEMENTWISE_TOL[dtype])
                torch.testing.assert_close(t, t_ref, **ELEMENTWISE_TOL[dtype])
                continue
            ulp = torch.finfo(dtype).eps
            for ours_out, ref_out, exact, scale in zip((p, t), (p_ref, t_ref), truth, magnitude):
                ref_err = (ref_out.double() - exact).abs()
                bound = 2 * ref_err + 4 * ulp * scale.abs().clamp_min(1)
                assert ((ours_out.double() - exact).abs() <= bound).all()


def _net(mod, fused):
    def loss(weight, bias, x, target):
        h = mod.linear_relu(x, weight, bias) if fused else mod.relu(mod.linear(x, weight, bias))
        return mod.mse_loss(h, target, reduction="sum")
    return loss


TORCH_MOD = type("TorchFunctional", (), {
    "linear": staticmethod(TF.linear), "relu": staticmethod(TF.relu), "mse_loss": staticmethod(TF.mse_loss),
    "linear_relu": staticmethod(lambda x, w, b: TF.relu(TF.linear(x, w, b)))})

TRANSFORMS = {
    "grad": lambda f, a: grad(f, argnums=(0, 1, 2))(*a),
    "vjp": lambda f, a: vjp(f, *a)[1](torch.tensor(1.7, dtype=a[0].dtype, device=a[0].device)),
    "jvp": lambda f, a: jvp(f, tuple(a), tuple(torch.sin(t + 1) for t in a)),
    "jacrev": lambda f, a: jacrev(f, argnums=(0, 1))(*a),
    "jacfwd": lambda f, a: jacfwd(f, argnums=(0, 1))(*a),
    "hessian": lambda f, a: hessian(f, argnums=0)(*a),
    "vmap": lambda f, a: vmap(f, in_dims=(None, None, 0, 0))(a[0], a[1], a[2][:, None], a[3][:, None]),
    "vmap_grad": lambda f, a: vmap(grad(f), in_dims=(None, None, 0, 0))(a[0], a[1], a[2][:, None], a[3][:, None]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [False, True], ids=["linear_then_relu", "linear_relu"])
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_torch_func_transforms_match_torch(transform, fused, device, no_vmap_fallback):
    weight, bias, x, target = _inputs([(4, 6), (4,), (5, 6), (5, 4)], device, requires_grad=False)
    args = [weight, bias, x, target]
    ours = TRANSFORMS[transform](_net(F, fused), args)
    ref = TRANSFORMS[transform](_net(TORCH_MOD, fused), args)
    ours_leaves, ref_leaves = torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(ref)
    assert len(ours_leaves) == len(ref_leaves) > 0
    for a, b in zip(ours_leaves, ref_leaves):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_modules_under_torch_func_functional_call(device, no_vmap_fallback):
    # The usual per-sample-gradient recipe: functional_call + vmap(grad) over a torchext model.
    model = torch.nn.Sequential(torchext.nn.Linear(6, 5), torchext.nn.ReLU(), torchext.nn.Linear(5, 2))
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    model = model.to(device, torch.float64)
    ref = ref.to(device, torch.float64)
    ref.load_state_dict(model.state_dict())
    x = torch.randn(7, 6, dtype=torch.float64, device=device)
    y = torch.randn(7, 2, dtype=torch.float64, device=device)

    def per_sample(net, loss_fn):
        params = {k: v.detach() for k, v in net.named_parameters()}

        def loss(p, xi, yi):
            return loss_fn(torch.func.functional_call(net, p, (xi[None],)), yi[None])
        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)

    ours = per_sample(model, torchext.nn.MSELoss())
    expected = per_sample(ref, torch.nn.MSELoss())
    assert ours.keys() == expected.keys()
    for k in ours:
        assert ours[k].shape[0] == 7
        torch.testing.assert_close(ours[k], expected[k], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_relu_under_transforms(device, no_vmap_fallback):
    x = torch.randn(4, 6, dtype=torch.float64, device=device)
    batched = x.clone()

    def inplace(a):
        out = F.relu(a, inplace=True)
        assert out is a
        return a
    torch.testing.assert_close(vmap(inplace)(batched), torch.relu(x), atol=0, rtol=0)
    torch.testing.assert_close(batched, torch.relu(x), atol=0, rtol=0)  # the vmapped input changed
    per_row = vmap(grad(lambda a: (F.relu(a * 1, inplace=True) ** 2).sum()))(x)
    torch.testing.assert_close(per_row, 2 * torch.relu(x), atol=1e-12, rtol=1e-12)
    _, tangent = jvp(lambda a: F.relu(a * 1, inplace=True), (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, (x > 0).double(), atol=0, rtol=0)


_ops = torch.ops.torchext
# op -> (per-entry input shapes, trailing non-tensor args); every op torchext defines except relu_,
# which transforms never reach (under one, an in-place relu is relu then copy_: see the next test).
VMAP_OPS = {
    "linear": (_ops.linear, [(5, 7), (3, 7), (3,)], ()),
    "linear_relu": (_ops.linear_relu, [(5, 7), (3, 7), (3,)], ()),
    "linear_bias_grad": (_ops.linear_bias_grad, [(5, 3)], ()),
    "linear_relu_grad": (_ops.linear_relu_grad, [(5, 3), (5, 3)], ()),
    "relu": (_ops.relu, [(4, 6)], ()),
    "relu_backward": (_ops.relu_backward, [(4, 6), (4, 6)], ()),
    **{"%s_%s" % (name, reduction): (getattr(_ops, name), [(4, 6), (4, 6)], (code,))
       for name in ("mse_loss", "mse_loss_forward") for reduction, code in (("none", 0), ("mean", 1), ("sum", 2))},
    **{"mse_loss_backward_%s" % reduction: (_ops.mse_loss_backward, [shape, (4, 6)], (code,))
       for reduction, code, shape in (("none", 0, (4, 6)), ("mean", 1, ()), ("sum", 2, ()))},
    "linear_batched": (_ops.linear_batched, [(2, 5, 7), (2, 3, 7), (2, 3)], (True,)),
    # 0-d entries (a batch of scalars) and 3-d ones.
    "mse_loss_forward_mean_0d": (_ops.mse_loss_forward, [(), ()], (1,)),
    "mse_loss_backward_mean_0d": (_ops.mse_loss_backward, [(), ()], (1,)),
    "mse_loss_sum_3d": (_ops.mse_loss, [(2, 3, 5), (2, 3, 5)], (2,)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [3, 0])
@pytest.mark.parametrize("name", list(VMAP_OPS))
def test_vmap_rules_match_per_entry_calls(name, batch, device, no_vmap_fallback):
    # Each tensor argument in turn batched alone (at its last dim, not the first), then all of them:
    # the result equals calling the op on each entry.
    op, shapes, extra = VMAP_OPS[name]
    n = len(shapes)
    for batched in [[i] for i in range(n)] + [list(range(n))]:
        args, in_dims = [], []
        for i, shape in enumerate(shapes):
            t = torch.randn(shape, dtype=torch.float64, device=device)
            if i in batched:
                t = torch.randn(*shape, batch, dtype=torch.float64, device=device)
            args.append(t)
            in_dims.append(len(shape) if i in batched else None)
        out = vmap(lambda *a: op(*a, *extra), in_dims=tuple(in_dims))(*args)
        for b in range(batch):
            entry = [a.select(d, b) if d is not None else a for a, d in zip(args, in_dims)]
            expected = op(*entry, *extra)
            got = tuple(o[b] for o in out) if isinstance(out, tuple) else out[b]
            torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
        first = out[0] if isinstance(out, tuple) else out
        assert first.shape[0] == batch


def test_torch_compile_over_torch_func_transforms_is_one_graph():
    # torch.compile of torch.func transforms over torchext ops: the ops' autograd and tangents are
    # C++ kernels Dynamo treats like torch's own, so each transform compiles without a graph break
    # (fullgraph=True) and matches eager.
    weight, bias, x, target = _inputs([(4, 6), (4,), (5, 6), (5, 4)], "cpu", requires_grad=False)
    f = _net(F, fused=False)
    calls = {
        "vmap": lambda a: vmap(F.relu)(a),
        "grad": lambda a: grad(f, argnums=2)(weight, bias, a, target),
        "jvp": lambda a: jvp(lambda v: f(weight, bias, v, target), (a,), (torch.ones_like(a),))[1],
        "per_sample_grads": lambda a: vmap(grad(lambda w, xi, ti: f(w, bias, xi[None], ti[None])),
                                           in_dims=(None, 0, 0))(weight, a, target),
        "hessian_vector": lambda a: jvp(grad(lambda v: f(weight, bias, v, target)), (a,), (torch.ones_like(a),))[1],
    }
    for name, call in calls.items():
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(call, fullgraph=True)(x), call(x), atol=1e-12, rtol=1e-12, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("same_batch", [True, False], ids=["one_minibatch", "minibatch_per_model"])
def test_model_ensembling_with_vmap(same_batch, device, no_vmap_fallback):
    # torch.func's ensembling recipe: stack_module_state over several torchext models, then vmap a
    # functional_call over the stacked weights (one shared minibatch: one GEMM for all models).
    def make(mod_nn, seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(mod_nn.Linear(6, 5), mod_nn.ReLU(), mod_nn.Linear(5, 3)).to(device, torch.float64)
    ours = [make(torchext.nn, s) for s in range(4)]
    refs = [make(torch.nn, s) for s in range(4)]
    for a, b in zip(ours, refs):
        b.load_state_dict(a.state_dict())
    x = torch.randn(4, 7, 6, dtype=torch.float64, device=device)

    def ensemble(models):
        params, buffers = torch.func.stack_module_state(models)
        base = models[0]

        def call(p, b, xb):
            return torch.func.functional_call(base, (p, b), (xb,))
        in_dims = (0, 0, None) if same_batch else (0, 0, 0)
        return vmap(call, in_dims=in_dims)(params, buffers, x[0] if same_batch else x)

    got, expected = ensemble(ours), ensemble(refs)
    assert got.shape == (4, 7, 3)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    for i, model in enumerate(ours):  # and each model on its own
        torch.testing.assert_close(got[i], model(x[0] if same_batch else x[i]), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_vmap_of_reduced_mse_keeps_per_entry_precision(dtype, device, no_vmap_fallback):
    # Squared differences of 1e-4-sized errors (~1e-8) underflow in float16 one by one; the batched
    # loss must still sum them as the per-entry kernel does, and grad_output / numel must not round
    # in the half type either.
    x = (torch.randn(3, 1000, device=device) * 1e-4).to(dtype)
    t = (torch.randn(3, 1000, device=device) * 1e-4).to(dtype)
    # float32: the batch's totals are summed in float32, the per-entry ones in double. Half types:
    # both in float32 and rounded once, so at most one unit in the last place apart.
    tol = dict(atol=0, rtol=1e-4 if dtype == torch.float32 else torch.finfo(dtype).eps)
    for reduction in (1, 2):
        got = vmap(lambda a, b: _ops.mse_loss(a, b, reduction))(x, t)
        expected = torch.stack([_ops.mse_loss(x[i], t[i], reduction) for i in range(3)])
        if reduction == 2:  # (a float16 mean of ~2e-8 rounds to 0 either way)
            assert (expected > 0).all()
        torch.testing.assert_close(got, expected, **tol)
        go = torch.rand(3, device=device).to(dtype) + 0.5
        got = vmap(lambda g, d: _ops.mse_loss_backward(g, d, reduction))(go, x - t)
        expected = torch.stack([_ops.mse_loss_backward(go[i], (x - t)[i], reduction) for i in range(3)])
        torch.testing.assert_close(got, expected, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_nested_vmap_of_linear(device, no_vmap_fallback):
    # vmap of vmap with inputs and weights batched at both levels: linear_batched's own rule merges
    # the two batch dims.
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, device=device)
    w = torch.randn(2, 3, 4, 7, dtype=torch.float64, device=device)
    b = torch.randn(3, 4, dtype=torch.float64, device=device)  # batched at the inner level only
    got = vmap(vmap(F.linear_relu, in_dims=(0, 0, 0)), in_dims=(0, 0, None))(x, w, b)
    expected = torch.relu(torch.einsum("ijmk,ijnk->ijmn", x, w) + b[None, :, None, :])
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_complex_linear_under_torch_func(device, no_vmap_fallback):
    # Complex Linear runs through the real GEMM; the transforms see views, concatenations and ours.
    cd = torch.complex128
    x = torch.randn(6, 5, dtype=cd, device=device)
    w, b = torch.randn(3, 5, dtype=cd, device=device), torch.randn(3, dtype=cd, device=device)
    t = torch.randn_like(x)

    def loss(mod, w, b, x):
        return mod.linear(x, w, b).abs().pow(2).sum()

    for ours, ref in [
        (grad(lambda w, b: loss(F, w, b, x), argnums=(0, 1))(w, b),
         grad(lambda w, b: loss(TF, w, b, x), argnums=(0, 1))(w, b)),
        (vmap(lambda xx: F.linear(xx, w, b))(x.reshape(2, 3, 5)),
         vmap(lambda xx: TF.linear(xx, w, b))(x.reshape(2, 3, 5))),
        (jvp(lambda xx: F.linear(xx, w, b), (x,), (t,)), jvp(lambda xx: TF.linear(xx, w, b), (x,), (t,))),
        (vmap(grad(lambda w, xx: loss(F, w, b, xx[None])), in_dims=(None, 0))(w, x),
         vmap(grad(lambda w, xx: loss(TF, w, b, xx[None])), in_dims=(None, 0))(w, x)),
    ]:
        torch.testing.assert_close(ours, ref)
