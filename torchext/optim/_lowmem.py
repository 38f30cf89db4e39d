"""The low-memory options of torchext's optimizers (stochastic_rounding, kahan_summation,
state_dtype): their validation, the state they add, and the conversion of a checkpoint back to
torch.optim's layout. The kernels are csrc/optim_lowmem.h's (CPU) and its CUDA twin.

State layout, per param, beside torch's keys:
  - int8 state: the buffer key (exp_avg, exp_avg_sq, momentum_buffer) holds int8 codes shaped like
    the param, `<key>_scale` one float32 scale per 256 elements (the block's largest magnitude; of
    sqrt(exp_avg_sq) for the second moment); value = scale * sign(c) * (|c| / 127)^2. Params under
    4096 elements keep float32 state.
  - kahan_comp: the compensation buffer, in the param dtype.
  - stochastic rounding: the state_dict's top-level "torchext_sr" holds the seed and, per device,
    the number of launches made (the generator's offset)."""
import torch

from .. import _distributed

_HALF = (torch.float16, torch.bfloat16)
QUANT_BLOCK = 256
MIN_QUANT_NUMEL = 4096
OPTIONS = ("stochastic_rounding", "kahan_summation", "state_dtype")
SR_KEY = "torchext_sr"
# Buffers stored through their square root (second moments).
_SQRT_CODED = ("exp_avg_sq", "max_exp_avg_sq")


def options(stochastic_rounding, kahan_summation, state_dtype):
    """The group defaults for these options (only the ones not at their default, so that a default
    optimizer's groups are torch's), or ValueError."""
    if state_dtype not in (None, torch.float32, torch.bfloat16, "int8"):
        raise ValueError("state_dtype must be None, torch.float32, torch.bfloat16 or \"int8\", but got %r"
                         % (state_dtype,))
    out = {}
    if stochastic_rounding:
        out["stochastic_rounding"] = True
    if kahan_summation:
        out["kahan_summation"] = True
    if state_dtype is not None:
        out["state_dtype"] = state_dtype
    return out


def active(group):
    return bool(group.get("stochastic_rounding")) or bool(group.get("kahan_summation")) or \
        group.get("state_dtype") is not None


def check_group(name, group):
    """ValueError for a combination the kernels do not take, at construction (or add_param_group)."""
    if not active(group):
        return
    if group.get("state_dtype") is not None and group.get("state_dtype") not in (torch.float32, torch.bfloat16, "int8"):
        raise ValueError("torchext.optim.%s: state_dtype must be None, torch.float32, torch.bfloat16 or \"int8\", "
                         "but got %r" % (name, group["state_dtype"]))
    for p in group["params"]:
        if p.dtype not in (torch.float32,) + _HALF:
            raise ValueError("torchext.optim.%s: stochastic_rounding, kahan_summation and state_dtype take float32, "
                             "float16 or bfloat16 params, but got a %s param" % (name, p.dtype))
        if group.get("kahan_summation") and p.dtype not in _HALF:
            raise ValueError("torchext.optim.%s: kahan_summation=True needs float16 or bfloat16 params (a float32 "
                             "param loses nothing to compensate), but got a %s param" % (name, p.dtype))
    if group.get("kahan_summation") and group.get("master_weights"):
        raise ValueError("torchext.optim.%s: kahan_summation=True and master_weights=True exclude each other: "
                         "the fp32 master already keeps the low bits" % name)
    if group.get("state_dtype") == "int8" and group.get("amsgrad"):
        raise ValueError("torchext.optim.%s: state_dtype=\"int8\" does not support amsgrad=True" % name)
    check_dtensors(name, group, group["params"])


def check_dtensors(name, group, params):
    """ValueError for DTensor params under the modes that are not elementwise over a shard: int8
    state (its per-block scales are no DTensor of the param's layout, so checkpoints could not
    reshard them) and stochastic rounding (its random stream is keyed on the element index, which
    a shard does not know globally). Kahan summation and bfloat16 state are elementwise and take
    DTensor params."""
    dtensor = _distributed.DTensor
    if dtensor is None or not (group.get("stochastic_rounding") or group.get("state_dtype") == "int8"):
        return
    for p in params:
        if isinstance(p, dtensor):
            what = "stochastic_rounding=True" if group.get("stochastic_rounding") else "state_dtype=\"int8\""
            raise ValueError("torchext.optim.%s: %s does not support DTensor params (FSDP2, tensor parallel) yet; "
                             "kahan_summation=True and state_dtype=torch.bfloat16 do" % (name, what))


def buffer_dtype(group, p, default):
    """The storage dtype of p's state buffers in `group`."""
    sd = group.get("state_dtype")
    if sd is None:
        return default
    if sd == "int8":
        return torch.int8 if p.numel() >= MIN_QUANT_NUMEL else torch.float32
    return sd


def prepare(group, p, state, buffer_keys):
    """Adds what the options need beside the buffers _init_state made: scales of int8 buffers, the
    Kahan compensation."""
    for k in buffer_keys:
        v = state.get(k)
        if isinstance(v, torch.Tensor) and v.dtype == torch.int8 and k + "_scale" not in state:
            state[k + "_scale"] = torch.zeros((p.numel() + QUANT_BLOCK - 1) // QUANT_BLOCK, dtype=torch.float32,
                                              device=p.device)
    if group.get("kahan_summation") and "kahan_comp" not in state:
        state["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def dequantize(codes, scale, sqrt_coded):
    """The float32 values of int8 codes with their per-block scales (the kernels' decode)."""
    flat = codes.reshape(-1).to(torch.float32)
    n = flat.numel()
    q = flat.abs() / 127.0
    x = scale.to(torch.float32).repeat_interleave(QUANT_BLOCK)[:n] * (q * q)
    x = torch.where(flat < 0, -x, x)
    if sqrt_coded:
        x = x * x
    return x.reshape(codes.shape)


def to_torch_state_dict(state_dict):
    """A torchext optimizer's state_dict as a plain torch.optim one: int8 moments dequantized to
    float32, bfloat16 state widened to float32, and what torch has no key for dropped (scales, the
    Kahan compensation, fp32 master weights, the stochastic-rounding generator, torchext's group
    options). torch.optim.SGD / Adam / AdamW load the result; a default torchext state_dict comes
    back unchanged in content."""
    out = {k: v for k, v in state_dict.items() if k not in ("state", "param_groups", SR_KEY)}
    state = {}
    for idx, entry in state_dict["state"].items():
        new = {}
        for k, v in entry.items():
            if k.endswith("_scale") or k in ("kahan_comp", "master_param", "momentum_count"):
                continue
            if isinstance(v, torch.Tensor) and v.dtype == torch.int8 and k + "_scale" in entry:
                v = dequantize(v, entry[k + "_scale"], k in _SQRT_CODED)
            elif isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16 and k != "step":
                v = v.to(torch.float32)
            new[k] = v
        state[idx] = new
    out["state"] = state
    out["param_groups"] = [{k: v for k, v in g.items() if k not in OPTIONS + ("master_weights",)}
                           for g in state_dict["param_groups"]]
    return out
