"""Python side of each op: its fake (meta) kernel for torch.compile and its autograd.Function."""
from . import relu  # noqa: F401
from . import linear  # noqa: F401
from . import mse_loss  # noqa: F401
from . import optim  # noqa: F401
