"""Plateau: natural gradient jumps over the plateau that stalls gradient descent.

A deep narrow tanh network (2-8-8-8-1) with small initial weights (scale 0.1 times
PyTorch's default) fits a fixed nonlinear teacher, y = tanh(2 x1 x2) + sin(2 x1), on 64
points with the gaussian likelihood. Near zero weights the output barely depends on the
parameters (a saddle of the loss), so gradient descent sits at the loss of the best
constant predictor for a long stretch before it escapes. The plateau of the loss is a
plateau of the predictive distribution p(y|x), so the Fisher is tiny there and
(F + lambda I)^{-1} rescales the step: natural gradient leaves it in a few steps (seed;
Pascanu & Bengio 2014). Reported: the loss curves and the steps each method needs to
bring the loss below ``TARGET_LOSS``; SGD gets the best learning rate of a small grid
(its runs stop at the target, so its curve ends there).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from natgrad.experiments.experiment import (
    Experiment,
    register_experiment,
    single_thread,
    write_results,
)
from natgrad.optim import SGD
from natgrad.optim.natural_gradient import NaturalGradient
from natgrad.train.session import DivergenceRule, optimizer_step

DIVERGENCE = DivergenceRule(threshold=1e3)  # a loss this large, or not finite, ends a run
TARGET_LOSS = 0.1
INIT_SCALE = 0.1
WIDTH, DEPTH = 8, 4


def teacher_data(n: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs x ~ N(0, I_2) and targets y = tanh(2 x1 x2) + sin(2 x1), in float64."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    targets = torch.tanh(2 * inputs[:, :1] * inputs[:, 1:]) + torch.sin(2 * inputs[:, :1])
    return inputs, targets


def narrow_tanh_network(seed: int = 0) -> nn.Module:
    """2-8-8-8-1 tanh network, default weights scaled by ``INIT_SCALE``, zero biases."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = 2
    for _ in range(DEPTH - 1):
        layers += [nn.Linear(fan_in, WIDTH), nn.Tanh()]
        fan_in = WIDTH
    layers.append(nn.Linear(fan_in, 1))
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(INIT_SCALE)
                layer.bias.zero_()
    return model


def train(make_optimizer, steps: int, second_order: bool, stop_at_target: bool) -> list[float]:
    """Loss before each full-batch step from the fixed initialization (up to ``steps``)."""
    inputs, targets = teacher_data()
    model = narrow_tanh_network()
    optimizer = make_optimizer(model)

    def closure() -> tuple[Tensor, Tensor]:
        outputs = model(inputs)
        return 0.5 * (outputs - targets).pow(2).sum(dim=1).mean(), outputs

    losses = []
    for _ in range(steps):
        loss = optimizer_step(optimizer, closure, second_order)
        losses.append(float(loss.detach()))
        if DIVERGENCE.diverged(losses[-1]):
            break
        if stop_at_target and losses[-1] < TARGET_LOSS:
            break
    return losses


def steps_to_target(losses: list[float]) -> int | None:
    """The first step index whose loss is below ``TARGET_LOSS`` (None if never)."""
    return next((k for k, value in enumerate(losses) if value < TARGET_LOSS), None)


def _plot(curves: dict[str, list[float]], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, losses in curves.items():
        axes.plot(range(1, len(losses) + 1), losses, label=name)
    axes.axhline(TARGET_LOSS, color="0.6", linestyle=":", linewidth=1, label="target")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss (1/2 mean squared error)")
    axes.set_title("Plateau of a deep narrow tanh network (small initialization)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out_dir / "loss_vs_steps.png", dpi=120)
    plt.close(figure)


def run(out_dir: Path, quick: bool = False) -> dict:
    """SGD (best lr of a grid) against natural gradient on the plateau problem."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sgd_steps = 300 if quick else 3000
    sgd_lrs = (0.8,) if quick else (0.3, 0.5, 0.8, 1.0)
    with single_thread():
        sgd_curves = {
            lr: train(lambda m, lr=lr: SGD(m.parameters(), lr=lr), sgd_steps, False, True)
            for lr in sgd_lrs
        }
    reached = {lr: steps_to_target(c) for lr, c in sgd_curves.items()}
    best_lr = min(sgd_lrs, key=lambda lr: (reached[lr] is None, reached[lr] or 0))

    def natural_gradient(model: nn.Module) -> NaturalGradient:
        return NaturalGradient(model, lr=1.0, damping=1e-2, likelihood="gaussian")

    with single_thread():
        ngd_curve = train(natural_gradient, 25 if quick else 60, True, False)
    curves = {f"SGD (lr={best_lr})": sgd_curves[best_lr], "NGD (lr=1, damping=1e-2)": ngd_curve}
    _plot(curves, out_dir)
    results = {
        "target_loss": TARGET_LOSS,
        "initial_loss": sgd_curves[best_lr][0],
        "plateau_loss_sgd_step_100": sgd_curves[best_lr][min(99, len(sgd_curves[best_lr]) - 1)],
        "sgd_steps_to_target_by_lr": {str(lr): reached[lr] for lr in sgd_lrs},
        "sgd_best_lr": best_lr,
        "steps_to_target": {"SGD": reached[best_lr], "NGD": steps_to_target(ngd_curve)},
        "final_loss": {"SGD": sgd_curves[best_lr][-1], "NGD": ngd_curve[-1]},
        "steps_run": {"SGD": len(sgd_curves[best_lr]), "NGD": len(ngd_curve)},
        "figure": "loss_vs_steps.png",
    }
    write_results(out_dir, results)
    print(
        f"steps to loss < {TARGET_LOSS}: SGD {reached[best_lr]}, NGD {steps_to_target(ngd_curve)}"
    )
    return results


register_experiment(
    Experiment(
        name="plateau",
        description="deep narrow tanh net, small init: SGD plateau vs natural gradient",
        run=run,
    )
)
