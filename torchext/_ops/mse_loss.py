"""MSE loss: argument handling, fake kernels and vmap rules for torch.ops.torchext.mse_loss*.

Every call goes straight to the ops; their autograd (graph nodes and forward-mode tangents) is C++,
csrc/autograd/mse_loss.cpp."""
import math
import warnings
from typing import Optional, Tuple

import torch
from torch.nn import _reduction as _Reduction

from .. import _distributed
from .._distributed import register_sharding
from ._util import autocast_inputs, batch_first, elementwise_vmap, is_non_overlapping_and_dense, register_vmap

_ops = torch.ops.torchext

_NONE, _MEAN, _SUM = 0, 1, 2
_FLOAT_TYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_REDUCTION_ENUM = {"none": _NONE, "mean": _MEAN, "sum": _SUM}
# Resolved overloads: calling them skips the packet lookup on every call (small losses are
# dominated by per-call overhead).
_mse_loss = _ops.mse_loss.default
_mse_loss_forward = _ops.mse_loss_forward.default
_mse_loss_backward = _ops.mse_loss_backward.default


def _same_shape(op, name_a, a, name_b, b):
    torch._check(a.shape == b.shape,
                 lambda: "torchext.%s: expected '%s' to have shape %s like '%s', but got %s"
                 % (op, name_b, tuple(a.shape), name_a, tuple(b.shape)))


def _like_common_layout(a, b):
    # Mirrors the kernels: operands sharing one dense layout keep it, anything else is contiguous.
    if is_non_overlapping_and_dense(a) and is_non_overlapping_and_dense(b) and a.stride() == b.stride():
        return torch.empty_like(a)
    return torch.empty_like(a, memory_format=torch.contiguous_format)


@torch.library.register_fake("torchext::mse_loss")
def _mse_loss_fake(input, target, reduction):
    _same_shape("mse_loss", "input", input, "target", target)
    if reduction == _NONE:
        return _like_common_layout(input, target)
    return input.new_empty(())


@torch.library.register_fake("torchext::mse_loss_forward")
def _mse_loss_forward_fake(input, target, reduction):
    _same_shape("mse_loss_forward", "input", input, "target", target)
    diff = _like_common_layout(input, target)
    loss = _like_common_layout(input, target) if reduction == _NONE else input.new_empty(())
    return loss, diff


@torch.library.register_fake("torchext::mse_loss_backward")
def _mse_loss_backward_fake(grad_output, diff, reduction):
    if reduction == _NONE:
        _same_shape("mse_loss_backward", "diff", diff, "grad_output", grad_output)
        return _like_common_layout(grad_output, diff)
    if is_non_overlapping_and_dense(diff):
        return torch.empty_like(diff)
    return torch.empty_like(diff, memory_format=torch.contiguous_format)


# Column sums of a 2-D tensor: linear's bias-gradient kernel, reused for per-entry loss totals.
_column_sums = _ops.linear_bias_grad.default


def _mse_vmap(op):
    # Without a reduction every op is elementwise: one call over the batch. With one, each entry's
    # loss (or its scalar grad_output) is per entry, and still one pass: the elementwise losses of
    # the whole batch, then each entry's total as a column sum of the [numel, batch] matrix.
    elementwise = elementwise_vmap(op, 2)

    def rule(info, in_dims, a, b, reduction):
        if reduction == _NONE:
            return elementwise(info, in_dims, a, b, reduction)
        size = info.batch_size
        a, b = batch_first(a, in_dims[0], size), batch_first(b, in_dims[1], size)
        numel = math.prod(b.shape[1:])
        dtype = b.dtype
        # Half types work in float32, as the per-entry kernels do: their squared differences and
        # grad_output / numel would otherwise each round (and underflow) in the half type.
        if dtype in (torch.float16, torch.bfloat16):
            a, b = a.float(), b.float()
        if op is _mse_loss_backward:  # a: one grad_output per entry, b: diff
            scale = a / numel if reduction == _MEAN else a  # 2 * diff * grad_output [/ numel]
            grad = _mse_loss_backward(scale.reshape((size,) + (1,) * (b.dim() - 1)).expand_as(b), b, _NONE)
            return grad.to(dtype), 0
        losses, diff = _mse_loss_forward(a, b, _NONE)
        total = _column_sums(losses.reshape(size, numel).t())
        if reduction == _MEAN:
            total = total / numel  # an empty entry gives 0/0 = nan, as torch's mean does
        total, diff = total.to(dtype), diff.to(dtype)
        return ((total, diff), (0, 0)) if op is _mse_loss_forward else (total, 0)
    return rule


