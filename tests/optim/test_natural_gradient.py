"""NaturalGradient against dense damped solves built from independent references (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from natgrad.curvature.dense import dense_fisher, flatten_params
from natgrad.curvature.likelihoods import get_likelihood
from natgrad.optim.natural_gradient import (
    IndefiniteCurvatureError,
    NaturalGradient,
    conjugate_gradient,
    solve_damped_dense,
)
from natgrad.optim.optimizer_spec import BuildContext, get_optimizer_spec, resolve_hyperparameters


def tanh_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def classification_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, 3, (n,), generator=generator)


def make_closure(model, inputs, targets, name="categorical"):
    likelihood = get_likelihood(name)

    def closure():
        outputs = model(inputs)
        return likelihood.loss(outputs, targets), outputs

    return closure


def loss_gradient(model, inputs, targets, name="categorical"):
    loss = get_likelihood(name).loss(model(inputs), targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def reference_loss_hessian(model, inputs, targets):
    gradient = torch.autograd.grad(
        get_likelihood("categorical").loss(model(inputs), targets),
        list(model.parameters()),
        create_graph=True,
    )
    flat = torch.cat([g.reshape(-1) for g in gradient])
    rows = []
    for k in range(flat.numel()):
        row = torch.autograd.grad(flat[k], list(model.parameters()), retain_graph=True)
        rows.append(torch.cat([r.reshape(-1) for r in row]))
    return torch.stack(rows)


def one_step(model, closure, **options):
    optimizer = NaturalGradient(model, **options)
    loss = optimizer.step(closure)
    return flatten_params(model), loss, optimizer


@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_gaussian_linear_model_reaches_least_squares_in_one_step(solver):
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    inputs, targets = torch.randn(20, 4).double(), torch.randn(20, 2).double()
    closure = make_closure(model, inputs, targets, "gaussian")
    theta, _, _ = one_step(
        model, closure, lr=1.0, damping=1e-12, likelihood="gaussian", solver=solver, cg_tol=1e-12
    )
    design = torch.cat([inputs, torch.ones(20, 1).double()], dim=1)
    solution = torch.linalg.lstsq(design, targets).solution  # (5, 2): weights then bias
    expected = torch.cat([solution[:4].T.reshape(-1), solution[4]])
    torch.testing.assert_close(theta, expected, atol=1e-8, rtol=1e-8)


def _expected_step(model, inputs, targets, matrix, damping, lr=1.0):
    gradient = loss_gradient(model, inputs, targets)
    eye = torch.eye(gradient.numel(), dtype=torch.float64)
    return flatten_params(model) - lr * torch.linalg.solve(matrix + damping * eye, gradient)


@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
def test_tanh_mlp_step_equals_dense_damped_solve(fisher):
    model = tanh_mlp()
    inputs, targets = classification_batch()
    matrix = dense_fisher(
        model,
        inputs,
        "categorical",
        kind=fisher,
        targets=targets,
        samples=2,
        generator=torch.Generator().manual_seed(7),
    )
    expected = _expected_step(model, inputs, targets, matrix, damping=0.1, lr=0.5)
    closure = make_closure(model, inputs, targets)
    theta, loss, _ = one_step(
        model, closure, lr=0.5, damping=0.1, fisher=fisher, mc_samples=2, seed=7
    )
    torch.testing.assert_close(theta, expected)
    assert loss.shape == () and not loss.requires_grad


def test_hessian_step_equals_damped_newton_step():
    model = tanh_mlp()
    inputs, targets = classification_batch()
    hessian = reference_loss_hessian(model, inputs, targets)
    expected = _expected_step(model, inputs, targets, hessian, damping=1.0)
    theta, _, _ = one_step(
        model, make_closure(model, inputs, targets), damping=1.0, curvature="hessian"
    )
    torch.testing.assert_close(theta, expected)


@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
def test_cg_agrees_with_dense(curvature):
    results = []
    for solver in ("dense", "cg"):
        model = tanh_mlp()
        inputs, targets = classification_batch()
        options = dict(damping=1.0, curvature=curvature, solver=solver, cg_tol=1e-12)
        theta, _, optimizer = one_step(model, make_closure(model, inputs, targets), **options)
        results.append(theta)
    torch.testing.assert_close(results[0], results[1])
    assert 0 < optimizer.last_cg_iterations <= 100


def test_weight_decay_adds_to_gradient_and_damping():
    model = tanh_mlp()
    inputs, targets = classification_batch()
    theta0 = flatten_params(model)
    fisher = dense_fisher(model, inputs, "categorical")
    gradient = loss_gradient(model, inputs, targets) + 0.3 * theta0
    eye = torch.eye(theta0.numel(), dtype=torch.float64)
    expected = theta0 - torch.linalg.solve(fisher + 0.4 * eye, gradient)
    theta, _, _ = one_step(
        model, make_closure(model, inputs, targets), damping=0.1, weight_decay=0.3
    )
    torch.testing.assert_close(theta, expected)


def test_momentum_accumulates_directions():
    """Linear gaussian model: F = X^T X / N is constant, so the steps are plain linear algebra."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    inputs, targets = torch.randn(10, 3).double(), torch.randn(10, 1).double()
    optimizer = NaturalGradient(model, lr=0.5, damping=0.2, likelihood="gaussian", momentum=0.9)
    theta = flatten_params(model)
    system = inputs.T @ inputs / 10 + 0.2 * torch.eye(3, dtype=torch.float64)
    velocity = torch.zeros(3, dtype=torch.float64)
    for _ in range(3):
        gradient = inputs.T @ (inputs @ theta - targets[:, 0]) / 10
        velocity = 0.9 * velocity + torch.linalg.solve(system, gradient)
        theta = theta - 0.5 * velocity
        optimizer.step(make_closure(model, inputs, targets, "gaussian"))
    torch.testing.assert_close(flatten_params(model), theta)


