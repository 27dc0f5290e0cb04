"""The optimizer registry: one entry per optimizer name used by the CLI, tuning and studies.

An entry says how to build the optimizer for a model, which hyperparameters it takes
(with defaults), and whether it owns the backward pass (second-order optimizers take a
closure that returns ``(loss, outputs)``; first-order ones are stepped after
``loss.backward()``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

HyperValue = float | int | str | bool | None


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: its default and a one-line description with its allowed range."""

    name: str
    default: HyperValue
    help: str = ""


@dataclass(frozen=True)
class BuildContext:
    """What a workload tells an optimizer factory: its likelihood and default weight decay."""

    likelihood: str
    weight_decay: float = 0.0


OptimizerFactory = Callable[[nn.Module, BuildContext, dict], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer."""

    name: str
    description: str
    build: OptimizerFactory
    hyperparameters: tuple[Hyperparameter, ...] = field(default_factory=tuple)
    second_order: bool = False

    def defaults(self) -> dict[str, HyperValue]:
        return {h.name: h.default for h in self.hyperparameters}


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` to the registry; a name can be registered once."""
    if spec.name in OPTIMIZERS:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    OPTIMIZERS[spec.name] = spec
    return spec


def get_optimizer_spec(name: str) -> OptimizerSpec:
    """Look an optimizer up by name; ValueError lists the valid names."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        valid = ", ".join(sorted(OPTIMIZERS))
        raise ValueError(f"unknown optimizer {name!r}; valid: {valid}") from None


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
    values.update(overrides)
    return values
