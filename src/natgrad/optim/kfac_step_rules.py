"""K-FAC's step rules as small parts: fixed step with KL clipping, quadratic-model step,
Levenberg-Marquardt damping (Martens & Grosse 2015, s.6-7; Ba et al. 2017, s.5).

Each works on per-layer matrices (lists with None for layers without an update) and
keeps no parameters of its own: the K-FAC front holds the per-layer state (velocities,
previous updates) in the optimizer state so that checkpoints carry it. The scalar
equations are in :mod:`natgrad.optim.kfac_step_equations`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.optim.kfac_step_equations import (
    LM_INTERVAL,
    kl_clip_scale,
    levenberg_marquardt_damping,
    levenberg_marquardt_omega,
    quadratic_model_coefficients,
    quadratic_model_value,
    reduction_ratio,
)
from natgrad.optim.quadratic_model import LayerMatrices, QuadraticModel, layer_dot

Flatten = Callable[[LayerMatrices], list[Tensor]]


@dataclass(frozen=True)
class DampingConfig:
    """Levenberg-Marquardt damping adaptation: every ``interval`` steps, clipped to
    [max(min_damping, relative_min_damping * s), max_damping] with s the curvature's scale
    (:func:`curvature_scale`).

    The relative floor keeps lambda from falling towards zero while the reduction ratio
    stays near 1 on the batch it was measured on: with 1/8 sub-batches the factors of a
    wide layer are rank-deficient, and as gamma = sqrt(lambda + eta) vanishes the proposal
    grows without bound along their null space (docs/RESULTS.md, "Stable by default").
    """

    interval: int = LM_INTERVAL
    min_damping: float = 1e-8
    max_damping: float = 1e8
    relative_min_damping: float = 1e-3

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"DampingConfig.interval must be >= 1, got {self.interval}")
        if not 0.0 <= self.relative_min_damping < float("inf"):
            raise ValueError(
                "DampingConfig.relative_min_damping must be a finite number >= 0, got "
                f"{self.relative_min_damping}"
            )
        if not 0.0 <= self.min_damping <= self.max_damping:
            raise ValueError(
                "DampingConfig needs 0 <= min_damping <= max_damping, got "
                f"{self.min_damping} and {self.max_damping}"
            )


@dataclass
class StepInputs:
    """What every rule sees: V + eta theta and U per layer, the batch, the param group."""

    grads: LayerMatrices
    proposals: LayerMatrices
    batch_inputs: tuple
    group: dict


@dataclass
class FixedStepRule:
    """d = -lr v with v <- momentum v + nu U (nu = KL-clip scale, 1 without clipping)."""

    kl_clip: float | None = None

    def updates(
        self, inputs: StepInputs, velocities: list[Tensor | None]
    ) -> tuple[LayerMatrices, list[Tensor | None]]:
        lr, momentum = inputs.group["lr"], inputs.group["momentum"]
        proposals = inputs.proposals
        if self.kl_clip is not None:
            scale = kl_clip_scale(layer_dot(inputs.grads, proposals), lr, self.kl_clip)
            proposals = [None if U is None else U * scale for U in proposals]
        updates: LayerMatrices = []
        new_velocities: list[Tensor | None] = []
        for U, velocity in zip(proposals, velocities, strict=True):
            if U is None:
                updates.append(None)
                new_velocities.append(velocity)
                continue
            velocity = U.clone() if velocity is None else velocity.mul_(momentum).add_(U)
            updates.append(velocity * -lr)
            new_velocities.append(velocity)
        return updates, new_velocities


@dataclass
class QuadraticModelStepRule:
    """d = alpha Delta + mu delta0 minimizing M(d) (docs/REFERENCES.md s.3); also M(d) - M(0).

    ``restart_momentum``: a mu outside [0, 1] restarts the momentum
    (:func:`momentum_in_unit_interval`); False gives the unconstrained minimizer of
    Martens & Grosse (2015, s.7), natgrad 0.1's rule.
    """

    model: QuadraticModel
    restart_momentum: bool = True
    # the model's minimizer (alpha, mu) of the latest step, before any restart (a tensor:
    # reading it is the host sync), for diagnostics
    last_coefficients: Tensor | None = None

    def updates(
        self, inputs: StepInputs, previous: LayerMatrices, flatten: Flatten
    ) -> tuple[LayerMatrices, Tensor]:
        deltas = [None if U is None else -U for U in inputs.proposals]
        has_previous = any(p is not None for p in previous)
        if has_previous:
            previous = [
                p if p is not None or d is None else torch.zeros_like(d)
                for p, d in zip(previous, deltas, strict=True)
            ]
        directions = [deltas, previous] if has_previous else [deltas]
        fisher_gram, inner_gram, grad_dots = self.model.gram(
            directions, [flatten(u) for u in directions], inputs.batch_inputs, inputs.grads
        )
        if not has_previous:
            fisher_gram = torch.block_diag(fisher_gram, torch.ones_like(fisher_gram))
            inner_gram = torch.block_diag(inner_gram, torch.ones_like(inner_gram))
            grad_dots = torch.cat([grad_dots, torch.zeros_like(grad_dots)])
        group = inputs.group
        total_damping = group["damping"] + group["weight_decay"]
        coefficients = quadratic_model_coefficients(
            fisher_gram, inner_gram, grad_dots, total_damping, has_previous
        )
        self.last_coefficients = coefficients
        if self.restart_momentum:
            curvature_gram = fisher_gram + total_damping * inner_gram
            coefficients = momentum_in_unit_interval(coefficients, curvature_gram, grad_dots)
        alpha, mu = coefficients
        updates: LayerMatrices = []
        for delta, prev in zip(deltas, previous, strict=True):
            if delta is None:
                updates.append(None)
            else:
                updates.append(alpha * delta if not has_previous else alpha * delta + mu * prev)
        model_gram = fisher_gram + group["weight_decay"] * inner_gram
        return updates, quadratic_model_value(torch.stack([alpha, mu]), model_gram, grad_dots)

    def predicted_change(
        self, inputs: StepInputs, updates: LayerMatrices, flatten: Flatten
    ) -> Tensor:
        """M(d) - M(0) = 1/2 d^T (F + eta I) d + grad^T d for the update d taken (no lambda)."""
        fisher_gram, inner_gram, grad_dots = self.model.gram(
            [updates], [flatten(updates)], inputs.batch_inputs, inputs.grads
        )
        model_gram = fisher_gram + inputs.group["weight_decay"] * inner_gram
        return quadratic_model_value(torch.ones(1, device=grad_dots.device), model_gram, grad_dots)


def momentum_in_unit_interval(
    coefficients: Tensor, curvature_gram: Tensor, grad_dots: Tensor
) -> Tensor:
    """(alpha, mu): the model's minimizer when its mu lies in [0, 1], else a restart of the
    momentum: mu = 0 and alpha = -b_0 / K_00, the best step along Delta alone (K, b as in
    quadratic_model_coefficients; no host sync).

    A mu above 1 compounds the previous update from step to step and a negative one
    reverses it; both come from a 2 x 2 model estimated on a few examples, and on small
    models they are the steps after which the loss blows up (docs/RESULTS.md, "Stable by
    default"). The restart is that of adaptive-restart momentum (O'Donoghue & Candes 2015).
    """
    restart = torch.stack([-grad_dots[0] / curvature_gram[0, 0], torch.zeros_like(grad_dots[0])])
    mu = coefficients[1]
    return torch.where((mu >= 0.0) & (mu <= 1.0), coefficients, restart)


def curvature_scale(preconditioners: Sequence) -> float:
    """s = max over layers of prod_k tr(F_k) / dim(F_k) over the layer's factors (A, G; or
    K, Psi, G): the mean eigenvalue of the largest layer's Kronecker curvature (0 before any
    factors; one host sync)."""
    scales = []
    for preconditioner in preconditioners:
        state = preconditioner.state_dict() if preconditioner.has_factors else {}
        factors = [state[key] for key in preconditioner.FACTOR_KEYS if key in state]
        if factors:
            means = [torch.diagonal(f).float().mean() for f in factors]
            scales.append(torch.stack(means).prod())
    return float(torch.stack(scales).max()) if scales else 0.0


def penalty_change(params: LayerMatrices, updates: LayerMatrices, group: dict) -> Tensor:
    """eta/2 ||theta + d||^2 - eta/2 ||theta||^2 = eta (<theta, d> + 1/2 ||d||^2) over the
    parameters the updates move: the weight-decay part of h(theta + d) - h(theta)."""
    eta = group["weight_decay"]
    if eta == 0.0:
        return torch.zeros(())
    return eta * (layer_dot(params, updates) + 0.5 * layer_dot(updates, updates))


@dataclass
class LevenbergMarquardtRule:
    """lambda <- omega lambda (rho > 3/4) or lambda / omega (rho < 1/4), omega = (19/20)^T1."""

    config: DampingConfig

    def adapt(
        self, damping: float, actual_change: Tensor, predicted: Tensor, scale: float = 0.0
    ) -> tuple[float, float]:
        """(new damping, rho) for rho = actual_change / predicted (one host sync); the
        damping stays at or above relative_min_damping x ``scale`` (:func:`curvature_scale`)."""
        rho = float(reduction_ratio(actual_change, torch.zeros_like(actual_change), predicted))
        config = self.config
        floor = max(config.min_damping, config.relative_min_damping * scale)
        new_damping = levenberg_marquardt_damping(
            damping,
            rho,
            levenberg_marquardt_omega(config.interval),
            min(floor, config.max_damping),
            config.max_damping,
        )
        return new_damping, rho


__all__ = [
    "DampingConfig",
    "StepInputs",
    "FixedStepRule",
    "QuadraticModelStepRule",
    "LevenbergMarquardtRule",
    "penalty_change",
    "momentum_in_unit_interval",
    "curvature_scale",
]
