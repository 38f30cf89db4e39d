"""ReLU: the functional form, fake kernels and vmap rules for torch.ops.torchext.relu*.

Every call goes straight to the ops; their autograd (graph nodes and forward-mode tangents) is C++,
csrc/autograd/relu.cpp."""
import torch

from .._distributed import register_sharding
from ._util import elementwise_vmap, is_non_overlapping_and_dense, register_vmap, transforms_active

_ops = torch.ops.torchext
# Resolved overloads: calling them skips the packet lookup on every call (small activations are
# dominated by per-call overhead).
_relu = _ops.relu.default
_relu_ = _ops.relu_.default
_relu_backward = _ops.relu_backward.default


@torch.library.register_fake("torchext::relu")
def _relu_fake(self):
    # Mirrors the kernel: a dense input keeps its strides, anything else comes out contiguous.
    if is_non_overlapping_and_dense(self):
        return torch.empty_like(self)
    return torch.empty_like(self, memory_format=torch.contiguous_format)


@torch.library.register_fake("torchext::relu_")
def _relu_inplace_fake(self):
    return None


@torch.library.register_fake("torchext::relu_backward")
def _relu_backward_fake(grad_output, result):
    torch._check(grad_output.shape == result.shape,
                 lambda: "torchext.relu_backward: 'result' must have the shape of 'grad_output'")
    return torch.empty_like(grad_output, memory_format=torch.contiguous_format)


register_vmap(_relu, elementwise_vmap(_relu, 1))
register_vmap(_relu_backward, elementwise_vmap(_relu_backward, 2))


# Sharding rules for DTensor inputs (see torchext._distributed). ReLU is elementwise: any dim may be
# sharded, but partial sums cannot pass through it (relu(a + b) is not relu(a) + relu(b)); its
# backward is linear in grad_output, so a partial grad_output with the result whole gives a partial
# gradient.
@register_sharding(_relu)
def _relu_sharding(self):
    from torch.distributed.tensor import Replicate, Shard
    return [([Replicate()], [Replicate()])] + [([Shard(d)], [Shard(d)]) for d in range(self.ndim)]


@register_sharding(_relu_)
def _relu_inplace_sharding(self):
    from torch.distributed.tensor import Replicate, Shard
    return [([], [Replicate()])] + [([], [Shard(d)]) for d in range(self.ndim)]


@register_sharding(_relu_backward)
def _relu_backward_sharding(grad_output, result):
    from torch.distributed.tensor import Partial, Replicate, Shard
    return ([([Replicate()], [Replicate(), Replicate()]), ([Partial()], [Partial(), Replicate()])]
            + [([Shard(d)], [Shard(d), Shard(d)]) for d in range(grad_output.ndim)])


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Drop-in for torch.nn.functional.relu: max(input, 0), in place if asked."""
    if torch.jit.is_scripting():  # torch.jit.script compiles this branch alone
        if inplace:
            torch.ops.torchext.relu_(input)
            return input
        return torch.ops.torchext.relu(input)
    else:
        if not isinstance(input, torch.Tensor):
            raise TypeError("relu(): argument 'input' must be Tensor, not %s" % type(input).__name__)
        if inplace:
            if transforms_active():
                # Under a torch.func transform: the out-of-place op and a copy back, which every
                # transform handles (relu_ has no vmap rule of its own).
                return input.copy_(_relu(input))
            _relu_(input)  # its autograd kernel records the in-place node, carries the tangent, bumps the version
            return input
        return _relu(input)
