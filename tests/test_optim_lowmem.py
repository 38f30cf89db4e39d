"""The low-memory modes of torchext.optim.SGD / Adam / AdamW: stochastic_rounding, kahan_summation
and state_dtype (float32, bfloat16, "int8" blockwise), on the CPU kernels. Covers: unbiasedness and
determinism of stochastic rounding, Kahan recovering sub-ulp updates, the int8 quantization error
bound, state_dict round-trips and to_torch_state_dict, skipped (GradScaler overflow) steps,
construction errors, torch.compile, and that every mode trains."""
import copy
import math

import pytest
import torch

import torchext.optim as xo
from torchext.optim import _lowmem

OPTIMS = {
    "sgd": lambda ps, **kw: xo.SGD(ps, lr=kw.pop("lr", 0.05), momentum=0.9, **kw),
    "adam": lambda ps, **kw: xo.Adam(ps, lr=kw.pop("lr", 1e-2), **kw),
    "adamw": lambda ps, **kw: xo.AdamW(ps, lr=kw.pop("lr", 1e-2), **kw),
}
MODES = {
    "sr": dict(stochastic_rounding=True),
    "kahan": dict(kahan_summation=True),
    "bf16_state": dict(state_dtype=torch.bfloat16),
    "int8_state": dict(state_dtype="int8"),
    "sr+int8": dict(stochastic_rounding=True, state_dtype="int8"),
    "kahan+sr+bf16_state": dict(kahan_summation=True, stochastic_rounding=True, state_dtype=torch.bfloat16),
}


def _ulp(x, dtype):
    """The spacing of `dtype` values just above x (a power of two or more)."""
    return float(torch.finfo(dtype).eps) * 2 ** math.floor(math.log2(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("frac", [0.1, 0.3, 0.5, 0.9])
def test_stochastic_rounding_is_unbiased(dtype, frac):
    # One SGD step moving every element of a param at 1.0 by frac of an ulp: each lands on 1 or
    # 1 + ulp, up with probability frac. The mean must match the exact update within 5 standard
    # errors of a Bernoulli(frac) mean over n elements.
    n = 200_000
    ulp = _ulp(1.0, dtype)
    p = torch.nn.Parameter(torch.ones(n, dtype=dtype))
    opt = xo.SGD([p], lr=1.0, stochastic_rounding=True, generator=torch.Generator().manual_seed(0))
    p.grad = torch.full_like(p, -frac * ulp)
    opt.step()
    vals = p.detach().float()
    assert set(vals.unique().tolist()) <= {1.0, 1.0 + ulp}
    mean_steps = ((vals - 1.0) / ulp).mean().item()
    bound = 5 * math.sqrt(frac * (1 - frac) / n)
    assert abs(mean_steps - frac) < bound, (mean_steps, frac, bound)


def test_round_to_nearest_loses_what_stochastic_rounding_keeps():
    p = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    q = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    plain, sr = xo.SGD([p], lr=1e-3), xo.SGD([q], lr=1e-3, stochastic_rounding=True)
    for _ in range(100):
        p.grad = torch.full_like(p, -1.0)
        q.grad = torch.full_like(q, -1.0)
        plain.step()
        sr.step()
    assert torch.equal(p.detach(), torch.ones_like(p))  # each 1e-3 step is under half an ulp (3.9e-3)
    assert abs(q.detach().float().mean().item() - 1.1) < 0.01  # 100 * 1e-3, on average


def _train_copy(opt_fn, seed, steps=3):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5000, dtype=torch.bfloat16))
    opt = opt_fn([p], generator=torch.Generator().manual_seed(seed))
    for i in range(steps):
        torch.manual_seed(100 + i)
        p.grad = torch.randn_like(p) * 1e-2
        opt.step()
    return p.detach().clone()


