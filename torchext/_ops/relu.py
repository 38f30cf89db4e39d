"""ReLU: fake kernels and autograd wrappers around torch.ops.torchext.relu*."""
import torch

from ._util import differentiable, function, function_for, is_non_overlapping_and_dense, with_jvp

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


@with_jvp
class ReLUBackward(torch.autograd.Function):
    """grad_input = grad_output where result > 0. Linear in grad_output, so its own backward and
    its tangent are itself again; the mask is piecewise constant in result, so result gets no
    gradient."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_output, result):
        return _relu_backward(grad_output, result)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad_grad):
        (result,) = ctx.saved_tensors
        return relu_grad(grad_grad, result), None

    @staticmethod
    def tangent(ctx, grad_output_t, result_t):
        (result,) = ctx.saved_tensors
        return None if grad_output_t is None else relu_grad(grad_output_t, result)


def relu_grad(grad_output, result):
    """grad_output where result > 0; through the Function only when derivatives of it may be taken."""
    if differentiable():
        return function(ReLUBackward).apply(grad_output, result)
    return _relu_backward(grad_output, result)


@with_jvp
class ReLUFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return _relu(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return relu_grad(grad_output, result)

    @staticmethod
    def tangent(ctx, input_t):
        (result,) = ctx.saved_tensors
        return relu_grad(input_t, result)


@with_jvp
class ReLUInplaceFunction(torch.autograd.Function):
    @staticmethod
    def forward(input):
        _relu_(input)
        return input

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_dirty(output)
        ctx.save_for_backward(output)  # the input, which now holds the result
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return relu_grad(grad_output, result)

    @staticmethod
    def tangent(ctx, input_t):
        # The input was modified in place, so its tangent is too (forward-mode AD requires it):
        # zero where result <= 0, kept elsewhere (NaN included), as relu_backward does.
        (result,) = ctx.saved_tensors
        return input_t.masked_fill_(result <= 0, 0)


def relu(input, inplace=False):
    if not isinstance(input, torch.Tensor):
        raise TypeError("relu(): argument 'input' must be Tensor, not %s" % type(input).__name__)
    if inplace:
        return function(ReLUInplaceFunction).apply(input)  # also bumps the version counter for autograd
    fn = function_for(ReLUFunction, input)
    return _relu(input) if fn is None else fn.apply(input)
