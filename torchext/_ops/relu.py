"""ReLU: fake kernels, vmap rules and forward-mode autograd.Functions for torch.ops.torchext.relu*.

Ordinary calls go straight to the ops, whose autograd kernels are C++ (csrc/autograd/relu.cpp);
the Functions here, with the same backward plus a jvp, serve forward-mode AD and torch.func."""
import torch

from ._util import apply, call, elementwise_vmap, is_non_overlapping_and_dense, keep, tangents_possible

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


torch.library.register_vmap(_relu, elementwise_vmap(_relu, 1))
torch.library.register_vmap(_relu_backward, elementwise_vmap(_relu_backward, 2))


class ReLUBackward(torch.autograd.Function):
    """grad_input = grad_output where result > 0. Linear in grad_output, so its own backward and
    its tangent are itself again; the mask is piecewise constant in result, so result gets no
    gradient."""

    op = staticmethod(_relu_backward)
    generate_vmap_rule = True

    @staticmethod
    def forward(grad_output, result):
        return _relu_backward(grad_output, result)

    @staticmethod
    def setup_context(ctx, inputs, output):
        keep(ctx, inputs[1])

    @staticmethod
    def backward(ctx, grad_grad):
        (result,) = ctx.saved_tensors
        return call(ReLUBackward, grad_grad, result), None

    @staticmethod
    def jvp(ctx, grad_output_t, result_t):
        (result,) = ctx.saved_tensors
        return None if grad_output_t is None else call(ReLUBackward, grad_output_t, result)


class ReLUFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return _relu(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        keep(ctx, output)

    @staticmethod
    def backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return call(ReLUBackward, grad_output, result)

    @staticmethod
    def jvp(ctx, input_t):
        (result,) = ctx.saved_tensors
        return call(ReLUBackward, input_t, result)


def relu(input, inplace=False):
    if not isinstance(input, torch.Tensor):
        raise TypeError("relu(): argument 'input' must be Tensor, not %s" % type(input).__name__)
    if inplace:
        if tangents_possible():
            # The out-of-place Function and a copy back: a Function that returns and saves its
            # input is refused in the setup_context style forward mode needs, and an in-place jvp
            # cannot be vmapped.
            return input.copy_(apply(ReLUFunction, input))
        _relu_(input)  # its autograd kernel (C++) records the in-place node and bumps the version
        return input
    return apply(ReLUFunction, input) if tangents_possible() else _relu(input)