for _op in (_mse_loss, _mse_loss_forward, _mse_loss_backward):
    register_vmap(_op, _mse_vmap(_op))


# Sharding rules for DTensor inputs (see torchext._distributed). Without a reduction the ops are
# elementwise: input, target, diff and the gradient sharded alike. A sum over sharded inputs is a
# partial sum (DTensor all-reduces it when the loss is read). A mean divides by the element count,
# which on a shard would be the shard's: the ops take a mean only over whole tensors (mse_loss()
# turns a mean over sharded inputs into a sum and one division). mse_loss_backward is linear in
# grad_output and in diff, so either may be partial while the other is whole.
def _mse_rules(ndim, reduction, outputs):
    from torch.distributed.tensor import Partial, Replicate, Shard
    r = Replicate()
    rules = [([r] * outputs, [r, r])]
    if reduction == _NONE:
        rules += [([Shard(d)] * outputs, [Shard(d), Shard(d)]) for d in range(ndim)]
    elif reduction == _SUM:
        rules += [([Partial()] + [Shard(d)] * (outputs - 1), [Shard(d), Shard(d)]) for d in range(ndim)]
    return rules


@register_sharding(_mse_loss)
def _mse_loss_sharding(input, target, reduction):
    return _mse_rules(input.ndim, reduction, outputs=1)


@register_sharding(_mse_loss_forward)
def _mse_loss_forward_sharding(input, target, reduction):
    return _mse_rules(input.ndim, reduction, outputs=2)


@register_sharding(_mse_loss_backward)
def _mse_loss_backward_sharding(grad_output, diff, reduction):
    from torch.distributed.tensor import Partial, Replicate, Shard
    r, p = Replicate(), Partial()
    rules = [([r], [r, r]), ([p], [p, r]), ([p], [r, p])]
    if reduction == _NONE:
        rules += [([Shard(d)], [Shard(d), Shard(d)]) for d in range(diff.ndim)]
    elif reduction == _SUM:  # grad_output is the loss's gradient, one value
        rules += [([Shard(d)], [r, Shard(d)]) for d in range(diff.ndim)]
    return rules


def _split_over_ranks(t):
    """Whether t is a DTensor whose value is spread over ranks (sharded or partial)."""
    cls = _distributed.DTensor
    return cls is not None and isinstance(t, cls) and not all(p.is_replicate() for p in t.placements)


class _NotATensorError(TypeError, AttributeError):
    """A non-tensor argument. torch.nn.functional.mse_loss fails on it with an AttributeError (it
    calls .size() on it); code written against torch may catch that, so this is both."""


def _warn_size_mismatch(input: torch.Tensor, target: torch.Tensor):
    # torch's warning, pointing at the caller of mse_loss.
    warnings.warn(
        f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
        "This will likely lead to incorrect results due to broadcasting. "
        "Please ensure they have the same size.",
        stacklevel=3,
    )


