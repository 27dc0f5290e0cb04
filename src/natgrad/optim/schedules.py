"""Learning-rate schedules: constant, linear decay, cosine decay, with linear warm-up.

A schedule is a multiplier ``f(k)`` of each param group's initial learning rate, where
k counts the optimizer steps already taken (the runner calls ``scheduler.step()`` once
after every optimizer step, so step k + 1 uses ``lr_0 * f(k)``). After ``warmup_steps``
of linear warm-up ``f(k) = (k + 1) / warmup_steps``, the decay phase runs over
``decay_steps`` (0 means the rest of the run) and then stays at ``final_lr_fraction``:

- linear (Shallue et al. 2018; Choi et al. 2019): ``f = 1 - (1 - final) * s / D``
- cosine: ``f = final + (1 - final) * (1 + cos(pi * s / D)) / 2``

with ``s = min(k - warmup_steps, D)``. Schedules are part of an optimizer's
hyperparameters (Choi et al.), hence ``SCHEDULE_HYPERPARAMETERS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from natgrad.optim.optimizer_spec import Hyperparameter

SCHEDULE_NAMES: tuple[str, ...] = ("constant", "linear", "cosine")

SCHEDULE_HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("schedule", "constant", "learning-rate schedule: constant | linear | cosine"),
    Hyperparameter("warmup_steps", 0, "steps of linear warm-up from lr/warmup_steps (int >= 0)"),
    Hyperparameter("decay_steps", 0, "length of the decay phase (int >= 0; 0 = rest of the run)"),
    Hyperparameter("final_lr_fraction", 0.0, "lr at the end of the decay / initial lr, in [0, 1]"),
)

_SCHEDULE_NAMES_SET = frozenset(h.name for h in SCHEDULE_HYPERPARAMETERS)


def split_schedule_hyperparameters(hparams: dict) -> tuple[dict, dict]:
    """Split a flat hyperparameter dict into (optimizer kwargs, schedule kwargs)."""
    optimizer_kwargs = {k: v for k, v in hparams.items() if k not in _SCHEDULE_NAMES_SET}
    schedule_kwargs = {k: v for k, v in hparams.items() if k in _SCHEDULE_NAMES_SET}
    return optimizer_kwargs, schedule_kwargs


def _decay_fraction(schedule: str, progress: float, final: float) -> float:
    """Multiplier at ``progress`` in [0, 1] of the decay phase."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - final) * progress
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _validate(
    total_steps: int, schedule: str, warmup_steps: int, decay_steps: int, final_lr_fraction: float
) -> None:
    if schedule not in SCHEDULE_NAMES:
        valid = ", ".join(SCHEDULE_NAMES)
        raise ValueError(f"unknown schedule {schedule!r}; valid: {valid}")
    _check_int("total_steps", total_steps, 1)
    _check_int("warmup_steps", warmup_steps, 0)
    _check_int("decay_steps", decay_steps, 0)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must be <= total_steps ({total_steps}), got {warmup_steps}")
    if not 0.0 <= final_lr_fraction <= 1.0:
        raise ValueError(f"final_lr_fraction must be in [0, 1], got {final_lr_fraction!r}")


def schedule_multiplier(
    total_steps: int,
    schedule: str = "constant",
    warmup_steps: int = 0,
    decay_steps: int = 0,
    final_lr_fraction: float = 0.0,
) -> Callable[[int], float]:
    """The function ``k -> f(k)`` described in the module docstring, validated."""
    _validate(total_steps, schedule, warmup_steps, decay_steps, final_lr_fraction)
    decay_length = decay_steps if decay_steps > 0 else max(total_steps - warmup_steps, 1)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(step - warmup_steps, decay_length) / decay_length
        return _decay_fraction(schedule, progress, final_lr_fraction)

    return multiplier


def build_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    schedule: str = "constant",
    warmup_steps: int = 0,
    decay_steps: int = 0,
    final_lr_fraction: float = 0.0,
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`schedule_multiplier` to every param group.

    Call ``scheduler.step()`` once after each ``optimizer.step()``. ValueError for an
    unknown schedule name (listing the valid ones) or an out-of-range argument.
    """
    multiplier = schedule_multiplier(
        total_steps, schedule, warmup_steps, decay_steps, final_lr_fraction
    )
    return LambdaLR(optimizer, multiplier)
