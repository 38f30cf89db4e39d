import torch

from .. import functional as F


class ReLU(torch.nn.Module):
    """Drop-in for torch.nn.ReLU: y = max(x, 0), computed by torchext's kernels."""

    __constants__ = ["inplace"]

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, inplace=self.inplace)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""
