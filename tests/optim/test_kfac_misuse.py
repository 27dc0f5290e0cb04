"""Misuses of the second-order optimizers that once gave silently wrong results: each now
raises one clear error, or behaves as documented."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import natgrad


def _classifier(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    return model, torch.randn(8, 4), torch.randint(0, 3, (8,))


def _optimizer(owner: str, model: nn.Module):
    if owner == "KFAC":
        return natgrad.KFAC(model, lr=0.1, damping=0.1, likelihood="categorical")
    return natgrad.NaturalGradient(model, lr=0.1, damping=0.1, likelihood="categorical")


def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(before: list[torch.Tensor], model: nn.Module) -> bool:
    return all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


# ---------------------------------------------------------------- parameter groups


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
def test_add_param_group_is_refused_with_one_line(owner):
    model, _, _ = _classifier()
    extra = nn.Parameter(torch.zeros(3))
    optimizer = _optimizer(owner, model)
    with pytest.raises(ValueError, match=r"add_param_group") as raised:
        optimizer.add_param_group({"params": [extra], "lr": 1.0})
    assert "\n" not in str(raised.value)
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
def test_per_group_options_still_come_from_the_one_group(owner):
    """The supported way to change lr (schedulers) keeps working on the single group."""
    model, x, y = _classifier()
    optimizer = _optimizer(owner, model)
    optimizer.param_groups[0]["lr"] = 0.0
    before = _snapshot(model)

    def closure():
        outputs = model(x)
        return nn.functional.cross_entropy(outputs, y), outputs

    optimizer.step(closure)
    assert _unchanged(before, model)


# ---------------------------------------------------------------- the model argument


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
@pytest.mark.parametrize("kind", ["generator", "list", "param groups"])
def test_parameters_instead_of_the_model_are_refused(owner, kind):
    model, _, _ = _classifier()
    given = {
        "generator": lambda: model.parameters(),
        "list": lambda: list(model.parameters()),
        "param groups": lambda: [{"params": list(model.parameters())}],
    }[kind]()
    cls = natgrad.KFAC if owner == "KFAC" else natgrad.NaturalGradient
    with pytest.raises(TypeError, match=rf"{owner} takes the model \(an nn.Module\)") as raised:
        cls(given, lr=0.1)
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------- outputs not from the model


NOT_FROM_THE_MODEL = {
    "fresh tensor": lambda out: torch.randn(out.shape, requires_grad=True),
    "fresh tensor times one": lambda out: torch.randn(out.shape, requires_grad=True) * 1.0,
    "detached and re-attached": lambda out: out.detach().requires_grad_(),
    "another model's outputs": lambda out: nn.Linear(out.shape[1], out.shape[1])(out.detach()),
}


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
@pytest.mark.parametrize("kind", sorted(NOT_FROM_THE_MODEL))
def test_outputs_not_produced_by_the_model_are_refused(owner, kind):
    model, x, y = _classifier()
    optimizer = _optimizer(owner, model)
    before = _snapshot(model)

    def closure():
        outputs = model(x)
        loss = nn.functional.cross_entropy(outputs, y)
        return loss, NOT_FROM_THE_MODEL[kind](outputs)

    with pytest.raises(TypeError, match=r"outputs that do not depend on the model's parameters"):
        optimizer.step(closure)
    assert _unchanged(before, model)


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
def test_outputs_computed_from_the_model_outputs_are_accepted(owner):
    """A reshape of the model's outputs (e.g. a sequence model's (N*T, C) logits) is fine."""
    model, x, y = _classifier()
    optimizer = _optimizer(owner, model)
    before = _snapshot(model)

    def closure():
        outputs = model(x).reshape(8, 3)
        return nn.functional.cross_entropy(outputs, y), outputs

    optimizer.step(closure)
    assert not _unchanged(before, model)
