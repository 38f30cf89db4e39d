"""torchext: hand-written C++/CUDA kernels for Linear, ReLU, MSE loss and fused optimizers.

Drop-in replacements for the matching pieces of torch.nn and torch.optim:

    import torchext
    model = torch.nn.Sequential(torchext.nn.Linear(1000, 100), torchext.nn.ReLU(), torchext.nn.Linear(100, 10))
    loss_fn = torchext.nn.MSELoss(reduction="sum")
"""
from ._loader import load_extension as _load_extension

_C = _load_extension()

from . import _ops  # noqa: E402  (registers fake kernels and autograd wrappers; needs _C loaded)
from . import functional, nn  # noqa: E402
from . import optim  # noqa: E402
from . import _distributed  # noqa: E402

_distributed.install()  # DTensor support, once torch.distributed.tensor is imported

__version__ = "0.1.0"

__all__ = ["functional", "nn", "optim", "__version__"]
