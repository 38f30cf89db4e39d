"""torchext.nn.convert on models written with plain torch.nn."""
import pytest
import torch

import torchext


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 12)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(inplace=True), torch.nn.Linear(8, 3))
        self.loss = torch.nn.MSELoss(reduction="sum")

    def forward(self, x):
        return self.head(self.act(self.fc(x)))


@pytest.mark.parametrize("fuse", [True, False])
def test_convert_replaces_and_keeps_outputs(fuse):
    model = Block()
    x = torch.randn(5, 12)
    before = model(x)
    converted = torchext.nn.convert(model, fuse=fuse)
    assert isinstance(converted.fc, torchext.nn.Linear)
    assert isinstance(converted.act, torchext.nn.ReLU)
    assert isinstance(converted.loss, torchext.nn.MSELoss) and converted.loss.reduction == "sum"
    if fuse:
        assert isinstance(converted.head[0], torchext.nn.LinearReLU)
        assert isinstance(converted.head[1], torch.nn.Identity)
    else:
        assert isinstance(converted.head[0], torchext.nn.Linear)
        assert isinstance(converted.head[1], torchext.nn.ReLU) and converted.head[1].inplace
    torch.testing.assert_close(converted(x), before, rtol=1e-5, atol=1e-6)
    # Weights preserved exactly and the state_dict keys unchanged.
    assert list(converted.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value)
    # Not in place: the original model still holds torch modules.
    assert type(model.fc) is torch.nn.Linear


def test_convert_inplace_shares_parameters_with_existing_optimizer():
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    out = torchext.nn.convert(model, inplace=True)
    assert out is model
    assert [p is q for p, q in zip(params, model.parameters())] == [True] * 4


def test_convert_gradients_match():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.ReLU(), torch.nn.Linear(9, 2))
    converted = torchext.nn.convert(model)
    x = torch.randn(11, 7)
    model(x).square().sum().backward()
    converted(x).square().sum().backward()
    for p, q in zip(model.parameters(), converted.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)


def test_convert_bare_modules_and_leaves_others_alone():
    lin = torch.nn.Linear(3, 2, bias=False)
    new = torchext.nn.convert(lin)
    assert isinstance(new, torchext.nn.Linear) and new.bias is None
    assert torch.equal(new.weight, lin.weight)
    conv = torch.nn.Sequential(torch.nn.Conv1d(1, 1, 3), torch.nn.Tanh())
    out = torchext.nn.convert(conv)
    assert type(out[0]) is torch.nn.Conv1d and type(out[1]) is torch.nn.Tanh


def test_modules_with_hooks_are_kept():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    model[0].register_forward_hook(lambda *a: None)
    out = torchext.nn.convert(model)
    assert type(out[0]) is torch.nn.Linear
    assert isinstance(out[1], torchext.nn.ReLU)


def test_convert_rejects_non_modules():
    with pytest.raises(TypeError, match="model"):
        torchext.nn.convert("not a model")
