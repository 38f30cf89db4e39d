"""Linear: argument checks, fake kernels and vmap rules for torch.ops.torchext.linear*.

Every call goes straight to the ops. Their autograd (graph nodes and forward-mode tangents) is C++,
csrc/autograd/linear.cpp, and writes every backward with the same ops, so gradients of gradients
are torchext's kernels too:
    dX = linear(dY, W.t())     dW = linear(dY.t(), X.t())     db = linear_bias_grad(dY)
The transposes are views: the GEMM's packing reads any strides, so they cost no copy.
"""
import math
import warnings
from typing import List, Optional

import torch

from .._distributed import register_sharding
from ._util import autocast_inputs, batch_first, register_vmap
from .relu import relu as _relu

_ops = torch.ops.torchext
# Resolved overloads: calling them skips the packet's overload lookup on every call (the tutorial's
# small layers are dominated by per-call overhead).
_linear = _ops.linear.default
_linear_relu = _ops.linear_relu.default
_linear_bias_grad = _ops.linear_bias_grad.default
_linear_relu_grad = _ops.linear_relu_grad.default
_linear_batched = _ops.linear_batched.default
_tracing_state = torch._C._get_tracing_state  # not None while torch.jit.trace records


def _fake_linear(input, weight, bias):
    torch._check(input.dim() == 2 and weight.dim() == 2,
                 lambda: "torchext.linear: expected 2-D 'input' and 'weight'")
    torch._check(input.shape[1] == weight.shape[1],
                 lambda: "torchext.linear: 'input' %s and 'weight' %s shapes cannot be multiplied"
                 % (tuple(input.shape), tuple(weight.shape)))
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == weight.shape[0],
                     lambda: "torchext.linear: expected 'bias' of shape [out_features]")
    return input.new_empty((input.shape[0], weight.shape[0]))


torch.library.register_fake("torchext::linear")(_fake_linear)
torch.library.register_fake("torchext::linear_relu")(_fake_linear)


@torch.library.register_fake("torchext::linear_batched")
def _linear_batched_fake(input, weight, bias, relu):
    torch._check(input.dim() == 3 and weight.dim() == 3 and input.shape[0] == weight.shape[0],
                 lambda: "torchext.linear_batched: expected 'input' [E, M, K] and 'weight' [E, N, K]")
    torch._check(input.shape[2] == weight.shape[2],
                 lambda: "torchext.linear_batched: 'input' %s and 'weight' %s shapes cannot be multiplied"
                 % (tuple(input.shape), tuple(weight.shape)))
    if bias is not None:
        torch._check(bias.shape == weight.shape[:2],
                     lambda: "torchext.linear_batched: expected 'bias' of shape [E, out_features]")
    return input.new_empty((input.shape[0], input.shape[1], weight.shape[1]))


@torch.library.register_fake("torchext::linear_bias_grad")
def _linear_bias_grad_fake(grad_output):
    torch._check(grad_output.dim() == 2, lambda: "torchext.linear_bias_grad: expected 2-D 'grad_output'")
    return grad_output.new_empty((grad_output.shape[1],))


@torch.library.register_fake("torchext::linear_relu_grad")
def _linear_relu_grad_fake(grad_output, result):
    torch._check(grad_output.dim() == 2 and grad_output.shape == result.shape,
                 lambda: "torchext.linear_relu_grad: 'result' must have the 2-D shape of 'grad_output'")
    return (torch.empty_like(grad_output, memory_format=torch.contiguous_format),
            grad_output.new_empty((grad_output.shape[1],)))


