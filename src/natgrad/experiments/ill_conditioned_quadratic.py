"""Ill-conditioned quadratic: first-order methods crawl, Newton / natural gradient jumps.

The loss is f(theta) = 1/2 (theta - theta*)^T A (theta - theta*) in 2-D with A = R diag(L, mu)
R^T, condition number L / mu (100 by default) and R a rotation, so no per-coordinate
scaling (Adam) can undo the ill-conditioning. It is written as least squares with the
gaussian likelihood (inputs X = sqrt(2) A^{1/2}, N = 2), so the Fisher = GGN = Hessian = A
and ``NaturalGradient`` with lr = 1 is Newton's method. GD with step eta contracts the
error by max|1 - eta lambda_i| per step, at best (kappa - 1) / (kappa + 1) with
eta = 2 / (L + mu): it bounces across the steep direction and crawls along the flat one
(the seed's "first order optimizers perform badly when curvature is badly conditioned").
Each first-order method gets its best hyperparameters from a grid; the result is the
number of steps until f - f* <= 1e-6 (f(theta_0) - f*).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from natgrad.experiments.experiment import (
    Experiment,
    register_experiment,
    single_thread,
    write_results,
)
from natgrad.optim import SGD, Adam, Momentum
from natgrad.optim.natural_gradient import NaturalGradient
from natgrad.train.session import DivergenceRule, optimizer_step

DIVERGENCE = DivergenceRule(threshold=1e6)  # f(theta) this large, or not finite, ends a run
TOLERANCE = 1e-6
CONDITION_NUMBER = 100.0
ANGLE = math.pi / 6


class LinearPredictor(nn.Module):
    """outputs = X theta, with theta a 2-vector."""

    def __init__(self, start: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(start.clone())

    def forward(self, inputs: Tensor) -> Tensor:
        return inputs @ self.theta.unsqueeze(1)


def curvature_matrix(condition: float = CONDITION_NUMBER, angle: float = ANGLE) -> Tensor:
    """A = R diag(condition, 1) R^T with R the rotation by ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return rotation @ torch.diag(torch.tensor([condition, 1.0], dtype=torch.float64)) @ rotation.T


class Quadratic:
    """f(theta) = 1/2 theta^T A theta as a gaussian least-squares problem (theta* = 0)."""

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = matrix
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        self.inputs = math.sqrt(2) * (eigenvectors * eigenvalues.sqrt()) @ eigenvectors.T
        self.targets = torch.zeros(2, 1, dtype=torch.float64)
        self.start = torch.tensor([-1.8, 1.2], dtype=torch.float64)

    def value(self, theta: Tensor) -> float:
        return float(0.5 * theta @ self.matrix @ theta)

    def closure(self, model: nn.Module):
        def closure() -> tuple[Tensor, Tensor]:
            outputs = model(self.inputs)
            return 0.5 * (outputs - self.targets).pow(2).sum(dim=1).mean(), outputs

        return closure


def run_optimizer(
    problem: Quadratic, make_optimizer, max_steps: int, second_order: bool = False
) -> tuple[int | None, list[list[float]]]:
    """Steps until f <= TOLERANCE f(theta_0) (None if not within ``max_steps``) and the path."""
    model = LinearPredictor(problem.start)
    optimizer = make_optimizer(model)
    closure = problem.closure(model)
    threshold = TOLERANCE * problem.value(problem.start)
    path = [problem.start.tolist()]
    for step in range(1, max_steps + 1):
        optimizer_step(optimizer, closure, second_order)
        theta = model.theta.detach()
        path.append(theta.tolist())
        value = problem.value(theta)
        if value <= threshold:
            return step, path
        if DIVERGENCE.diverged(value):
            return None, path
    return None, path


def _grid_search(problem: Quadratic, builders: dict, max_steps: int) -> tuple[dict, int | None]:
    """The hyperparameters with the fewest steps to tolerance (ties: first in the grid)."""
    best, best_steps = None, None
    for hparams, build in builders.items():
        budget = max_steps if best_steps is None else best_steps - 1  # only a win matters
        steps, _ = run_optimizer(problem, build, budget)
        if steps is not None and (best_steps is None or steps < best_steps):
            best, best_steps = hparams, steps
    return (dict(best) if best is not None else {}), best_steps


