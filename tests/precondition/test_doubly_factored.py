"""Doubly-factored statistics and preconditioning against dense float64 references."""

import math

import pytest
import torch

from natgrad.curvature.doubly_factored import doubly_factored_factors, rank_one_factors
from natgrad.precondition.doubly_factored import DoublyFactoredPreconditioner


def _spd(n, generator):
    x = torch.randn(n, 2 * n, generator=generator, dtype=torch.float64)
    return x @ x.T / (2 * n) + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize(("channels", "locations"), [(5, 3), (3, 5), (4, 4)])
def test_rank_one_factors_are_the_top_singular_pair_split_evenly(channels, locations):
    generator = torch.Generator().manual_seed(0)
    matrices = torch.randn(9, channels, locations, generator=generator)
    k, psi = rank_one_factors(matrices)
    U, S, Vh = torch.linalg.svd(matrices.double())
    best = S[:, 0, None, None] * U[:, :, :1] @ Vh[:, :1, :]
    torch.testing.assert_close((k[:, :, None] * psi[:, None, :]).double(), best, atol=1e-5, rtol=0)
    torch.testing.assert_close(k.norm(dim=1) ** 2, S[:, 0].float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(psi.norm(dim=1) ** 2, S[:, 0].float(), rtol=1e-5, atol=1e-6)


def test_factors_of_a_bias_layer_ignore_the_ones_column_and_average_over_rows():
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(6, 2 * 3, generator=generator)
    with_ones = torch.cat([rows, torch.ones(6, 1)], dim=1)
    G = torch.eye(4)
    factors = doubly_factored_factors(with_ones, (2, 3), True, G)
    k, psi = rank_one_factors(rows.reshape(6, 2, 3))
    torch.testing.assert_close(factors.K, k.T @ k / 6)
    torch.testing.assert_close(factors.Psi, psi.T @ psi / 6)
    assert factors.G is G


def _three_factor_dense_reference(K, Psi, G, V, lam):
    """Dense: damped factors from the paper's three-factor pi, then the Kronecker inverse."""
    means = [torch.trace(F) / F.shape[0] for F in (K, Psi, G)]
    geometric = math.prod(float(m) for m in means) ** (1 / 3)
    dampings = [float(m) / geometric * lam ** (1 / 3) for m in means]
    assert math.isclose(math.prod(dampings), lam, rel_tol=1e-9)
    K_d, Psi_d, G_d = (
        F + d * torch.eye(F.shape[0], dtype=F.dtype)
        for F, d in zip((K, Psi, G), dampings, strict=True)
    )
    inputs = K.shape[0] * Psi.shape[0]
    weight = V[:, :inputs]
    # vec index c * locations + l, so the input-side factor is kron(K, Psi)
    weight_update = torch.linalg.solve(G_d, weight) @ torch.linalg.inv(torch.kron(K_d, Psi_d))
    bias_update = torch.linalg.solve(G_d, V[:, inputs]) / (1 + lam / dampings[2])
    return torch.cat([weight_update, bias_update[:, None]], dim=1)


@pytest.mark.parametrize("method", ["cholesky", "eigen"])
def test_mode_product_preconditioning_equals_the_dense_kronecker_inverse(method):
    generator = torch.Generator().manual_seed(2)
    channels, locations, out, lam = 4, 3, 5, 0.05
    K, Psi, G = _spd(channels, generator), _spd(locations, generator), _spd(out, generator)
    V = torch.randn(out, channels * locations + 1, generator=generator, dtype=torch.float64)
    gamma = math.sqrt(lam)

    class Factors:
        def matrices(self):
            return (K.float(), Psi.float(), G.float())

    preconditioner = DoublyFactoredPreconditioner(method)
    preconditioner.factors = dict(zip(("K", "Psi", "G"), Factors().matrices(), strict=True))
    preconditioner.refresh(gamma)
    got = preconditioner.apply(V.float(), gamma)
    expected = _three_factor_dense_reference(K, Psi, G, V, lam)
    torch.testing.assert_close(got.double(), expected, rtol=2e-4, atol=1e-5)


def test_without_a_decomposition_apply_is_the_identity():
    V = torch.randn(3, 7)
    assert torch.equal(DoublyFactoredPreconditioner().apply(V, 0.1), V)


def test_state_dict_round_trip_keeps_factors_and_decomposition():
    generator = torch.Generator().manual_seed(3)
    preconditioner = DoublyFactoredPreconditioner()
    preconditioner.factors = {
        "K": _spd(3, generator).float(),
        "Psi": _spd(2, generator).float(),
        "G": _spd(4, generator).float(),
    }
    preconditioner.refresh(0.3)
    V = torch.randn(4, 7, generator=generator)
    restored = DoublyFactoredPreconditioner()
    restored.load_state_dict(preconditioner.state_dict())
    assert restored.ready
    assert torch.equal(restored.apply(V, 0.3), preconditioner.apply(V, 0.3))