def _linear_vmap(op, relu):
    def rule(info, in_dims, input, weight, bias):
        x_dim, w_dim, b_dim = in_dims
        size = info.batch_size
        if w_dim is None and b_dim is None:  # shared weights: the batch is more rows
            x = input.movedim(x_dim, 0)
            out = op(x.reshape(-1, x.shape[-1]), weight, bias)
            return out.reshape(x.shape[0], x.shape[1], out.shape[1]), 0
        if x_dim is None:
            # One input through a batch of weights (a model ensemble): the weights stacked as more
            # output features, one GEMM, then split back per entry.
            w = batch_first(weight, w_dim, size)
            out_features = w.shape[1]
            b = None if bias is None else batch_first(bias, b_dim, size).reshape(size * out_features)
            out = op(input, w.reshape(size * out_features, w.shape[2]), b)
            return out.reshape(input.shape[0], size, out_features).movedim(1, 0), 0
        # Inputs and weights both batched (per-sample weight gradients): one GEMM per entry, in one
        # call. An unbatched bias is broadcast (a zero-stride view, no copy).
        b = None if bias is None else batch_first(bias, b_dim, size)
        return _linear_batched(input.movedim(x_dim, 0), batch_first(weight, w_dim, size), b, relu), 0
    return rule


def _column_sums_vmap(op):
    # Per-entry column sums of [rows, cols] entries are the column sums of one [rows, batch * cols]
    # matrix (the entries side by side): one call for the whole batch.
    def rule(info, in_dims, *args):
        size = info.batch_size
        batched = [batch_first(a, d, size) for a, d in zip(args, in_dims)]
        rows, cols = batched[0].shape[1], batched[0].shape[2]
        out = op(*(a.movedim(0, 1).reshape(rows, size * cols) for a in batched))
        if isinstance(out, tuple):  # linear_relu_grad: (masked [rows, batch * cols], sums)
            return (out[0].reshape(rows, size, cols).movedim(1, 0), out[1].reshape(size, cols)), (0, 0)
        return out.reshape(size, cols), 0
    return rule


def _linear_batched_vmap(info, in_dims, input, weight, bias, relu):
    # A batch of batches (nested vmap): the two batch dims merged into one list of entries.
    size = info.batch_size
    x, w = batch_first(input, in_dims[0], size), batch_first(weight, in_dims[1], size)
    b = None if bias is None else batch_first(bias, in_dims[2], size).flatten(0, 1)
    out = _linear_batched(x.flatten(0, 1), w.flatten(0, 1), b, relu)
    return out.reshape(size, x.shape[1], out.shape[1], out.shape[2]), 0


register_vmap(_linear_batched, _linear_batched_vmap)
register_vmap(_linear, _linear_vmap(_linear, False))
register_vmap(_linear_relu, _linear_vmap(_linear_relu, True))
for _op in (_linear_bias_grad, _linear_relu_grad):
    register_vmap(_op, _column_sums_vmap(_op))


# Sharding rules for DTensor inputs (see torchext._distributed), per mesh dim; DTensor combines them
# over the dims of a larger mesh and redistributes inputs to the cheapest rule that applies.
# out = input @ weight.T + bias, input [M, K], weight [N, K], bias [N] or None:
#   rows of input sharded (data / sequence parallel)        -> rows of out sharded
#   rows of weight and bias sharded (ColwiseParallel)       -> columns of out sharded
#   K sharded in input and weight (RowwiseParallel)         -> partial sums, with the bias split
#                                                              into partial terms so it is added once
#   input or weight partial (it is linear in each)          -> partial sums, bias likewise
# The ReLU of linear_relu is not linear, so it has no rule with partial sums: a K-sharded input is
# gathered (or the weight resharded) first.
def _linear_rules(bias, relu):
    from torch.distributed.tensor import Partial, Replicate, Shard
    r, p, s0, s1 = Replicate(), Partial(), Shard(0), Shard(1)
    b = (lambda placement: None) if bias is None else (lambda placement: placement)
    rules = [([r], [r, r, b(r)]), ([s0], [s0, r, b(r)]), ([s1], [r, s0, b(s0)])]
    if not relu:
        rules += [([p], [s1, s1, b(p)]), ([p], [p, r, b(p)]), ([p], [r, p, b(p)])]
    return rules


