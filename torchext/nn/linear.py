import torch

from .. import functional as F


class Linear(torch.nn.Linear):
    """Drop-in for torch.nn.Linear (same parameters, initialisation, repr and state_dict), with
    the forward and backward computed by torchext's GEMM kernels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


class LinearReLU(torch.nn.Linear):
    """relu(Linear(input)) in one kernel: torch.nn.Linear's parameters and state_dict, with the
    ReLU fused into the GEMM's epilogue. Loads a torch.nn.Linear's state_dict and vice versa."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear_relu(input, self.weight, self.bias)
