"""The quadratic model's Fisher products from the Kronecker factors (model_curvature)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natgrad.optim.kfac import KFAC


def _stepped(model: nn.Module, inputs: torch.Tensor, **options) -> KFAC:
    targets = torch.randint(0, 4, (inputs.shape[0],), generator=torch.Generator().manual_seed(1))
    optimizer = KFAC(model, lr=0.1, damping=0.1, adapt_step=True, **options)

    def closure():
        outputs = model(inputs)
        return F.cross_entropy(outputs, targets), outputs

    for _ in range(3):
        optimizer.step(closure)
    return optimizer


def _dense_layer_curvature(preconditioner) -> torch.Tensor:
    """The running factors' Kronecker product in V's row-major order (float64)."""
    if "K" in preconditioner.state_dict():
        K, Psi, G = (preconditioner.factors[n].double() for n in ("K", "Psi", "G"))
        inputs = K.shape[0] * Psi.shape[0]
        out = G.shape[0]
        dense = torch.zeros(out, inputs + 1, out, inputs + 1, dtype=torch.float64)
        dense[:, :inputs, :, :inputs] = torch.kron(G, torch.kron(K, Psi)).reshape(
            out, inputs, out, inputs
        )
        dense[:, inputs, :, inputs] = G
        return dense.reshape(out * (inputs + 1), -1)
    return torch.kron(preconditioner.G.double(), preconditioner.A.double())


@pytest.mark.parametrize("doubly", [False, True])
def test_the_kronecker_gram_is_the_block_diagonal_kronecker_curvature(doubly):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))
    options = {"doubly_factored": "1"} if doubly else {}
    optimizer = _stepped(model, torch.randn(16, 2, 3), model_curvature="kronecker", **options)
    generator = torch.Generator().manual_seed(2)
    shapes = [(5, 7), (4, 6)]
    U = [torch.randn(s, generator=generator) for s in shapes]
    W = [torch.randn(s, generator=generator) for s in shapes]
    gram, _, _ = optimizer.quadratic_model.gram([U, W], [[], []], (), U)
    expected = torch.zeros(2, 2, dtype=torch.float64)
    for p, u, w in zip(optimizer.preconditioners, U, W, strict=True):
        C = _dense_layer_curvature(p)
        vectors = [u.double().reshape(-1), w.double().reshape(-1)]
        for i in range(2):
            for j in range(2):
                expected[i, j] += vectors[i] @ C @ vectors[j]
    torch.testing.assert_close(gram.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("curvature", "forwards"), [("kronecker", 3), ("exact", 6)])
def test_kronecker_products_need_no_forward_of_their_own(curvature, forwards):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    optimizer = _stepped(model, torch.randn(64, 6), model_curvature=curvature)
    # the closure's forward per step (its statistics reuse it), and the exact products' own
    assert len(calls) == forwards
    coefficients = optimizer.model_rule.step_coefficients
    assert coefficients is not None and torch.isfinite(coefficients).all()


def test_a_bad_model_curvature_is_one_value_error():
    with pytest.raises(ValueError, match="model_curvature must be one of exact, kronecker"):
        KFAC(nn.Linear(3, 2), lr=0.1, model_curvature="dense")


def test_kronecker_products_without_a_quadratic_model_are_said():
    with pytest.warns(UserWarning, match="model_curvature='kronecker' has no effect"):
        KFAC(nn.Linear(3, 2), lr=0.1, model_curvature="kronecker")
