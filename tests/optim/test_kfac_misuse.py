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
