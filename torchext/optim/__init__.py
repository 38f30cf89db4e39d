"""Fused drop-in replacements for torch.optim.SGD, Adam and AdamW."""
from .adam import Adam, AdamW
from ._lowmem import to_torch_state_dict
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "to_torch_state_dict"]
