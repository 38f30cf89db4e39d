"""Module drop-ins for torch.nn, and convert() to swap them into an existing model."""
from .activation import ReLU
from .convert import convert
from .linear import Linear, LinearReLU
from .loss import MSELoss

__all__ = ["Linear", "LinearReLU", "MSELoss", "ReLU", "convert"]
