"""DTensor support (torch.distributed.tensor: FSDP2, tensor parallel, distributed checkpoints), set up
once torch.distributed.tensor is imported.

Importing torch.distributed.tensor costs about half a second (it registers DTensor's rules for every
aten op), a third of torchext's own import, and programs that never shard a tensor need none of it.
A DTensor cannot exist before that package is imported, so torchext waits for it: the ops' sharding
rules (`register_sharding`) and the `DTensor` class the optimizers test params against are set up
when the package finishes importing, at once if it already has. Until then `DTensor` is None.
"""
import importlib.abc
import importlib.util
import sys
import warnings

_PACKAGE = "torch.distributed.tensor"

DTensor = None  # torch.distributed.tensor.DTensor once that package is imported

_rules = []  # (op, rule) for DTensor's sharding propagator, registered on the package's import


def register_sharding(op):
    """Decorator: `rule` becomes op's sharding rule for DTensor inputs, as
    torch.distributed.tensor.experimental.register_sharding takes it (the op's arguments, tensors as
    DTensorSpecs; returns a list of (output placements, input placements), one placement per output
    and per tensor input, None for an absent optional tensor), registered once DTensor is there."""
    def wrap(rule):
        _rules.append((op, rule))
        if DTensor is not None:
            _register(op, rule)
        return rule
    return wrap


def _register(op, rule):
    try:
        from torch.distributed.tensor.experimental import register_sharding as register
        register(op)(rule)
    except Exception as e:  # a torch whose DTensor API moved: the import that got here must still work
        warnings.warn("torchext: could not register the DTensor sharding rule of %s (%s: %s); the op will fail "
                      "on DTensors" % (op, type(e).__name__, e))


def _on_import():
    global DTensor
    from torch.distributed.tensor import DTensor as cls
    DTensor = cls
    for op, rule in _rules:
        _register(op, rule)


class _Loader(importlib.abc.Loader):
    """The package's own loader, then _on_import()."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _on_import()

    def __getattr__(self, name):  # resource readers and the like: the package's loader answers
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds torch.distributed.tensor through the other finders and wraps its loader; once."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _PACKAGE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install():
    import torch.distributed

    if not torch.distributed.is_available():  # a torch built without it: no DTensors, ever
        return
    if _PACKAGE in sys.modules:
        _on_import()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
