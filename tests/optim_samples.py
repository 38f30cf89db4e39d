"""opcheck samples for the fused optimizer ops (used by tests/test_opcheck.py)."""
import torch


def optim_op_samples(op, dtype, device):
    """(args, kwargs) pairs covering optional lists, a zero-element tensor, tensor lr and the
    GradScaler scalars; master weights only where the kernels accept them (half types)."""
    shapes = [(5, 3), (0,), (7,)]
    ps = [torch.randn(s, dtype=torch.float64, device=device).to(dtype) for s in shapes]
    grads = [torch.randn_like(p) for p in ps]
    zeros = lambda: [torch.zeros_like(p) for p in ps]
    counters = lambda value=0.0: [torch.full((), value, device=device) for _ in ps]
    half = dtype in (torch.float16, torch.bfloat16)
    masters = lambda: [p.float() for p in ps] if half else []
    scalar = lambda v: torch.full((), v, device=device)
    if op == "sgd_step_":
        return [
            ((ps, grads, zeros(), counters(), masters(), 1e-2, 0.9, 0.1, 0.01, False, False, None, None, None), {}),
            ((ps, grads, [], [], [], 1e-2, 0.0, 0.0, 0.0, False, True, scalar(0.05), scalar(8.0), scalar(0.0)), {}),
            ((ps, grads, zeros(), counters(3.0), [], 1e-2, 0.9, 0.0, 0.0, True, False, None, None, scalar(1.0)), {}),
        ]
    if op == "adam_step_":
        return [
            ((ps, grads, zeros(), zeros(), [], counters(), masters(), 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False,
              False, None, None, None), {}),
            ((ps, grads, zeros(), zeros(), zeros(), counters(4.0), [], 1e-3, 0.8, 0.99, 1e-6, 0.1, True, True,
              True, scalar(2e-3), scalar(4.0), scalar(0.0)), {}),
        ]
    raise ValueError(op)
