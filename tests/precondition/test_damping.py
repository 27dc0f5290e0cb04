"""Factored Tikhonov damping and the Kronecker inverses against dense float64 solves."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from kfac_settings import EXACT_ONE_STEP
from natgrad.optim.kfac import KFAC
from natgrad.precondition.damping import damping_gamma, factored_pi
from natgrad.precondition.factor_inverse import decompose, precondition, symmetric_inverse


def _spd(size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    root = torch.randn(size, size + 2, generator=generator)
    return root @ root.T / size


def _dense_damped_solve(A, G, V, gamma):
    """vec_r(U) = [(G + gamma/pi I) ⊗ (A + pi gamma I)]^{-1} vec_r(V), in float64."""
    A, G, V = A.double(), G.double(), V.double()
    pi = math.sqrt((torch.trace(A) / len(A)) / (torch.trace(G) / len(G)))
    damped = torch.kron(G + gamma / pi * torch.eye(len(G)), A + pi * gamma * torch.eye(len(A)))
    return torch.linalg.solve(damped, V.reshape(-1)).reshape(V.shape)


def test_trace_norm_pi_matches_its_definition():
    A, G = _spd(4, 0), 3.0 * _spd(3, 1)
    expected = math.sqrt((torch.trace(A).item() / 4) / (torch.trace(G).item() / 3))
    assert factored_pi(A, G).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", ["cholesky", "eigen"])
def test_damped_kronecker_inverse_matches_dense_solve(method):
    A, G = _spd(5, 2), 10.0 * _spd(3, 3)
    V = torch.randn(3, 5, generator=torch.Generator().manual_seed(4))
    gamma = damping_gamma(0.3, weight_decay=0.01)
    assert gamma == pytest.approx(math.sqrt(0.31))
    result = precondition(method, decompose(method, A, G, gamma), V, gamma)
    torch.testing.assert_close(
        result.double(), _dense_damped_solve(A, G, V, gamma), rtol=1e-4, atol=1e-6
    )


def test_eigen_takes_a_new_damping_without_a_new_decomposition():
    A, G = _spd(4, 5), _spd(6, 6)
    V = torch.randn(6, 4, generator=torch.Generator().manual_seed(7))
    decomposition = decompose("eigen", A, G, gamma=1.0)
    for gamma in (0.1, 2.0):
        result = precondition("eigen", decomposition, V, gamma)
        torch.testing.assert_close(
            result.double(), _dense_damped_solve(A, G, V, gamma), rtol=1e-4, atol=1e-6
        )


def test_failed_cholesky_is_retried_with_a_raised_floor():
    indefinite = torch.diag(torch.tensor([1.0, -1e-9, 2.0]))
    inverse = symmetric_inverse(indefinite)
    assert inverse.dtype == torch.float32
    assert torch.isfinite(inverse).all()
    torch.testing.assert_close(torch.diagonal(inverse)[[0, 2]], torch.tensor([1.0, 0.5]))


def test_kfac_step_equals_dense_pi_damped_update():
    """lr = 1, momentum 0, fresh exact statistics: each layer moves by -(damped A ⊗ G)^{-1} V."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    inputs, targets = torch.randn(10, 3), torch.randn(10, 2)
    damping, weight_decay = 0.05, 0.02
    reference = copy.deepcopy(model).double()
    opt = KFAC(model, damping=damping, weight_decay=weight_decay, **EXACT_ONE_STEP)

    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    opt.step(closure)
    x = inputs.double()
    hidden_pre = reference[0](x)
    hidden = torch.tanh(hidden_pre)
    outputs = reference[2](hidden)
    loss = 0.5 * (outputs - targets.double()).pow(2).sum(1).mean()
    loss.backward()
    # independent factors: A = E[a_bar a_bar^T]; G = E[J_s^T J_s] (gaussian, H_out = I)
    W2 = reference[2].weight.detach()
    slope = 1 - hidden.detach().pow(2)
    a_bars = [x, hidden.detach()]
    # d outputs / d s per example: W2 diag(1 - tanh^2) for layer 1, I for layer 2
    jacobians = [W2.unsqueeze(0) * slope.unsqueeze(1), torch.eye(2, dtype=x.dtype).expand(10, 2, 2)]
    gamma = math.sqrt(damping + weight_decay)
    for layer, a, jac, new in zip(
        [reference[0], reference[2]], a_bars, jacobians, [model[0], model[2]], strict=True
    ):
        a_bar = torch.cat([a, torch.ones(10, 1, dtype=a.dtype)], dim=1)
        A = a_bar.T @ a_bar / 10
        G = torch.einsum("nco,ncp->op", jac, jac) / 10
        V = torch.cat(
            [
                layer.weight.grad + weight_decay * layer.weight.detach(),
                (layer.bias.grad + weight_decay * layer.bias.detach()).unsqueeze(1),
            ],
            dim=1,
        )
        expected = torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], dim=1)
        expected = expected - _dense_damped_solve(A, G, V, gamma)
        got = torch.cat([new.weight.detach(), new.bias.detach().unsqueeze(1)], dim=1)
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)