def test_state_dict_resumes_exactly_with_momentum_and_mc():
    inputs, targets = classification_batch()
    model = tanh_mlp()
    options = dict(lr=0.3, damping=0.5, fisher="mc", momentum=0.5, seed=3)
    optimizer = NaturalGradient(model, **options)
    for _ in range(2):
        optimizer.step(make_closure(model, inputs, targets))
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    optimizer.step(make_closure(model, inputs, targets))
    continued = flatten_params(model)

    resumed_model = tanh_mlp(seed=99)
    resumed_model.load_state_dict(saved_model)
    resumed = NaturalGradient(resumed_model, **{**options, "seed": 123})
    resumed.load_state_dict(saved_optimizer)
    resumed.step(make_closure(resumed_model, inputs, targets))
    torch.testing.assert_close(flatten_params(resumed_model), continued, rtol=0, atol=0)


def test_indefinite_hessian_raises_and_leaves_parameters_unchanged():
    model = tanh_mlp()
    inputs, targets = classification_batch()
    assert torch.linalg.eigvalsh(reference_loss_hessian(model, inputs, targets)).min() < -1e-6
    before = flatten_params(model)
    optimizer = NaturalGradient(model, damping=0.0, curvature="hessian")
    with pytest.raises(IndefiniteCurvatureError, match="increase damping|damping >"):
        optimizer.step(make_closure(model, inputs, targets))
    assert torch.equal(flatten_params(model), before)


def test_singular_fisher_without_damping_uses_minimum_norm_solution():
    torch.manual_seed(0)
    model = nn.Linear(5, 1, bias=False).double()
    inputs, targets = torch.randn(2, 5).double(), torch.randn(2, 1).double()
    theta0 = flatten_params(model)
    gradient = inputs.T @ (inputs @ theta0 - targets[:, 0]) / 2
    expected = theta0 - torch.linalg.pinv(inputs.T @ inputs / 2) @ gradient
    theta, _, _ = one_step(
        model, make_closure(model, inputs, targets, "gaussian"), damping=0.0, likelihood="gaussian"
    )
    torch.testing.assert_close(theta, expected)
    assert torch.allclose(model(inputs), targets)  # interpolates the two points


def test_linear_algebra_helpers():
    matrix = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(IndefiniteCurvatureError):
        conjugate_gradient(lambda v: matrix @ v, torch.ones(2, dtype=torch.float64), 1e-10, 10)
    with pytest.raises(IndefiniteCurvatureError, match="smallest eigenvalue"):
        solve_damped_dense(matrix, 0.5, torch.ones(2, dtype=torch.float64))
    spd = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    rhs = torch.tensor([1.0, 2.0], dtype=torch.float64)
    solution, iterations = conjugate_gradient(lambda v: spd @ v, rhs, 1e-12, 10)
    torch.testing.assert_close(solution, torch.linalg.solve(spd, rhs))
    assert iterations == 2  # exact in n steps for an n x n system


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"damping": -1.0}, "damping"),
        ({"lr": float("nan")}, "lr"),
        ({"likelihood": "poisson"}, "valid: bernoulli, categorical, gaussian"),
        ({"fisher": "true"}, "fisher must be one of exact, mc, empirical"),
        ({"curvature": "ggn2"}, "curvature must be one of"),
        ({"solver": "lu"}, "solver must be one of"),
        ({"momentum": 1.5}, "momentum"),
        ({"mc_samples": 0}, "mc_samples"),
        ({"cg_tol": 0.0}, "cg_tol"),
        ({"cg_max_iter": 0}, "cg_max_iter"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_arguments_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        NaturalGradient(tanh_mlp(), **options)


def test_closure_contract_errors():
    model = tanh_mlp()
    optimizer = NaturalGradient(model)
    with pytest.raises(ValueError, match="closure"):
        optimizer.step()
    outputs = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="did not call the model"):
        optimizer.step(lambda: (outputs.sum(), outputs))


def test_registry_entry_builds_with_workload_likelihood_and_weight_decay():
    spec = get_optimizer_spec("ngd")
    assert spec.second_order
    hparams = resolve_hyperparameters(spec, {"damping": 0.2})
    assert {"lr", "damping", "fisher", "curvature", "solver", "momentum", "schedule"} <= set(
        hparams
    )
    optimizer = spec.build(tanh_mlp(), BuildContext("gaussian", weight_decay=0.01), hparams)
    assert isinstance(optimizer, NaturalGradient)
    assert optimizer.likelihood.name == "gaussian"
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    assert optimizer.param_groups[0]["damping"] == 0.2
