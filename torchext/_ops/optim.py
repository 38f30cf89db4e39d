"""Fused optimizer steps: their argument lists as Python sees them, and fake kernels so torch.compile
can trace torch.ops.torchext.*_step_.

The argument lists are declared once, in csrc/optim_args.h, from which the C++ side (schema, entry
points, shims) is generated. Here each op's names are written once more, as the tuple that
`step_args` orders a launch's arguments by, and checked against the registered schema when this
module is imported: a list edited on one side only fails the import, not a step."""
import torch

SGD_STEP_ARGS = ("params", "grads", "momentum_buffers", "momentum_counts", "master_params", "lr", "momentum",
                 "dampening", "weight_decay", "nesterov", "maximize", "lr_tensor", "grad_scale", "found_inf")
ADAM_STEP_ARGS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps", "master_params",
                  "lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay",
                  "lr_tensor", "grad_scale", "found_inf")
# The low-memory steps: the same arguments, then these (csrc/optim_args.h).
SGD_LOWMEM_STEP_ARGS = SGD_STEP_ARGS + ("momentum_buffer_scales", "kahan_comps", "sr_state")
ADAM_LOWMEM_STEP_ARGS = ADAM_STEP_ARGS + ("exp_avg_scales", "exp_avg_sq_scales", "kahan_comps", "sr_state")
OPTIM_OPS = {"sgd_step_": SGD_STEP_ARGS, "adam_step_": ADAM_STEP_ARGS, "sgd_lowmem_step_": SGD_LOWMEM_STEP_ARGS,
             "adam_lowmem_step_": ADAM_LOWMEM_STEP_ARGS}


def check_signature(op_name, names):
    """Raises RuntimeError unless torch.ops.torchext.<op_name> takes exactly `names`, in order."""
    schema = getattr(torch.ops.torchext, op_name).default._schema
    declared = tuple(a.name for a in schema.arguments)
    if declared != tuple(names):
        raise RuntimeError("torchext: the Python argument list of torchext::%s, %s, does not match its schema "
                           "(csrc/optim_args.h), %s" % (op_name, list(names), list(declared)))


for _op, _names in OPTIM_OPS.items():
    check_signature(_op, _names)


def step_args(names, **values):
    """The positional arguments of one launch of an op taking `names`, from keywords; a missing or
    unknown keyword raises (a TypeError naming it) before anything runs."""
    try:
        if len(values) == len(names):
            return tuple(values[n] for n in names)
    except KeyError:
        pass
    unknown = sorted(set(values) - set(names))
    missing = [n for n in names if n not in values]
    raise TypeError("torchext: optimizer step arguments: missing %s, unknown %s" % (missing, unknown))


def _fake(op_name):
    def fake(params, grads, *rest):
        torch._check(len(grads) == len(params), lambda: "torchext.%s: one grad per param expected" % op_name)
        return None
    fake.__name__ = "_%s_fake" % op_name.rstrip("_")
    return fake


for _op in OPTIM_OPS:
    torch.library.register_fake("torchext::" + _op)(_fake(_op))
