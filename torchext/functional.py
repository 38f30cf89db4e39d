"""Functional drop-ins for torch.nn.functional."""
from ._ops.relu import relu

__all__ = ["relu"]
