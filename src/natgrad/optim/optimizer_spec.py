"""The optimizer registry: one entry per optimizer name used by the CLI, tuning and studies.

An entry says how to build the optimizer for a model, which hyperparameters it takes
(with defaults), and whether it owns the backward pass (second-order optimizers take a
closure that returns ``(loss, outputs)``; first-order ones are stepped after
``loss.backward()``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from natgrad.registry import Registry

HyperValue = float | int | str | bool | None


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: its default and a one-line description with its allowed range."""

    name: str
    default: HyperValue
    help: str = ""
    nullable: bool = False  # "none" is a valid value (always so when the default is None)


@dataclass(frozen=True)
class BuildContext:
    """What a workload tells an optimizer factory: its likelihood and default weight decay."""

    likelihood: str
    weight_decay: float = 0.0


OptimizerFactory = Callable[[nn.Module, BuildContext, dict], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer.

    ``factory(model, ctx, kwargs)`` constructs it from its own keyword arguments;
    :meth:`build` prepares those for every optimizer alike.
    """

    name: str
    description: str
    factory: OptimizerFactory
    hyperparameters: tuple[Hyperparameter, ...] = field(default_factory=tuple)
    second_order: bool = False
    # N ranks on shards of a batch, gradients averaged, step as one process on the batch
    data_parallel: bool = True
    # why it cannot be built here (an optional package absent), or None
    unavailable: Callable[[], str | None] | None = None
    # the defaults that are not the constructor's: the command line's settings
    # (natgrad.optim.catalog); every other default is the constructor's own
    preset: Mapping[str, HyperValue] = field(default_factory=dict)

    def check_available(self) -> None:
        """ValueError (one line: what to install) if the optimizer cannot be built here."""
        reason = self.unavailable() if self.unavailable is not None else None
        if reason is not None:
            raise ValueError(reason)

    def defaults(self) -> dict[str, HyperValue]:
        return {h.name: h.default for h in self.hyperparameters}

    def build(self, model: nn.Module, ctx: BuildContext, hparams: dict) -> torch.optim.Optimizer:
        """The optimizer for ``model``: schedule settings (the runner's business) are left
        out, and ``weight_decay=None`` (or absent) takes the workload's default."""
        from natgrad.optim.schedules import split_schedule_hyperparameters

        kwargs, _ = split_schedule_hyperparameters(hparams)
        if kwargs.get("weight_decay") is None:
            kwargs["weight_decay"] = ctx.weight_decay
        return self.factory(model, ctx, kwargs)


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` to the registry; a name can be registered once."""
    return OPTIMIZERS.add(spec.name, spec)


def get_optimizer_spec(name: str) -> OptimizerSpec:
    """Look an optimizer up by name; ValueError lists the valid names."""
    return OPTIMIZERS.lookup(name)


def resolve_hyperparameters(spec: OptimizerSpec, overrides: dict) -> dict[str, HyperValue]:
    """Defaults of ``spec`` updated by ``overrides``; unknown names raise ValueError."""
    values = spec.defaults()
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        valid = ", ".join(sorted(values))
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for optimizer {spec.name!r}; "
            f"valid: {valid}"
        )
    for name, value in overrides.items():
        check_finite(name, value)
    values.update(overrides)
    return values


class NonFiniteValue(ValueError):
    """A hyperparameter given as NaN or infinity."""


def check_finite(name: str, value: HyperValue) -> None:
    """NonFiniteValue for a NaN or infinite number (no hyperparameter takes one)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise NonFiniteValue(f"hyperparameter {name} must be a finite number, got {value!r}")


def parse_assignments(spec: OptimizerSpec, assignments: list[str]) -> dict[str, HyperValue]:
    """Turn ``["lr=0.1", "schedule=cosine"]`` into typed values by each default's type.

    Unknown names and malformed assignments raise ValueError listing what is allowed.
    """
    defaults = spec.defaults()
    parsed: dict[str, HyperValue] = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ValueError(f"expected NAME=VALUE, got {assignment!r}")
        if name not in defaults:
            valid = ", ".join(sorted(defaults))
            raise ValueError(
                f"unknown hyperparameter {name!r} for optimizer {spec.name!r}; valid: {valid}"
            )
        hyper = next(h for h in spec.hyperparameters if h.name == name)
        if hyper.nullable and text.strip().lower() in ("none", "null"):
            parsed[name] = None
            continue
        parsed[name] = coerce_value(name, defaults[name], text.strip())
    return parsed


def coerce_value(name: str, default: HyperValue, text: str) -> HyperValue:
    """Parse ``text`` as the type of ``default`` (None defaults take numbers or 'none')."""
    lowered = text.lower()
    try:
        if isinstance(default, bool):
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float) or default is None:
            if default is None and lowered in ("none", "null"):
                return None
            value = float(text)
            check_finite(name, value)
            return value
        return text
    except NonFiniteValue:
        raise
    except ValueError:
        kind = "true/false" if isinstance(default, bool) else type(default).__name__
        raise ValueError(f"hyperparameter {name} expects a {kind} value, got {text!r}") from None
