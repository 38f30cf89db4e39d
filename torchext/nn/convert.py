"""torchext.nn.convert: swap torch.nn pieces of an existing model for torchext's."""
import copy

import torch

from .activation import ReLU
from .linear import Linear, LinearReLU
from .loss import MSELoss


def _linear_like(cls, linear):
    # Built on the meta device, then given the original Parameter objects: weights are preserved
    # exactly, and an optimizer built on the old model still steps the converted one.
    new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    new.weight = linear.weight
    if linear.bias is not None:
        new.bias = linear.bias
    new.train(linear.training)
    return new


def _has_hooks(module):
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _swap(module, fuse):
    """The torchext replacement for module, or None to keep it."""
    kind = type(module)
    if _has_hooks(module):
        return None  # a hook expects the exact module it was registered on
    if kind is torch.nn.Linear:
        return _linear_like(Linear, module)
    if kind is torch.nn.ReLU:
        new = ReLU(inplace=module.inplace)
        new.train(module.training)
        return new
    if kind is torch.nn.MSELoss:
        new = MSELoss(reduction=module.reduction)
        new.train(module.training)
        return new
    return None


def _convert_children(parent, fuse):
    names = list(parent._modules)
    for i, name in enumerate(names):
        child = parent._modules[name]
        if child is None:
            continue
        nxt = parent._modules[names[i + 1]] if i + 1 < len(names) else None
        if (fuse and isinstance(parent, torch.nn.Sequential) and type(child) in (torch.nn.Linear, Linear)
                and type(nxt) in (torch.nn.ReLU, ReLU) and not _has_hooks(child) and not _has_hooks(nxt)):
            # Linear -> ReLU inside a Sequential becomes one fused module; the ReLU's slot keeps an
            # Identity so indices and state_dict keys stay those of the original model.
            parent._modules[name] = _linear_like(LinearReLU, child)
            parent._modules[names[i + 1]] = torch.nn.Identity()
            continue
        replacement = _swap(child, fuse)
        if replacement is not None:
            parent._modules[name] = replacement
        else:
            _convert_children(child, fuse)


def convert(model, inplace=False, fuse=True):
    """Return `model` with every torch.nn.Linear, ReLU and MSELoss replaced by torchext's module.

    Weights are kept exactly (the converted modules hold the same Parameter objects). With
    `fuse=True`, a Linear directly followed by a ReLU inside an nn.Sequential becomes one
    LinearReLU (its slot for the ReLU holds an nn.Identity, so state_dict keys do not change).
    Modules with hooks are left alone. With `inplace=False` (the default) the model is deep-copied
    first and the original is untouched.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError("convert(): argument 'model' must be an nn.Module, not %s" % type(model).__name__)
    if not inplace:
        model = copy.deepcopy(model)
    replacement = _swap(model, fuse)
    if replacement is not None:
        return replacement
    _convert_children(model, fuse)
    return model
