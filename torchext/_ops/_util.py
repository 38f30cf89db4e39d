"""Small helpers shared by the ops' Python wrappers."""
import torch
from torch._functorch.autograd_function import VmapInfo
from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter
from torch._functorch.vmap import _add_batch_dim

transforms_active = torch._C._are_functorch_transforms_active  # a torch.func transform is running


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
    autocast does. The casts happen before the op is called, so autograd records them and
    gradients flow back to the original dtypes exactly as with torch's ops.
    """
    device_type = tensors[0].device.type  # callers pass a tensor first (input), then optional ones
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type) if policy == "lower" else torch.float32
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


# vmap rules for the ops. Without them torch.vmap (and the torch.func transforms built on it) runs
# each op through functorch's generic per-entry fallback, which works but warns about it on every
# use.
#
# register_vmap(op, rule) registers the rule as torch.library.register_vmap does (a kernel for the
# FuncTorchBatched key, rule(info, in_dims, *args) -> (outputs, out_dims)), with a lean kernel:
# torch's is written for any pytree of arguments and outputs and for outputs that alias inputs,
# and its pytree passes cost about 30 us per call under vmap, more than the ops at the sizes
# vmap is used for (per-sample gradients of a small net). The ops here take tensors, optional
# tensors and scalars and return new tensors (one, or a tuple), which a loop handles.
_IMPL = torch.library.Library("torchext", "IMPL")
_BATCHED = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchBatched)
_unwrap_batched = torch._C._functorch._unwrap_batched


def register_vmap(op, rule):
    def kernel(keyset, *args):
        interpreter = retrieve_current_functorch_interpreter()
        level = interpreter.level()
        unwrapped, in_dims, batched = [], [], False
        for arg in args:
            dim = None
            if isinstance(arg, torch.Tensor):
                arg, dim = _unwrap_batched(arg, level)
                batched = batched or dim is not None
            unwrapped.append(arg)
            in_dims.append(dim)
        with torch._C._ExcludeDispatchKeyGuard(_BATCHED):
            if not batched:  # nothing batched at this level: the op itself, one level down
                return op(*args)
            info = VmapInfo(batch_size=interpreter.batch_size(), randomness=interpreter.randomness())
            out, out_dims = rule(info, tuple(in_dims), *unwrapped)
        if isinstance(out, tuple):
            return tuple(o if d is None else _add_batch_dim(o, d, level) for o, d in zip(out, out_dims))
        return out if out_dims is None else _add_batch_dim(out, out_dims, level)

    _IMPL.impl(op, kernel, "FuncTorchBatched", with_keyset=True)


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
