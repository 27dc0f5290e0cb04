"""The asynchronous inverter: staleness 0 is synchronous K-FAC bit for bit; staleness s
installs the decomposition of the factors of step t at step t + s, not before."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from natgrad.distributed import Coordinator, World
from natgrad.distributed.refresh_schedule import RefreshSchedule
from natgrad.optim.kfac import KFAC
from natgrad.precondition.damping import damping_gamma
from natgrad.precondition.factor_inverse import decompose


def _setup(coordinator: Coordinator | None, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    inputs, targets = torch.randn(16, 5), torch.randint(0, 3, (16,))
    torch.manual_seed(1)
    opt = KFAC(model, lr=0.2, momentum=0.5, damping=0.05, likelihood="categorical", **options)
    if coordinator is not None:
        opt.coordinator = coordinator

    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    return model, opt, closure


@pytest.mark.parametrize("fisher,inverse", [("mc", "cholesky"), ("exact", "eigen")])
def test_staleness_zero_is_bit_for_bit_synchronous(fisher, inverse):
    results = []
    for coordinator in (None, Coordinator(World(), staleness=0)):
        model, opt, closure = _setup(coordinator, fisher=fisher, inverse=inverse, inv_every=2)
        losses = [opt.step(closure) for _ in range(7)]
        results.append(([p.detach().clone() for p in model.parameters()], losses))
        opt.coordinator.close()
    (sync_params, sync_losses), (async_params, async_losses) = results
    assert opt.coordinator.refresh_schedule.background
    for mine, theirs in zip(async_params, sync_params, strict=True):
        assert torch.equal(mine, theirs)
    assert all(torch.equal(a, b) for a, b in zip(async_losses, sync_losses, strict=True))


def test_a_stale_refresh_is_installed_exactly_staleness_steps_later():
    model, opt, closure = _setup(Coordinator(World(), staleness=1), fisher="exact", inv_every=3)
    layer = opt.preconditioners[0]
    gamma = damping_gamma(0.05, 0.0)
    for _ in range(3):
        opt.step(closure)
    first = {k: v.clone() for k, v in layer.decomposition.items()}  # computed at step 1
    opt.step(closure)  # step 4 requests a refresh of its factors
    requested_A, requested_G = layer.A.clone(), layer.G.clone()
    assert all(torch.equal(layer.decomposition[k], v) for k, v in first.items())
    opt.step(closure)  # step 5 installs it, although the factors have moved on
    assert not torch.equal(layer.G, requested_G)
    expected = decompose("cholesky", requested_A, requested_G, gamma)
    for key, value in expected.items():
        torch.testing.assert_close(layer.decomposition[key], value, rtol=0, atol=0)
    opt.coordinator.close()


def test_stale_inverses_still_train():
    model, opt, closure = _setup(Coordinator(World(), staleness=3), fisher="exact", inv_every=2)
    losses = [float(opt.step(closure)) for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0]
    opt.coordinator.close()


@pytest.mark.parametrize("staleness", [-1, 1.5, True])
def test_bad_staleness_is_rejected_with_its_value(staleness):
    with pytest.raises(ValueError, match="staleness must be None or an integer >= 0"):
        RefreshSchedule(staleness)
