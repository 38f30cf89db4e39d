"""Module drop-ins for torch.nn."""
from .activation import ReLU
from .linear import Linear, LinearReLU

__all__ = ["Linear", "LinearReLU", "ReLU"]
