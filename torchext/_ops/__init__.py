"""Python side of each op: argument handling, its fake (meta) kernel for torch.compile and its vmap
rule. The ops' autograd, reverse and forward mode, is C++ (csrc/autograd/)."""
from . import relu  # noqa: F401
from . import linear  # noqa: F401
from . import mse_loss  # noqa: F401
from . import optim  # noqa: F401
