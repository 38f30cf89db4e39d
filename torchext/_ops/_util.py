"""Small helpers shared by the ops' Python wrappers."""
import torch



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
