import torch

from .. import functional as F


class MSELoss(torch.nn.MSELoss):
    """Drop-in for torch.nn.MSELoss: reduce((input - target)^2), computed by torchext's kernels.

    Same constructor (size_average, reduce, reduction with torch's legacy mapping), repr and
    state_dict as torch.nn.MSELoss; a subclass of it, so isinstance checks hold."""

    __constants__ = ["reduction"]

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(size_average, reduce, reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)
