"""Python side of each op: its fake (meta) kernel for torch.compile, its vmap rule, and the
autograd.Functions (with a jvp) that forward-mode AD and torch.func use; the autograd of ordinary
calls is C++ (csrc/autograd/)."""
from . import relu  # noqa: F401
from . import linear  # noqa: F401
from . import mse_loss  # noqa: F401
from . import optim  # noqa: F401
