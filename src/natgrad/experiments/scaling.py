"""Steps to a target against batch size: perfect scaling and the critical batch size.

Shallue et al. (2018) and Zhang et al. (2019) measure, for each batch size B, the
fewest steps S(B) to reach a target (each optimizer tuned at each B). In the
perfect-scaling regime S(B) halves when B doubles, so the examples to the target,
E(B) = B S(B), stay constant; past it E(B) grows. Following the empirical model of
McCandlish et al. (2018), E(B) = E_min (1 + B / B_crit), the critical batch size is
where the examples to the target reach twice their minimum:

    B_crit = the B at which E(B) = 2 E_min,  E_min = min over the measured B of E(B),

found by linear interpolation of log E against log B between the first measured batch
size (after the most example-efficient one) with E >= 2 E_min and the one before it.
Equivalently, it is where the steps-to-target curve lies a factor 2 above the
perfect-scaling line S = E_min / B through the most efficient point.

A batch size whose runs never reach the target within their step budget has
E > B * budget. If that bound is already >= 2 E_min the crossing lies before it, and
interpolating with the bound gives an upper bound on B_crit; if not, nothing is known
past the previous batch size, which is then a lower bound. When E never reaches
2 E_min, the largest batch size is a lower bound.

Because the first crossing rests on two or three points, a badly tuned batch size
(an E(B) that is not monotone) can move it far. :func:`fit_scaling_model` fits the same
model to every reached point instead and is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

CRITICAL_FACTOR = 2.0
BOUNDS = ("estimate", "upper", "lower")


@dataclass(frozen=True)
class CriticalBatch:
    """B_crit and what kind of value it is: an ``estimate``, an ``upper`` or ``lower`` bound."""

    value: float | None
    bound: str
    reference_batch: int | None
    reference_examples: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def examples_to_target(batch_sizes: Sequence[int], steps: Sequence[float | None]) -> list:
    """E(B) = B * S(B), None where the target was not reached."""
    return [None if s is None else b * s for b, s in zip(batch_sizes, steps, strict=True)]


def _log_crossing(b0: float, e0: float, b1: float, e1: float, level: float) -> float:
    """The B between b0 and b1 where the log-log segment (b0, e0)-(b1, e1) reaches ``level``."""
    if e1 <= e0:
        return b1
    fraction = (math.log(level) - math.log(e0)) / (math.log(e1) - math.log(e0))
    return math.exp(math.log(b0) + fraction * (math.log(b1) - math.log(b0)))


def critical_batch_size(
    batch_sizes: Sequence[int],
    steps: Sequence[float | None],
    budgets: Sequence[int] | None = None,
    factor: float = CRITICAL_FACTOR,
) -> CriticalBatch:
    """B_crit of one optimizer from its steps to the target at each batch size.

    ``steps[i]`` is None where the target was not reached within ``budgets[i]`` steps
    (no budget: the bound is unknown). Batch sizes must be increasing; see the module
    docstring for the criterion. ValueError if they are not, or if lengths differ.
    """
    if len(batch_sizes) != len(steps) or (budgets is not None and len(budgets) != len(steps)):
        raise ValueError("batch_sizes, steps and budgets must have the same length")
    if any(b1 <= b0 for b0, b1 in zip(batch_sizes, batch_sizes[1:], strict=False)):
        raise ValueError(f"batch sizes must be increasing, got {list(batch_sizes)}")
    examples = examples_to_target(batch_sizes, steps)
    reached = [i for i, e in enumerate(examples) if e is not None]
    if not reached:
        return CriticalBatch(None, "lower", None, None)
    best = min(reached, key=lambda i: examples[i])
    level = factor * examples[best]
    reference = (batch_sizes[best], examples[best])
    for i in range(best + 1, len(batch_sizes)):
        e = examples[i]
        if e is None:
            bound = None if budgets is None else batch_sizes[i] * budgets[i]
            if bound is None or bound < level:
                return CriticalBatch(float(batch_sizes[i - 1]), "lower", *reference)
            e, kind = bound, "upper"
        else:
            kind = "estimate"
        if e >= level:
            previous = examples[i - 1]
            value = _log_crossing(batch_sizes[i - 1], previous, batch_sizes[i], e, level)
            return CriticalBatch(value, kind, *reference)
    return CriticalBatch(float(batch_sizes[-1]), "lower", *reference)


@dataclass(frozen=True)
class ScalingFit:
    """Least-squares fit of S(B) = S_min (1 + B_crit / B) in log space; rms in log units."""

    critical_batch: float
    min_steps: float
    min_examples: float
    rms_log_error: float
    points: int

    def to_dict(self) -> dict:
        return asdict(self)


def fit_scaling_model(
    batch_sizes: Sequence[int], steps: Sequence[float | None], grid: int = 4000
) -> ScalingFit | None:
    """McCandlish et al.'s S = S_min (1 + B_crit / B), i.e. E = E_min (1 + B / B_crit).

    Fitted to the reached points by least squares on log S: for each B_crit of a
    log-spaced grid (1/100 of the smallest to 100x the largest batch size) log S_min is
    the mean residual; the best B_crit is kept. Every point counts, so one badly tuned
    batch size moves it less than the first-crossing estimate. None with < 3 points.
    """
    pairs = [(b, s) for b, s in zip(batch_sizes, steps, strict=True) if s is not None]
    if len(pairs) < 3:
        return None
    batches = np.array([b for b, _ in pairs], dtype=float)
    log_steps = np.log([s for _, s in pairs])
    candidates = np.geomspace(batches.min() / 100, batches.max() * 100, grid)
    residuals = log_steps[None, :] - np.log1p(candidates[:, None] / batches[None, :])
    offsets = residuals.mean(axis=1)
    errors = ((residuals - offsets[:, None]) ** 2).mean(axis=1)
    best = int(np.argmin(errors))
    min_steps = math.exp(offsets[best])
    return ScalingFit(
        float(candidates[best]),
        min_steps,
        min_steps * float(candidates[best]),
        math.sqrt(float(errors[best])),
        len(pairs),
    )


def perfect_scaling_steps(batch_sizes: Sequence[int], reference: CriticalBatch) -> list:
    """Steps on the perfect-scaling line S = E_min / B through the most efficient point."""
    if reference.reference_examples is None:
        return [None for _ in batch_sizes]
    return [reference.reference_examples / b for b in batch_sizes]


__all__ = [
    "BOUNDS",
    "CRITICAL_FACTOR",
    "CriticalBatch",
    "critical_batch_size",
    "examples_to_target",
    "ScalingFit",
    "fit_scaling_model",
    "perfect_scaling_steps",
]
