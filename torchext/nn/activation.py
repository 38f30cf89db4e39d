import torch

from .. import functional as F


class ReLU(torch.nn.ReLU):
    """Drop-in for torch.nn.ReLU: y = max(x, 0), computed by torchext's kernels. A subclass of
    torch.nn.ReLU, so that code checking isinstance(m, torch.nn.ReLU) treats it as one."""

    __constants__ = ["inplace"]

    def __init__(self, inplace: bool = False):
        super().__init__(inplace)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, inplace=self.inplace)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""
