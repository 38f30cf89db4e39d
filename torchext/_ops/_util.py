"""Small helpers shared by the ops' Python wrappers."""
import torch
from torch.autograd import forward_ad as _forward_ad

_transforms_active = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling


def tangents_possible():
    """Whether forward-mode derivatives may be asked for: a forward-mode AD level is open, or a
    torch.func transform (jvp, jacfwd, vmap, grad, ...) is active. The ops' autograd kernels are C++
    (csrc/autograd/), which has no forward mode and which torch.func refuses, so calls made then go
    through the Python autograd.Functions next to each op, which have a jvp."""
    return _forward_ad._current_level >= 0 or _transforms_active()


def keep(ctx, *tensors):
    """Save tensors for the backward and for the jvp of a setup_context-style Function."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def apply(cls, *args):
    """cls.apply(*args), for the calls made while tangents are possible. Under torch.compile or
    torch.export that call runs outside the graph (a graph break): Dynamo cannot trace a Function
    that has a jvp. torch 2.14 stops at it by itself; torch 2.11 traces its forward as plain code
    on functorch's wrapped tensors, which the C++ autograd kernel then refuses."""
    return _apply_outside_graph(cls, *args) if _is_compiling() else cls.apply(*args)


@torch.compiler.disable
def _apply_outside_graph(cls, *args):
    return cls.apply(*args)


def call(cls, *args):
    """cls's kernel on args where derivatives of the result may be taken (the pieces of a backward or
    of a jvp): through the Function while tangents are possible, otherwise the op cls.op, whose C++
    autograd kernel records a graph when grad mode is on (a create_graph backward)."""
    return apply(cls, *args) if tangents_possible() else cls.op(*args)


def is_non_overlapping_and_dense(t):
    """Python twin of at::Tensor::is_non_overlapping_and_dense, for fake kernels: the elements fill
    one contiguous block of memory in some order of the dimensions."""
    if t.dim() == 1:
        return t.shape[0] < 2 or t.stride(0) == 1
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz >= 2):
        if stride != expected:
            return False
        expected *= size
    return True


def autocast_inputs(policy, *tensors):
    """Cast inputs the way torch.autocast casts them for the matching aten op.

    policy "lower": like aten::linear, floating inputs go to the autocast dtype (bf16/fp16);
    policy "fp32": like aten::mse_loss, they go to float32. float64 tensors are left alone, as
    autocast does. The casts happen before our autograd.Function, so autograd records them and
    gradients flow back to the original dtypes exactly as with torch's ops.
    """
    device_type = tensors[0].device.type  # callers pass a tensor first (input), then optional ones
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type) if policy == "lower" else torch.float32
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


# vmap rules for the ops (torch.library.register_vmap). Without them torch.vmap (and the torch.func
# transforms built on it) runs each op through functorch's generic per-entry fallback, which works
# but warns about it on every use.
def batch_first(x, dim, size):
    """x with its vmapped dim first; an unbatched x gets a broadcast (zero-stride) leading dim."""
    return x.movedim(dim, 0) if dim is not None else x.expand(size, *x.shape)


def elementwise_vmap(op, tensor_args):
    """A vmap rule for an op elementwise in its first tensor_args arguments (all of one shape): one
    call over the whole batch."""
    def rule(info, in_dims, *args):
        size = info.batch_size
        batched = [batch_first(a, d, size) for a, d in zip(args[:tensor_args], in_dims[:tensor_args])]
        out = op(*batched, *args[tensor_args:])
        return out, ((0,) * len(out) if isinstance(out, tuple) else 0)
    return rule
