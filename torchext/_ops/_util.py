"""Small helpers shared by the ops' Python wrappers."""


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
