"""A closure that breaks the (loss, outputs) contract gets a message stating it."""

import pytest
import torch
from torch import nn

import natgrad

BAD_CLOSURES = {
    "bare loss": lambda out, loss: loss,
    "outputs first": lambda out, loss: (out, loss),
    "float": lambda out, loss: float(loss),
    "dict": lambda out, loss: {"loss": loss, "outputs": out},
    "None": lambda out, loss: None,
    "three items": lambda out, loss: (loss, out, out),
    "detached loss": lambda out, loss: (loss.detach(), out),
}


def _optimizers(model):
    return {
        "KFAC": natgrad.KFAC(model, lr=0.1, damping=0.1, likelihood="categorical"),
        "NaturalGradient": natgrad.NaturalGradient(
            model, lr=0.1, damping=0.1, likelihood="categorical"
        ),
    }


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
@pytest.mark.parametrize("kind", sorted(BAD_CLOSURES))
def test_bad_closure_result_states_the_contract(owner, kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    optimizer = _optimizers(model)[owner]
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        outputs = model(x)
        loss = nn.functional.cross_entropy(outputs, y)
        return BAD_CLOSURES[kind](outputs, loss)

    with pytest.raises(TypeError, match=r"return \(loss, outputs\) with outputs = model\(x\)"):
        optimizer.step(closure)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_wrong_order_is_named():
    model = nn.Linear(4, 3)
    optimizer = natgrad.KFAC(model, lr=0.1, damping=0.1, likelihood="categorical")
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))

    def closure():
        outputs = model(x)
        return outputs, nn.functional.cross_entropy(outputs, y)

    with pytest.raises(TypeError, match="wrong order"):
        optimizer.step(closure)


def test_list_result_is_accepted():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = natgrad.KFAC(model, lr=0.1, damping=0.1, likelihood="categorical")
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))

    def closure():
        outputs = model(x)
        return [nn.functional.cross_entropy(outputs, y), outputs]

    before = model.weight.detach().clone()
    optimizer.step(closure)
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
def test_a_good_step_after_a_bad_closure_matches_a_fresh_optimizer(owner):
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    results = []
    for fail_first in (False, True):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        optimizer = _optimizers(model)[owner]

        def closure(model=model):
            outputs = model(x)
            return nn.functional.cross_entropy(outputs, y), outputs

        if fail_first:
            with pytest.raises(TypeError):
                optimizer.step(lambda: closure()[0])
        torch.manual_seed(2)
        optimizer.step(closure)
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
