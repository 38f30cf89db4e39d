"""Module drop-ins for torch.nn."""
from .activation import ReLU

__all__ = ["ReLU"]
