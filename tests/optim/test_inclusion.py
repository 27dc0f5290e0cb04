"""The inclusion hierarchy of Choi et al. (2019): each optimizer contains the simpler ones.

SGD ⊆ Momentum ⊆ RMSProp, SGD ⊆ Momentum ⊆ Adam, SGD ⊆ Nesterov ⊆ NAdam. The special
cases that are exact hold to the last bit (or to float64 rounding where the arithmetic
order differs); the Adam limits hold as eps grows, with the learning-rate schedule
lr_t = eta * eps * (1 - beta1^t) / (1 - beta1) and beta2 = 0.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from natgrad.optim import SGD, Adam, Momentum, NAdam, Nesterov, RMSProp


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 6, generator=generator, dtype=torch.float64),
            torch.randint(0, 3, (16,), generator=generator),
        )
        for _ in range(steps)
    ]


def run(model: nn.Module, optimizer: torch.optim.Optimizer, data, lr_at=None) -> list:
    """Train on ``data``; ``lr_at(t)`` (t = 1, 2, ...) sets the lr before step t."""
    trajectory = []
    for t, (x, y) in enumerate(data, start=1):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(t)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        trajectory.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
    return trajectory


def trajectories(make_a, make_b, steps: int = 30, lr_a=None):
    model_a = make_model()
    model_b = copy.deepcopy(model_a)
    data = batches(steps)
    return run(model_a, make_a(model_a), data, lr_a), run(model_b, make_b(model_b), data)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("cls", [Momentum, Nesterov])
def test_zero_momentum_is_sgd_exactly(cls, foreach):
    a, b = trajectories(
        lambda m: cls(m.parameters(), lr=0.3, momentum=0.0, weight_decay=0.01, foreach=foreach),
        lambda m: SGD(m.parameters(), lr=0.3, weight_decay=0.01, foreach=foreach),
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("foreach", [True, False])
def test_rmsprop_with_rho_one_and_zero_eps_is_momentum(foreach):
    a, b = trajectories(
        lambda m: RMSProp(m.parameters(), lr=0.1, momentum=0.7, rho=1.0, eps=0.0, foreach=foreach),
        lambda m: Momentum(m.parameters(), lr=0.1, momentum=0.7, foreach=foreach),
    )
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("adaptive", "momentum"), [(Adam, Momentum), (NAdam, Nesterov)])
def test_adam_with_huge_eps_and_special_schedule_follows_momentum(adaptive, momentum):
    """Adam(beta2=0, eps -> inf, lr_t = eta eps (1 - beta1^t) / (1 - beta1)) -> Momentum."""
    eta, beta1, eps = 0.05, 0.9, 1e7

    def special_schedule(t: int) -> float:
        return eta * eps * (1 - beta1**t) / (1 - beta1)

    a, b = trajectories(
        lambda m: adaptive(m.parameters(), lr=1.0, beta1=beta1, beta2=0.0, eps=eps),
        lambda m: momentum(m.parameters(), lr=eta, momentum=beta1),
        steps=100,
        lr_a=special_schedule,
    )
    initial = torch.cat([p.detach().flatten() for p in make_model().parameters()])
    # compare the displacement from the start, which is what the optimizers produced
    worst = max(float((x - y).norm() / (y - initial).norm()) for x, y in zip(a, b, strict=True))
    assert worst < 1e-4
    # and the limit is not trivial: with a moderate eps the two differ clearly
    far_a, far_b = trajectories(
        lambda m: adaptive(m.parameters(), lr=1.0, beta1=beta1, beta2=0.0, eps=1.0),
        lambda m: momentum(m.parameters(), lr=eta, momentum=beta1),
        steps=20,
        lr_a=lambda t: eta * 1.0 * (1 - beta1**t) / (1 - beta1),
    )
    assert float((far_a[-1] - far_b[-1]).norm() / (far_b[-1] - initial).norm()) > 1e-2