@register_sharding(_linear)
def _linear_sharding(input, weight, bias):
    return _linear_rules(bias, relu=False)


@register_sharding(_linear_relu)
def _linear_relu_sharding(input, weight, bias):
    return _linear_rules(bias, relu=True)


@register_sharding(_linear_batched)
def _linear_batched_sharding(input, weight, bias, relu):
    # Entries [E, ...] of one GEMM each: E, the rows M or the output features N may be sharded. No
    # rule shards K: its partial sums would not pass the ReLU, and DTensor caches a rule without
    # looking at the bool `relu`, so the rules must not depend on it.
    from torch.distributed.tensor import Replicate, Shard
    r = Replicate()
    b = (lambda placement: None) if bias is None else (lambda placement: placement)
    return [([r], [r, r, b(r)]), ([Shard(0)], [Shard(0), Shard(0), b(Shard(0))]),
            ([Shard(1)], [Shard(1), r, b(r)]), ([Shard(2)], [r, Shard(1), b(Shard(1))])]


@register_sharding(_linear_bias_grad)
def _linear_bias_grad_sharding(grad_output):
    # Column sums of [M, N]: sharded rows give partial sums, sharded columns sharded sums.
    from torch.distributed.tensor import Partial, Replicate, Shard
    return [([Replicate()], [Replicate()]), ([Partial()], [Shard(0)]), ([Shard(0)], [Shard(1)]),
            ([Partial()], [Partial()])]


@register_sharding(_linear_relu_grad)
def _linear_relu_grad_sharding(grad_output, result):
    # (grad_output * (result > 0), its column sums): elementwise, then linear_bias_grad's rules; linear
    # in grad_output, so partial grad_output with the result whole is partial in both outputs.
    from torch.distributed.tensor import Partial, Replicate, Shard
    r, p = Replicate(), Partial()
    return [([r, r], [r, r]), ([Shard(0), p], [Shard(0), Shard(0)]), ([Shard(1), Shard(0)], [Shard(1), Shard(1)]),
            ([p, p], [p, r])]


def _check_args(name, input, weight, bias):
    for arg, value in (("input", input), ("weight", weight)):
        if not isinstance(value, torch.Tensor):
            raise TypeError("%s(): argument '%s' must be Tensor, not %s" % (name, arg, type(value).__name__))
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError("%s(): argument 'bias' must be Tensor, not %s" % (name, type(bias).__name__))
    strided = torch.strided
    if input.layout != strided or weight.layout != strided or (bias is not None and bias.layout != strided):
        for arg, value in (("input", input), ("weight", weight), ("bias", bias)):
            if value is not None and value.layout != strided:
                raise NotImplementedError("%s(): expected '%s' to be a dense (strided) tensor, but got layout %s"
                                          % (name, arg, value.layout))
    if input.dim() == 0 or weight.dim() == 0:
        raise RuntimeError("%s(): both arguments to linear need to be at least 1D, but they are %dD and %dD"
                           % (name, input.dim(), weight.dim()))
    if weight.dim() > 2:
        raise RuntimeError("%s(): expected 'weight' to be 2-D [out_features, in_features] (or 1-D [in_features]), "
                           "but got shape %s" % (name, tuple(weight.shape)))
    if input.shape[-1] != weight.shape[-1]:
        raise RuntimeError("%s(): 'input' %s and 'weight' %s shapes cannot be multiplied (in_features %d != %d)"
                           % (name, tuple(input.shape), tuple(weight.shape), input.shape[-1], weight.shape[-1]))
    if weight.dim() == 1 and bias is not None and (input.dim() != 1 or bias.dim() != 0):
        # torch allows a bias with a 1-D weight only for a 1-D input (a dot product plus a scalar).
        raise RuntimeError("%s(): a 1-D 'weight' takes only a 0-dim 'bias', and only with a 1-D 'input', but "
                           "'input' has shape %s and 'bias' %s" % (name, tuple(input.shape), tuple(bias.shape)))


