"""Fused drop-in replacements for torch.optim.SGD, Adam and AdamW."""
from .adam import Adam, AdamW
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW"]
