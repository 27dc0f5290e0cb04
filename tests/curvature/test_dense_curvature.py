"""Dense Fisher/GGN/Hessian against plain-autograd references in float64."""

from __future__ import annotations

import pytest
import torch
from exact_reference import (
    batch,
    jacobian_rows,
    per_example_gradients,
    reference_ggn,
    reference_hessian,
    tanh_mlp,
)

from natgrad.curvature.dense import (
    dense_fisher,
    dense_ggn,
    dense_hessian,
    flatten_params,
    output_jacobian,
    unflatten_like,
)
from natgrad.curvature.likelihoods import get_likelihood

NAMES = ["categorical", "gaussian", "bernoulli"]


def test_parameter_ordering_is_named_parameters_row_major():
    model = tanh_mlp(3)
    model[0].bias.requires_grad_(False)
    expected = torch.cat(
        [p.detach().reshape(-1) for _, p in model.named_parameters() if p.requires_grad]
    )
    assert torch.equal(flatten_params(model), expected)
    like = [p for p in model.parameters() if p.requires_grad]
    pieces = unflatten_like(expected, like)
    assert all(torch.equal(a, b) for a, b in zip(pieces, like, strict=True))
    with pytest.raises(ValueError, match="entries"):
        unflatten_like(expected[:-1], like)


def test_output_jacobian_matches_backward_rows():
    model = tanh_mlp(3)
    inputs, _ = batch("gaussian")
    torch.testing.assert_close(output_jacobian(model, inputs), jacobian_rows(model, inputs))


@pytest.mark.parametrize("name", NAMES)
def test_exact_fisher_equals_independent_ggn(name):
    model = tanh_mlp(3)
    inputs, targets = batch(name)
    reference = reference_ggn(model, inputs, targets, name)
    torch.testing.assert_close(dense_fisher(model, inputs, name, kind="exact"), reference)
    torch.testing.assert_close(dense_ggn(model, inputs, get_likelihood(name)), reference)


def test_gaussian_ggn_is_jacobian_gram():
    model = tanh_mlp(2)
    inputs, _ = batch("gaussian", classes=2)
    jac = jacobian_rows(model, inputs).flatten(0, 1)
    torch.testing.assert_close(dense_ggn(model, inputs, "gaussian"), jac.T @ jac / inputs.shape[0])


def test_categorical_exact_fisher_equals_enumerated_expectation():
    """F = (1/N) sum_n sum_y p(y|x_n) g_ny g_ny^T, enumerating every class."""
    model = tanh_mlp(3)
    inputs, _ = batch("categorical")
    probs = torch.softmax(model(inputs), dim=-1).detach()
    total = torch.zeros(flatten_params(model).numel(), flatten_params(model).numel()).double()
    for y in range(3):
        labels = torch.full((inputs.shape[0],), y)
        grads = per_example_gradients(model, inputs, labels, "categorical")
        total += (grads * probs[:, y : y + 1]).T @ grads
    torch.testing.assert_close(dense_fisher(model, inputs, "categorical"), total / inputs.shape[0])


def _relative_error(estimate, reference):
    return float((estimate - reference).norm() / reference.norm())


@pytest.mark.parametrize("name", NAMES)
def test_mc_fisher_converges_to_exact(name):
    model = tanh_mlp(3)
    inputs, _ = batch(name)
    exact = dense_fisher(model, inputs, name)
    errors = []
    for samples in (4, 4096):
        generator = torch.Generator().manual_seed(3)
        mc = dense_fisher(model, inputs, name, kind="mc", samples=samples, generator=generator)
        errors.append(_relative_error(mc, exact))
    # Monte Carlo error scales as 1/sqrt(S): 4096 samples give a few percent at most.
    assert errors[1] < 0.08
    assert errors[1] < errors[0] / 4


def test_mc_fisher_with_wrong_sampling_distribution_is_caught():
    """The tolerance above rejects targets drawn from the wrong distribution."""
    model = tanh_mlp(3)
    inputs, _ = batch("categorical")
    exact = dense_fisher(model, inputs, "categorical")
    generator = torch.Generator().manual_seed(3)
    uniform = torch.randint(0, 3, (4096 * inputs.shape[0],), generator=generator)
    wrong = dense_fisher(
        model, inputs.repeat(4096, 1), "categorical", kind="empirical", targets=uniform
    )
    assert _relative_error(wrong, exact) > 0.08


@pytest.mark.parametrize("name", NAMES)
def test_empirical_fisher_is_mean_outer_product_of_per_example_gradients(name):
    model = tanh_mlp(3)
    inputs, targets = batch(name)
    grads = per_example_gradients(model, inputs, targets, name)
    empirical = dense_fisher(model, inputs, name, kind="empirical", targets=targets)
    torch.testing.assert_close(empirical, grads.T @ grads / inputs.shape[0])
    assert _relative_error(empirical, dense_fisher(model, inputs, name)) > 0.1


@pytest.mark.parametrize("name", NAMES)
def test_dense_hessian_matches_double_backward(name):
    model = tanh_mlp(3)
    inputs, targets = batch(name)
    hessian = dense_hessian(model, inputs, targets, name)
    torch.testing.assert_close(hessian, reference_hessian(model, inputs, targets, name))
    assert _relative_error(hessian, dense_ggn(model, inputs, name)) > 1e-3


def test_linear_model_hessian_equals_ggn_for_gaussian():
    """With outputs linear in theta the GGN drops nothing: H = G = X^T X / N (+ bias)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False).double()
    inputs, targets = torch.randn(10, 4).double(), torch.randn(10, 1).double()
    expected = inputs.T @ inputs / 10
    torch.testing.assert_close(dense_hessian(model, inputs, targets, "gaussian"), expected)
    torch.testing.assert_close(dense_ggn(model, inputs, "gaussian"), expected)


def test_bad_arguments():
    model = tanh_mlp(3)
    inputs, _ = batch("categorical")
    with pytest.raises(ValueError, match="kind must be one of"):
        dense_fisher(model, inputs, "categorical", kind="true")
    with pytest.raises(ValueError, match="targets"):
        dense_fisher(model, inputs, "categorical", kind="empirical")
    with pytest.raises(ValueError, match="samples"):
        dense_fisher(model, inputs, "categorical", kind="mc", samples=0)
    with pytest.raises(ValueError, match="valid: bernoulli, categorical, gaussian"):
        dense_ggn(model, inputs, "poisson")
