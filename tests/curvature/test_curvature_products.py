"""Matrix-free products against dense matrices (float64)."""

from __future__ import annotations

import pytest
import torch
from exact_reference import batch, reference_ggn, reference_hessian, tanh_mlp

from natgrad.curvature.dense import dense_fisher, flatten_tensors
from natgrad.curvature.likelihoods import get_likelihood
from natgrad.curvature.output_space import loss_output_curvature
from natgrad.curvature.products import (
    CurvatureOperator,
    fisher_vector_product,
    ggn_vector_product,
    hessian_vector_product,
)

NAMES = ["categorical", "gaussian", "bernoulli"]


def random_vector(model, seed=5):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in model.parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_ggn_vector_product_matches_dense(name):
    model = tanh_mlp(3)
    inputs, targets = batch(name)
    vector = random_vector(model)
    product = flatten_tensors(ggn_vector_product(model, inputs, name, vector))
    expected = reference_ggn(model, inputs, targets, name) @ flatten_tensors(vector)
    torch.testing.assert_close(product, expected)


@pytest.mark.parametrize("name", NAMES)
def test_hessian_vector_product_matches_dense(name):
    model = tanh_mlp(3)
    inputs, targets = batch(name)
    vector = random_vector(model)
    product = flatten_tensors(hessian_vector_product(model, inputs, targets, name, vector))
    expected = reference_hessian(model, inputs, targets, name) @ flatten_tensors(vector)
    torch.testing.assert_close(product, expected)


@pytest.mark.parametrize("kind", ["exact", "mc", "empirical"])
def test_fisher_vector_product_matches_dense_with_same_draw(kind):
    model = tanh_mlp(3)
    inputs, targets = batch("categorical")
    vector = random_vector(model)
    options = {"targets": targets, "samples": 3}
    product = fisher_vector_product(
        model,
        inputs,
        "categorical",
        vector,
        kind,
        generator=torch.Generator().manual_seed(0),
        **options,
    )
    dense = dense_fisher(
        model, inputs, "categorical", kind, generator=torch.Generator().manual_seed(0), **options
    )
    torch.testing.assert_close(flatten_tensors(product), dense @ flatten_tensors(vector))


def test_operator_keeps_one_monte_carlo_draw_and_adds_damping():
    model = tanh_mlp(3)
    inputs, _ = batch("bernoulli")
    generator = torch.Generator().manual_seed(0)
    operator = CurvatureOperator.fisher(
        model, inputs, "bernoulli", kind="mc", generator=generator, damping=0.5
    )
    dense = dense_fisher(
        model, inputs, "bernoulli", kind="mc", generator=torch.Generator().manual_seed(0)
    )
    size = operator.shape[0]
    basis = torch.eye(size, dtype=torch.float64)
    columns = torch.stack([operator @ basis[k] for k in range(size)], dim=1)
    torch.testing.assert_close(columns, dense + 0.5 * basis)


@pytest.mark.parametrize("name", NAMES)
def test_loss_graph_operator_with_residual_is_the_hessian(name):
    """J^T (d^2L/df^2) J + sum w_nc d^2 f_nc, built from a loss graph alone, is the Hessian."""
    model = tanh_mlp(3)
    inputs, targets = batch(name)
    outputs = model(inputs)
    loss = get_likelihood(name).loss(outputs, targets)
    curvature, output_gradient = loss_output_curvature(loss, outputs)
    operator = CurvatureOperator(model, inputs, curvature, residual_weights=output_gradient)
    vector = flatten_tensors(random_vector(model))
    expected = reference_hessian(model, inputs, targets, name) @ vector
    torch.testing.assert_close(operator @ vector, expected)


def test_products_run_on_a_model_too_large_for_dense_matrices():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(100, 1000), torch.nn.Tanh(), torch.nn.Linear(1000, 100)
    )
    inputs = torch.randn(8, 100)
    vector = random_vector(model)
    vector = [v.float() for v in vector]
    product = ggn_vector_product(model, inputs, "categorical", vector)
    assert [p.shape for p in product] == [p.shape for p in model.parameters()]
    quadratic = float(flatten_tensors(product) @ flatten_tensors(vector))
    assert quadratic > 0


def test_vector_shape_is_checked():
    model = tanh_mlp(3)
    inputs, _ = batch("gaussian")
    vector = random_vector(model)
    with pytest.raises(ValueError, match="tensors"):
        ggn_vector_product(model, inputs, "gaussian", vector[:-1])
    with pytest.raises(ValueError, match="shape"):
        ggn_vector_product(model, inputs, "gaussian", [v.T for v in vector])