@pytest.mark.parametrize("name", sorted(OPTIMS))
def test_stochastic_rounding_is_deterministic_for_a_seed(name):
    fn = lambda ps, generator: OPTIMS[name](ps, stochastic_rounding=True, generator=generator)  # noqa: E731
    a, b, c = _train_copy(fn, 1), _train_copy(fn, 1), _train_copy(fn, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_seed_comes_from_the_default_generator():
    p = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    torch.manual_seed(3)
    s1 = xo.AdamW([p], stochastic_rounding=True).state_dict()[_lowmem.SR_KEY]["seed"]
    torch.manual_seed(3)
    s2 = xo.AdamW([p], stochastic_rounding=True).state_dict()[_lowmem.SR_KEY]["seed"]
    assert s1 == s2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kahan_recovers_sub_ulp_updates(dtype):
    # 1000 SGD steps of 0.1 ulp each: round-to-nearest never moves the param; with Kahan it
    # follows the fp32 sum (100 ulps) to within one ulp of its final value.
    ulp = _ulp(1.0, dtype)
    p = torch.nn.Parameter(torch.ones(1024, dtype=dtype))
    q = torch.nn.Parameter(torch.ones(1024, dtype=dtype))
    plain, kahan = xo.SGD([p], lr=1.0), xo.SGD([q], lr=1.0, kahan_summation=True)
    for _ in range(1000):
        p.grad = torch.full_like(p, -0.1 * ulp)
        q.grad = torch.full_like(q, -0.1 * ulp)
        plain.step()
        kahan.step()
    exact = 1.0 + 1000 * float(torch.tensor(-0.1 * ulp, dtype=dtype).float().neg())
    assert torch.equal(p.detach(), torch.ones_like(p))
    assert (q.detach().float() - exact).abs().max().item() <= ulp
    assert kahan.state[q]["kahan_comp"].dtype == dtype


def _int8_bound(x, scale):
    q = (x.abs() / scale).sqrt()
    return scale * (2 * q + 1 / 254) / 254 + 1e-7 * x.abs()


def test_int8_quantization_error_within_bound():
    torch.manual_seed(0)
    n = 3 * 256 + 17  # a partial last block
    n = max(n, _lowmem.MIN_QUANT_NUMEL + 17)
    p = torch.nn.Parameter(torch.randn(n))
    ref = torch.nn.Parameter(p.detach().clone())
    opt = xo.Adam([p], lr=1e-3, state_dtype="int8")
    fp32 = xo.Adam([ref], lr=1e-3)
    g = torch.randn(n) * torch.logspace(-3, 0, n)[torch.randperm(n)]
    p.grad, ref.grad = g.clone(), g.clone()
    opt.step()
    fp32.step()
    st = opt.state[p]
    assert st["exp_avg"].dtype == torch.int8 and st["exp_avg_scale"].numel() == math.ceil(n / 256)
    m = _lowmem.dequantize(st["exp_avg"], st["exp_avg_scale"], False)
    m_ref = fp32.state[ref]["exp_avg"]
    scale_m = st["exp_avg_scale"].repeat_interleave(256)[:n]
    assert ((m - m_ref).abs() <= _int8_bound(m_ref, scale_m)).all()
    s = _lowmem.dequantize(st["exp_avg_sq"], st["exp_avg_sq_scale"], False)  # sqrt(v) as stored
    s_ref = fp32.state[ref]["exp_avg_sq"].sqrt()
    scale_s = st["exp_avg_sq_scale"].repeat_interleave(256)[:n]
    assert ((s - s_ref).abs() <= _int8_bound(s_ref, scale_s)).all()
    # int8 state: 1 byte per element per moment, plus 4 bytes per 256
    nbytes = sum(t.numel() * t.element_size() for t in st.values() if t.dim() > 0)
    assert nbytes / n < 2.05


def test_small_params_keep_float32_state_with_int8():
    p = torch.nn.Parameter(torch.randn(100))
    opt = xo.AdamW([p], state_dtype="int8")
    p.grad = torch.randn(100)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32 and "exp_avg_scale" not in opt.state[p]


def _model_opt(name, mode, dtype=torch.bfloat16):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 80).to(dtype)), torch.nn.Parameter(torch.randn(64).to(dtype))]
    return params, OPTIMS[name](params, **MODES[mode])


def _grads(params, i):
    g = torch.Generator().manual_seed(i)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 1e-1).to(p.dtype)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(OPTIMS))
def test_state_dict_round_trip(name, mode):
    params, opt = _model_opt(name, mode)
    for i in range(3):
        _grads(params, i)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = OPTIMS[name](params2, **MODES[mode])
    opt2.load_state_dict(sd)
    for k, v in opt.state[params[0]].items():
        if k == "momentum_count":  # torchext's private counter, not saved (a loaded buffer has history)
            continue
        assert v.dtype == opt2.state[params2[0]][k].dtype and torch.equal(v, opt2.state[params2[0]][k]), k
    for i in range(3, 5):
        _grads(params, i)
        _grads(params2, i)
        opt.step()
        opt2.step()
    for p, q in zip(params, params2):
        assert torch.equal(p, q)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(OPTIMS))
