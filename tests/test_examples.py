"""Each example flow, run with torchext and with plain torch from the same seed, must agree; the
FSDP2 / tensor-parallel example (under torchrun, two CPU processes) must agree with single-process
training."""
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import custom_modules  # noqa: E402
import linear_regression  # noqa: E402
import param_groups  # noqa: E402
import two_layer_net  # noqa: E402

TORCH = dict(nn=torch.nn, optim=torch.optim)


def test_linear_regression_learns_the_slope_like_torch():
    ours = linear_regression.train(quiet=True)
    ref = linear_regression.train(quiet=True, **TORCH)
    assert abs(ours.weight.item() - 2.0) < 0.05
    assert abs(ours.bias.item()) < 0.1
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sgd-momentum"])
def test_two_layer_net_matches_torch(optimizer):
    steps = 300
    ours, losses = two_layer_net.train(steps, optimizer, quiet=True)
    ref, ref_losses = two_layer_net.train(steps, optimizer, quiet=True, **TORCH)
    assert losses[-1] < 0.5 * losses[0]  # it trains
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=2e-3, atol=1e-3)
    # Adam's step is lr * m / (sqrt(v) + eps): for a weight whose gradient hovers near zero it is
    # about +-lr whatever the gradient's size, so GEMMs that sum in a different order (ours vs
    # torch's) can move such a weight by a few lr over 300 steps. SGD has no such amplification.
    atol = 1e-3 if optimizer == "adam" else 1e-4
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=atol)
    # The torchext model's state_dict is a torch model's state_dict.
    assert list(ours.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("model_cls", [custom_modules.TwoLayerNet, custom_modules.DynamicNet])
def test_custom_modules_match_torch(model_cls):
    kw = dict(steps=200, quiet=True, momentum=0.9 if model_cls is custom_modules.DynamicNet else 0.0)
    ours, losses = custom_modules.train(model_cls, **kw)
    ref, ref_losses = custom_modules.train(model_cls, **kw, **TORCH)
    assert losses[-1] < losses[0]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=2e-3, atol=1e-3)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def test_dynamic_net_shares_the_middle_weight():
    torch.manual_seed(0)
    net = custom_modules.DynamicNet(8, 6, 3)
    x = torch.randn(4, 8)
    net(x, repeats=0).sum().backward()
    assert net.middle_linear.weight.grad is None  # unused: no gradient
    net.zero_grad()
    net(x, repeats=3).sum().backward()
    g3 = net.middle_linear.weight.grad.clone()
    ref = custom_modules.DynamicNet(8, 6, 3, nn=torch.nn)
    ref.load_state_dict(net.state_dict())
    ref(x, repeats=3).sum().backward()
    torch.testing.assert_close(g3, ref.middle_linear.weight.grad, rtol=1e-5, atol=1e-6)


def test_lr_change_mid_training_and_print(capsys):
    # In float64 the two runs agree to rounding, which shows the new lr took effect at the same
    # step in both (in float32, Adam amplifies GEMM rounding differences once lr grows 10x).
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, opt, losses = param_groups.train(quiet=True)
        ref, ref_opt, ref_losses = param_groups.train(quiet=True, **TORCH)
    finally:
        torch.set_default_dtype(default)
    assert opt.param_groups[0]["lr"] == 1e-3
    assert losses[-1] < losses[150]  # still training after the switch at step 150
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-9, atol=1e-9)
    # Same printout as torch's, apart from the class name.
    assert repr(opt).replace("torchext.", "") .split("\n")[1:] == repr(ref_opt).split("\n")[1:]
    print(opt)
    assert "lr: 0.001" in capsys.readouterr().out


def test_demo_script_runs():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "two_layer_net.py"), "--steps", "200",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))  # the checkout's torchext, installed or not
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("step")]
    assert [ln.split()[1] for ln in lines] == ["1", "100", "200"]
    first, last = float(lines[0].split()[-1]), float(lines[-1].split()[-1])
    assert last < first


def _torchrun(script, *args, nproc=2):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(port), os.path.join(ROOT, "examples", script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_fsdp_example_resumes_on_a_2d_mesh_and_matches_one_process(tmp_path):
    # FSDP2 over two CPU processes saves a checkpoint; four processes, FSDP2 over two groups of two
    # tensor-parallel ranks, resume from it (each param now split otherwise) and compare with 10
    # single-process steps.
    ckpt = tmp_path / "ckpt"
    first = _torchrun("fsdp_train.py", "--steps", 5, "--checkpoint", ckpt)
    assert first.returncode == 0, first.stderr
    assert "saved %s after 5 steps" % ckpt in first.stdout
    second = _torchrun("fsdp_train.py", "--steps", 5, "--tp", 2, "--checkpoint", ckpt, "--check", nproc=4)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from %s after 5 steps" % ckpt in second.stdout
    assert "step   10  loss" in second.stdout
    worst = float(second.stdout.split("2 x 2 mesh vs single process:")[1].split()[0])
    assert worst < 1e-4