def _apply(op, name, input, weight, bias):
    _check_args(name, input, weight, bias)
    input, weight, bias = autocast_inputs("lower", input, weight, bias)  # as torch.autocast treats aten::linear
    if input.is_complex() or weight.is_complex() or (bias is not None and bias.is_complex()):
        return _complex(name, input, weight, bias)
    if bias is not None and weight.dim() == 2 and bias.shape != weight.shape[:1]:
        # torch adds any bias that broadcasts to the output (a scalar, a [batch, out] matrix, ...):
        # the GEMM without it, then the addition (autograd sums its gradient back to its shape).
        out_shape = input.shape[:-1] + weight.shape[:1]
        try:
            fits = torch.broadcast_shapes(bias.shape, out_shape) == out_shape
        except RuntimeError:
            fits = False
        if not fits:
            raise RuntimeError("%s(): expected 'bias' of shape [%d] (out_features) or one that broadcasts to the "
                               "output %s, but got %s" % (name, weight.shape[0], list(out_shape), list(bias.shape)))
        if bias.dtype != input.dtype:  # the addition would promote; torch refuses, as the kernels do
            raise RuntimeError("%s(): expected 'input' and 'bias' to have the same dtype, but got %s and %s"
                               % (name, input.dtype, bias.dtype))
        out = _apply(_linear, name, input, weight, None) + bias
        return _relu(out) if name == "linear_relu" else out
    if weight.dim() == 1:
        # A 1-D weight [in] is one output feature whose dim is dropped from the result, as in torch:
        # [..., in] -> [...]. Its bias (1-D input only) is a single value.
        out = _apply_checked(op, input, weight.unsqueeze(0), None if bias is None else bias.reshape(1))
        return out.squeeze(-1)
    return _apply_checked(op, input, weight, bias)


def _apply_checked(op, input, weight, bias):
    """op on checked, autocast inputs with a 2-D weight; input [..., in] -> [..., out]."""
    if input.dim() == 2:  # the common case, without the reshapes (they cost microseconds)
        return op(input, weight, bias)
    # Any leading dims are flattened into the batch ([..., in] -> [B, in]) and restored after;
    # a 1-D input [in] is a batch of one whose output is [out], as in torch.
    lead = input.shape[:-1]
    x2 = input.reshape(math.prod(lead), input.shape[-1])
    out = op(x2, weight, bias)
    return out.reshape(*lead, weight.shape[0])


def _complex(name, input, weight, bias):
    """Complex linear through the real GEMM, as one real product of twice the size: with
    x = xr + i xi and W = Wr + i Wi, x W^T = [xr, xi] [Wr, -Wi]^T + i [xr, xi] [Wi, Wr]^T, so the
    real input [xr, xi] times the stacked real weight [[Wr, -Wi], [Wi, Wr]] gives the real parts
    in its first half of the output features and the imaginary parts in its second. Built from
    differentiable views and concatenations, so autograd (and gradcheck on complex inputs) follow."""
    if name == "linear_relu":
        raise NotImplementedError("%s(): ReLU is not defined for complex values (torch.relu refuses complex "
                                  "tensors too)" % name)
    for arg, value in (("weight", weight), ("bias", bias)):
        if value is not None and value.dtype != input.dtype:
            raise RuntimeError("%s(): expected 'input' and '%s' to have the same dtype, but got %s and %s"
                               % (name, arg, input.dtype, value.dtype))
    real = torch.view_as_real
    x = real(input.resolve_conj())  # [..., in, 2]
    w = real(weight.resolve_conj())
    x2 = torch.cat([x[..., 0], x[..., 1]], dim=-1)
    w_r, w_i = w[..., 0], w[..., 1]
    top, bottom = torch.cat([w_r, -w_i], dim=-1), torch.cat([w_i, w_r], dim=-1)
    if weight.dim() == 1:  # one output feature (its dim dropped below)
        w2, n = torch.stack([top, bottom]), 1
    else:
        w2, n = torch.cat([top, bottom], dim=0), weight.shape[0]
    b2 = None
    if bias is not None and (bias.shape == (n,) or (weight.dim() == 1 and bias.numel() == 1)):
        b = real(bias.resolve_conj()).reshape(n, 2)
        b2, bias = torch.cat([b[:, 0], b[:, 1]]), None
    out2 = _apply(_linear, name, x2, w2, b2)
    out = torch.complex(out2[..., :n], out2[..., n:])
    if weight.dim() == 1:
        out = out.squeeze(-1)
    return out if bias is None else out + bias


