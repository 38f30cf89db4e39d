"""ReLU: fake kernels and autograd wrappers around torch.ops.torchext.relu*."""
import torch

from ._util import is_non_overlapping_and_dense

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


class ReLUBackward(torch.autograd.Function):
    """grad_input = grad_output where result > 0. Linear in grad_output, so its own backward is
    itself; the mask is piecewise constant in result, so result gets no gradient."""

    @staticmethod
    def forward(ctx, grad_output, result):
        ctx.save_for_backward(result)
        return _relu_backward(grad_output, result)

    @staticmethod
    def backward(ctx, grad_grad):
        (result,) = ctx.saved_tensors
        return ReLUBackward.apply(grad_grad, result), None


def _relu_grad(grad_output, result):
    # Only a create_graph backward (grad mode on) needs the differentiable node.
    if torch.is_grad_enabled():
        return ReLUBackward.apply(grad_output, result)
    return _relu_backward(grad_output, result)


class ReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        result = _relu(input)
        ctx.save_for_backward(result)
        return result

    @staticmethod
    def backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return _relu_grad(grad_output, result)


class ReLUInplaceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        _relu_(input)
        ctx.mark_dirty(input)
        ctx.save_for_backward(input)  # input now holds the result
        return input

    @staticmethod
    def backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return _relu_grad(grad_output, result)


def relu(input, inplace=False):
    if not isinstance(input, torch.Tensor):
        raise TypeError("relu(): argument 'input' must be Tensor, not %s" % type(input).__name__)
    if inplace:
        return ReLUInplaceFunction.apply(input)  # also bumps the version counter for autograd
    if input.requires_grad and torch.is_grad_enabled():
        return ReLUFunction.apply(input)
    return _relu(input)