def _promoted(input: torch.Tensor, target: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    # Mixed dtypes promote to torch.result_type (float32 with float64 -> float64, int with float ->
    # float), through differentiable conversions: autograd casts the gradients back to each dtype.
    return input.to(dtype), target.to(dtype)


def _weighted(losses: torch.Tensor, weight: torch.Tensor, reduction: int) -> torch.Tensor:
    # torch's weighted form: elementwise losses times the weight; a weighted mean divides by the
    # weights' sum. reduction is torch's enum (0 none, 1 mean, 2 sum; literals because TorchScript
    # cannot read module-level ints).
    if weight.size() != losses.size():
        raise ValueError("Weights and input must have the same size.")
    weighted = losses * weight
    if reduction == 0:
        return weighted
    if reduction == 2:
        return torch.sum(weighted)
    return torch.sum(weighted) / torch.sum(weight)


def mse_loss(input: torch.Tensor, target: torch.Tensor, size_average: Optional[bool] = None,
             reduce: Optional[bool] = None, reduction: str = "mean", weight: Optional[torch.Tensor] = None
             ) -> torch.Tensor:
    """Drop-in for torch.nn.functional.mse_loss (same arguments, warnings, errors and results)."""
    if torch.jit.is_scripting():
        return _scripted(input, target, size_average, reduce, reduction, weight)
    else:
        for name, value in (("input", input), ("target", target)):
            if not isinstance(value, torch.Tensor):
                raise _NotATensorError("mse_loss(): argument '%s' must be Tensor, not %s"
                                       % (name, type(value).__name__))
        if target.size() != input.size():
            _warn_size_mismatch(input, target)
        if size_average is not None or reduce is not None:
            reduction = _Reduction.legacy_get_string(size_average, reduce)
        reduction_enum = _REDUCTION_ENUM.get(reduction) if isinstance(reduction, str) else None
        if reduction_enum is None:
            reduction_enum = _Reduction.get_enum(reduction)  # ValueError "<x> is not a valid value for reduction"

        input, target = autocast_inputs("fp32", input, target)  # mse_loss is a float32 op under torch.autocast

        # torch promotes mixed dtypes and refuses integer, bool and complex results with
        # NotImplementedError.
        if input.dtype != target.dtype or input.dtype not in _FLOAT_TYPES:
            dtype = torch.result_type(input, target)
            if dtype not in _FLOAT_TYPES:
                raise NotImplementedError(
                    "torchext.mse_loss: 'input' (%s) and 'target' (%s) promote to %s, which is not supported; "
                    "expected float64, float32, float16 or bfloat16" % (input.dtype, target.dtype, dtype))
            input, target = _promoted(input, target, dtype)
        if input.shape != target.shape:
            # Differentiable too: autograd sums each gradient back over the broadcast dimensions.
            input, target = torch.broadcast_tensors(input, target)
        if weight is not None:
            return _weighted(_mse_loss(input, target, _NONE), weight, reduction_enum)
        if reduction_enum == _MEAN and (_split_over_ranks(input) or _split_over_ranks(target)):
            return _sharded_mean(input, target)
        return _mse_loss(input, target, reduction_enum)


def _sharded_mean(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # The kernel's mean would divide each shard's sum by the shard's size: the sum (partial over
    # ranks), then one division by the whole count. Half types sum in float32, as the kernel's mean
    # does, so that a sum beyond the type's range does not overflow on the way.
    dtype = input.dtype
    if dtype in (torch.float16, torch.bfloat16):
        input, target = input.float(), target.float()
    return (_mse_loss(input, target, _SUM) / input.numel()).to(dtype)


def _scripted(input: torch.Tensor, target: torch.Tensor, size_average: Optional[bool], reduce: Optional[bool],
              reduction: str, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """mse_loss as torch.jit.script compiles it: the eager path's Python-only parts (type checks
    with Python's messages, autocast) left out; the op checks dtypes itself, raising the same
    exception type."""
    if target.size() != input.size():
        _warn_size_mismatch(input, target)
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    reduction_enum = _Reduction.get_enum(reduction)
    if input.dtype != target.dtype:
        input, target = _promoted(input, target, torch.result_type(input, target))
    if input.shape != target.shape:
        input, target = torch.broadcast_tensors(input, target)
    if weight is not None:
        return _weighted(torch.ops.torchext.mse_loss(input, target, 0), weight, reduction_enum)
    return torch.ops.torchext.mse_loss(input, target, reduction_enum)
