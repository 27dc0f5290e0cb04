"""kfac_adaptive stays finite: the momentum restart of the quadratic-model step and the
Levenberg-Marquardt damping floor relative to the curvature's scale."""

from __future__ import annotations

import math

import torch
from torch import nn

from natgrad.optim.kfac import KFAC
from natgrad.optim.kfac_step_rules import (
    DampingConfig,
    LevenbergMarquardtRule,
    curvature_scale,
    momentum_in_unit_interval,
)


def _small_conv_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def _train_adaptive(steps: int, batch: int = 64, **options) -> tuple[list[float], KFAC]:
    """kfac_adaptive (statistics on 1/8 of the batch) on labels of a random teacher."""
    torch.manual_seed(0)
    teacher = _small_conv_net()
    inputs = torch.randn(4096, 1, 14, 14)
    with torch.no_grad():
        labels = (3 * teacher(inputs)).argmax(1)
    model = _small_conv_net()
    optimizer = KFAC.from_preset("kfac_adaptive", model, **options)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        index = torch.randint(0, len(inputs), (batch,), generator=generator)
        x, y = inputs[index], labels[index]

        def closure(x=x, y=y):
            outputs = model(x)
            return nn.functional.cross_entropy(outputs, y), outputs

        losses.append(float(optimizer.step(closure)))
        if not math.isfinite(losses[-1]) or losses[-1] > 100.0:
            break
    return losses, optimizer


def test_adaptive_kfac_on_a_small_conv_net_does_not_blow_up():
    # Before the momentum restart, the model's mu reached -3 at step 4 and the loss was
    # above 1000 by step 7.
    losses, _ = _train_adaptive(60, damping=0.1)
    assert len(losses) == 60 and all(math.isfinite(loss) for loss in losses)
    assert max(losses) < 10.0
    assert sum(losses[-10:]) / 10 < losses[0]


def test_the_damping_stays_above_its_floor_relative_to_the_curvature():
    # lambda_0 = 1e-3: without the floor (relative_min_damping=0) the rule took it to
    # 1.7e-4 within 60 steps here, below 1e-3 x the scale (1.3e-3)
    _, optimizer = _train_adaptive(60, damping=1e-3)
    scale = curvature_scale(optimizer.preconditioners)
    assert scale > 0.0
    assert optimizer.param_groups[0]["damping"] >= 1e-3 * scale * 0.77  # one decrease past it


def test_momentum_restart_only_when_mu_leaves_the_unit_interval():
    gram = torch.tensor([[4.0, 1.0], [1.0, 2.0]])
    grads = torch.tensor([-2.0, 0.5])
    inside = torch.tensor([0.3, 0.6])
    torch.testing.assert_close(momentum_in_unit_interval(inside, gram, grads), inside)
    for mu in (-0.5, 1.5):
        restarted = momentum_in_unit_interval(torch.tensor([0.3, mu]), gram, grads)
        torch.testing.assert_close(restarted, torch.tensor([0.5, 0.0]))  # -b0 / K00


def test_the_levenberg_marquardt_floor_is_relative_to_the_scale():
    rule = LevenbergMarquardtRule(DampingConfig(relative_min_damping=1e-3))
    good = torch.tensor(-1.0)  # rho = 1: the rule decreases lambda
    damping, rho = rule.adapt(1e-4, good, torch.tensor(-1.0), scale=10.0)
    assert rho == 1.0 and damping == 1e-2
    damping, _ = rule.adapt(1e-1, good, torch.tensor(-1.0), scale=10.0)
    assert math.isclose(damping, 1e-1 * (19 / 20) ** 5)


def test_curvature_scale_is_the_largest_layer_mean_eigenvalue():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    optimizer = KFAC(model, lr=0.1)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    def closure():
        outputs = model(x)
        return nn.functional.cross_entropy(outputs, y), outputs

    optimizer.step(closure)
    expected = max(
        float(torch.trace(p.A) / p.A.shape[0] * torch.trace(p.G) / p.G.shape[0])
        for p in optimizer.preconditioners
    )
    assert math.isclose(curvature_scale(optimizer.preconditioners), expected, rel_tol=1e-5)
    assert DampingConfig().relative_min_damping == 1e-3