def _grids(largest: float, quick: bool) -> dict[str, dict]:
    points = 3 if quick else 12
    # log grid down from the best fixed GD step 2 / (L + mu) (mu = 1), plus the edge 2 / L
    optimal = 2.0 / (largest + 1.0)
    lrs = [0.999 * 2.0 / largest] + [optimal * 10 ** (-2 * k / points) for k in range(points)]
    momenta = [0.8] if quick else [0.5, 0.7, 0.8, 0.9, 0.95]
    adam_lrs = [10 ** (-2 + 2.5 * k / points) for k in range(points)]
    return {
        "GD": {(("lr", lr),): (lambda m, lr=lr: SGD(m.parameters(), lr=lr)) for lr in lrs},
        "Momentum": {
            (("lr", lr), ("momentum", mu)): (
                lambda m, lr=lr, mu=mu: Momentum(m.parameters(), lr=lr, momentum=mu)
            )
            for lr in lrs
            for mu in momenta
        },
        "Adam": {(("lr", lr),): (lambda m, lr=lr: Adam(m.parameters(), lr=lr)) for lr in adam_lrs},
    }


def _plot(problem: Quadratic, paths: dict[str, list], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(-2.2, 2.2, 200, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    values = 0.5 * ((points @ problem.matrix) * points).sum(dim=1)
    figure, axes = plt.subplots(figsize=(6.5, 6))
    levels = torch.logspace(-3, 2.5, 14).tolist()
    axes.contour(xx, yy, values.reshape(xx.shape), levels=levels, colors="0.75", linewidths=0.7)
    for name, path in paths.items():
        coords = torch.tensor(path[:150])
        axes.plot(coords[:, 0], coords[:, 1], marker=".", markersize=3, linewidth=1, label=name)
    axes.plot([0], [0], marker="*", color="k", markersize=12)
    axes.set_xlim(-2.2, 2.2)
    axes.set_ylim(-2.2, 2.2)
    axes.set_aspect("equal")
    axes.set_title(f"Quadratic with condition number {problem_condition(problem):.0f}")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out_dir / "trajectories.png", dpi=120)
    plt.close(figure)


def problem_condition(problem: Quadratic) -> float:
    eigenvalues = torch.linalg.eigvalsh(problem.matrix)
    return float(eigenvalues.max() / eigenvalues.min())


def _table(steps: dict[str, int | None]) -> str:
    lines = [
        "optimizer        steps to 1e-6 (relative)",
        "---------------  ------------------------",
    ]
    for name, count in steps.items():
        lines.append(f"{name:15s}  {count if count is not None else 'not reached'}")
    return "\n".join(lines)


def run(out_dir: Path, quick: bool = False) -> dict:
    """Tune GD, Momentum and Adam on a grid, run Newton (natural gradient), compare."""
    with single_thread():
        return _run(Path(out_dir), quick)


def _run(out_dir: Path, quick: bool) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problem = Quadratic(curvature_matrix())
    max_steps = 1500 if quick else 4000
    largest = float(torch.linalg.eigvalsh(problem.matrix).max())
    steps, best, paths = {}, {}, {}
    for name, builders in _grids(largest, quick).items():
        best[name], _ = _grid_search(problem, builders, max_steps)
        build = builders[tuple(best[name].items())] if best[name] else next(iter(builders.values()))
        steps[name], paths[name] = run_optimizer(problem, build, max_steps)

    def newton(model: nn.Module) -> NaturalGradient:
        return NaturalGradient(model, lr=1.0, damping=0.0, likelihood="gaussian")

    steps["Newton (NGD)"], paths["Newton (NGD)"] = run_optimizer(
        problem, newton, 20, second_order=True
    )
    best["Newton (NGD)"] = {"lr": 1.0, "damping": 0.0}
    _plot(problem, paths, out_dir)
    results = {
        "condition_number": problem_condition(problem),
        "tolerance": TOLERANCE,
        "max_steps": max_steps,
        "steps_to_tolerance": steps,
        "best_hyperparameters": best,
        "gd_optimal_fixed_step_theory": 2.0 / (largest + 1.0),
        "figure": "trajectories.png",
    }
    write_results(out_dir, results)
    print(_table(steps))
    return results


register_experiment(
    Experiment(
        name="ill-conditioned-quadratic",
        description="2-D quadratic, condition 100: GD/Momentum/Adam (tuned) vs Newton",
        run=run,
    )
)