def test_to_torch_state_dict_loads_into_torch(name, mode):
    params, opt = _model_opt(name, mode, torch.float32 if "kahan" not in mode else torch.bfloat16)
    _grads(params, 0)
    opt.step()
    sd = xo.to_torch_state_dict(opt.state_dict())
    torch_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    tparams = [torch.nn.Parameter(p.detach().clone()) for p in params]
    topt = torch_cls(tparams, lr=1e-2)
    topt.load_state_dict(sd)
    for entry in sd["state"].values():
        assert not any(k.endswith("_scale") or k in ("kahan_comp", "master_param") for k in entry)
        for k, v in entry.items():
            assert v.dtype in (torch.float32, torch.bfloat16) or k == "step"
    assert _lowmem.SR_KEY not in sd
    assert all(not set(_lowmem.OPTIONS) & set(g) for g in sd["param_groups"])
    _grads(tparams, 1)
    topt.step()


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(OPTIMS))
def test_overflowing_step_changes_nothing(name, mode):
    params, opt = _model_opt(name, mode)
    _grads(params, 0)
    opt.step()
    before = copy.deepcopy((params, opt.state_dict()))
    _grads(params, 1)
    opt.step(grad_scale=torch.tensor(2.0), found_inf=torch.tensor(1.0))
    for p, q in zip(params, before[0]):
        assert torch.equal(p, q)
    sd = opt.state_dict()
    for idx, entry in sd["state"].items():
        for k, v in entry.items():
            assert torch.equal(v, before[1]["state"][idx][k]), k
    assert sd.get(_lowmem.SR_KEY) == before[1].get(_lowmem.SR_KEY)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(OPTIMS))
def test_every_mode_trains(name, mode):
    # A least-squares problem in bf16 params (fp32 with int8 state alone): the loss falls well
    # below its start, so no mode's step silently does nothing.
    torch.manual_seed(0)
    dtype = torch.float32 if mode == "int8_state" else torch.bfloat16
    x = torch.randn(256, 64)
    w_true = torch.randn(64, 1)
    y = x @ w_true
    w = torch.nn.Parameter(torch.zeros(64, 64, dtype=dtype))
    opt = OPTIMS[name]([w], lr=0.02 if name == "sgd" else 0.05, **MODES[mode])
    losses = []
    for _ in range(60):
        loss = ((x @ w.float()[:, :1] - y) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0], losses[::10]


@pytest.mark.parametrize("name", sorted(OPTIMS))
def test_bad_combinations_raise_value_error(name):
    bf = [torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))]
    f32 = [torch.nn.Parameter(torch.ones(4))]
    with pytest.raises(ValueError, match="kahan_summation=True needs float16 or bfloat16"):
        OPTIMS[name](f32, kahan_summation=True)
    with pytest.raises(ValueError, match="state_dtype must be"):
        OPTIMS[name](bf, state_dtype=torch.float16)
    with pytest.raises(ValueError, match="exclude each other"):
        OPTIMS[name](bf, kahan_summation=True, master_weights=True)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16 params"):
        OPTIMS[name]([torch.nn.Parameter(torch.ones(4, dtype=torch.float64))], stochastic_rounding=True)
    if name != "sgd":
        with pytest.raises(ValueError, match="amsgrad"):
            OPTIMS[name](bf, state_dtype="int8", amsgrad=True)


def test_defaults_keep_torch_layout():
    p = torch.nn.Parameter(torch.ones(4))
    opt = xo.AdamW([p])
    p.grad = torch.ones(4)
    opt.step()
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert not set(_lowmem.OPTIONS) & set(sd["param_groups"][0])
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_master_weights_with_int8_state_and_stochastic_rounding():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5000, dtype=torch.bfloat16))
    opt = xo.AdamW([p], master_weights=True, stochastic_rounding=True, state_dtype="int8")
    for i in range(3):
        _grads([p], i)
        opt.step()
    st = opt.state[p]
    assert st["master_param"].dtype == torch.float32 and st["exp_avg"].dtype == torch.int8
    # the param is a rounding (up or down) of its master
    err = (p.detach().float() - st["master_param"]).abs()
    assert (err <= st["master_param"].abs() * 2 ** -7 + 1e-30).all()


@pytest.mark.parametrize("mode", ["sr+int8", "kahan+sr+bf16_state"])
def test_compile_fullgraph_matches_eager(mode):
    params, opt = _model_opt("adamw", mode)
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = OPTIMS["adamw"](params2, **MODES[mode])
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))

    @torch.compile(fullgraph=True)
    def step():
        opt2.step()

    for i in range(2):
        _grads(params, i)
        _grads(params2, i)
        opt.step()
        step()
    for p, q in zip(params, params2):
        assert torch.equal(p, q)
