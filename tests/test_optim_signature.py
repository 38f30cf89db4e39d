"""The optimizer ops' argument lists are declared once (csrc/optim_args.h); torchext/_ops/optim.py
checks its Python argument tuples against the registered schemas at import. These tests show that
the check holds for every op and that a mismatch (a renamed, dropped or reordered argument) is
caught before any step runs."""
import pytest
import torch

import torchext  # noqa: F401
from torchext._ops import optim as optim_ops


@pytest.mark.parametrize("op", sorted(optim_ops.OPTIM_OPS))
def test_python_argument_tuple_matches_schema(op):
    optim_ops.check_signature(op, optim_ops.OPTIM_OPS[op])
    schema = getattr(torch.ops.torchext, op).default._schema
    assert tuple(a.name for a in schema.arguments) == optim_ops.OPTIM_OPS[op]


@pytest.mark.parametrize("op", sorted(optim_ops.OPTIM_OPS))
def test_mismatch_is_caught(op):
    names = list(optim_ops.OPTIM_OPS[op])
    swapped = names[:]
    swapped[5], swapped[6] = swapped[6], swapped[5]
    for bad in (swapped, names[:-1], names + ["extra"], ["param"] + names[1:]):
        with pytest.raises(RuntimeError, match="does not match its schema"):
            optim_ops.check_signature(op, bad)


def test_step_args_refuses_missing_and_unknown_names():
    names = optim_ops.SGD_STEP_ARGS
    values = {n: None for n in names}
    assert optim_ops.step_args(names, **values) == (None,) * len(names)
    del values["lr"]
    values["learning_rate"] = 0.1
    with pytest.raises(TypeError, match="missing \\['lr'\\], unknown \\['learning_rate'\\]"):
        optim_ops.step_args(names, **values)


def test_lowmem_lists_extend_the_default_ones():
    assert optim_ops.SGD_LOWMEM_STEP_ARGS[:len(optim_ops.SGD_STEP_ARGS)] == optim_ops.SGD_STEP_ARGS
    assert optim_ops.ADAM_LOWMEM_STEP_ARGS[:len(optim_ops.ADAM_STEP_ARGS)] == optim_ops.ADAM_STEP_ARGS