def _scripted(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
    """linear / linear_relu as torch.jit.script compiles them: _apply is Python that TorchScript
    cannot compile, so scripted code takes this path instead, with the same shapes and results for
    real and integer dtypes. The ops check the rest (dtypes, devices, in_features), with their own
    messages and exception types; complex inputs and autocast are eager-only."""
    if input.dim() == 0 or weight.dim() == 0 or weight.dim() > 2:
        raise RuntimeError("linear(): expected an 'input' of at least 1-D and a 1-D or 2-D 'weight', but got "
                           "{}-D and {}-D".format(input.dim(), weight.dim()))
    w = weight if weight.dim() == 2 else weight.unsqueeze(0)
    fused: Optional[torch.Tensor] = None  # a bias of shape [out_features], added in the GEMM's epilogue
    added: Optional[torch.Tensor] = None  # any other bias that broadcasts to the output, added after
    if bias is not None:
        if weight.dim() == 1:
            if input.dim() != 1 or bias.dim() != 0:
                raise RuntimeError("linear(): a 1-D 'weight' takes only a 0-dim 'bias', and only with a 1-D "
                                   "'input'")
            fused = bias.reshape(1)
        elif bias.shape == w.shape[:1]:
            fused = bias
        elif bias.dtype != input.dtype:
            raise RuntimeError("linear(): expected 'input' and 'bias' to have the same dtype, but got {} and {}"
                               .format(input.dtype, bias.dtype))
        else:
            added = bias
    lead: List[int] = input.shape[:-1]
    rows = 1
    for size in lead:
        rows *= size
    x = input if input.dim() == 2 else input.reshape(rows, input.shape[-1])
    if relu and added is None:
        out = torch.ops.torchext.linear_relu(x, w, fused)
    else:
        out = torch.ops.torchext.linear(x, w, fused)
    if input.dim() != 2:
        out = out.reshape(lead + [w.shape[0]])
    if added is not None:
        out = out + added
        if relu:
            out = torch.ops.torchext.relu(out)
    return out if weight.dim() == 2 else out.squeeze(-1)


def _eager(op, name, input, weight, bias):
    if _tracing_state() is None:
        return _apply(op, name, input, weight, bias)
    # Under torch.jit.trace, sizes are traced tensors, and the argument checks' comparisons of
    # single sizes would each warn that a tensor became a Python bool. The checks do not shape the
    # graph (the path taken depends on the parameters' shapes, fixed in a traced module), so the
    # trace stays quiet, as it does for torch's own Linear.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return _apply(op, name, input, weight, bias)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Drop-in for torch.nn.functional.linear: input @ weight.T + bias over the last dim."""
    if torch.jit.is_scripting():
        return _scripted(input, weight, bias, False)
    else:
        return _eager(_linear, "linear", input, weight, bias)


def linear_relu(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """relu(linear(input, weight, bias)) with the ReLU fused into the GEMM's epilogue."""
    if torch.jit.is_scripting():
        return _scripted(input, weight, bias, True)
    else:
        return _eager(_linear_relu, "linear_relu", input, weight, bias)
