"""Small helpers shared by the ops' Python wrappers."""
import torch
from torch.autograd import forward_ad as _forward_ad

_transforms_active = torch._C._are_functorch_transforms_active


def tangents_possible():
    """Whether forward-mode derivatives may be asked for: a forward-mode AD level is open, or a
    torch.func transform (jvp, jacfwd, vmap, grad, ...) is active."""
    return _forward_ad._current_level >= 0 or _transforms_active()


def function_for(cls, *tensors):
    """The variant of a with_jvp Function a forward call must go through, or None when nothing is
    to be recorded and the bare kernel may run (autograd.Function costs microseconds per call):
    cls.with_jvp while tangents are possible, cls when grad mode is on and some input requires
    grad."""
    if _forward_ad._current_level >= 0 or _transforms_active():
        return cls.with_jvp
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return cls
    return None


def with_jvp(cls):
    """Class decorator for our autograd.Functions, written in the setup_context style (a forward
    without ctx, a setup_context, a backward) plus a forward-mode rule in a `tangent` staticmethod
    (jvp's signature). It makes two classes of one definition:

    - cls itself becomes the classic style (forward(ctx, ...) calling both): applying a
      setup_context-style Function costs several times more per call, and torch.compile cannot
      trace a Function that defines jvp (it breaks the graph), so this is what ordinary calls use;
    - cls.with_jvp keeps the setup_context style and has `tangent` as its jvp: forward-mode AD and
      the torch.func transforms (which require that style) get it from function_for and call.
    """
    run, save = cls.forward, cls.setup_context

    def forward(ctx, *args):
        output = run(*args)
        save(ctx, args, output)
        return output

    def save_with_tangents(ctx, inputs, output):
        ctx.tangents = True  # keep() then saves for the jvp too
        save(ctx, inputs, output)

    cls.with_jvp = type(cls.__name__, (cls,), {
        "forward": staticmethod(run), "setup_context": staticmethod(save_with_tangents),
        "jvp": staticmethod(cls.tangent), "__doc__": cls.__doc__, "__module__": cls.__module__})
    cls.forward = staticmethod(forward)
    del cls.setup_context  # back to torch's default: the classic style
    return cls


def keep(ctx, *tensors):
    """ctx.save_for_backward(*tensors) for a with_jvp Function's setup_context; in its with_jvp
    variant also ctx.save_for_forward, which the jvp reads (ordinary calls skip that cost)."""
    ctx.save_for_backward(*tensors)
    if getattr(ctx, "tangents", False):
        ctx.save_for_forward(*tensors)


def call(cls, *args):
    """cls's kernel on args where derivatives of the result may be taken (the pieces of a backward or
    of a tangent): through the Function while grad mode is on (a create_graph backward records a
    graph) or tangents are possible (its with_jvp variant then); otherwise the bare kernel cls.op,
    which knows nothing of autograd but saves the microseconds an autograd.Function costs."""
    if _forward_ad._current_level >= 0 or _transforms_active():
        return cls.with_jvp.apply(*args)
    if torch.is_grad_enabled():
        return cls.apply(*args)
    return cls.op(*args)


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
