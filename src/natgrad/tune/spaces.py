"""Optimizer search spaces as data: one JSON file per optimizer in ``tune/spaces/``.

Each file holds a "restricted" space (learning rate only, the rest at the usual
defaults) and a "full" space (every hyperparameter, eps over many decades, decay
schedule), following Choi et al. (2019). A space is a list of searched dimensions plus
fixed values; quasi-random search draws points ``u`` in the unit cube ``[0, 1]^d`` and
:meth:`SearchSpace.to_hyperparameters` maps them to the registry's names. Scales:

- ``log``: ``x = low * (high / low)^u``
- ``linear``: ``x = low + u * (high - low)``
- ``log1m``: ``1 - x`` is log-uniform, ``1 - x = (1 - low) * ((1 - high) / (1 - low))^u``,
  so ``x`` runs from ``low`` (u = 0) to ``high`` (u = 1); used for momentum and betas.

A dimension marked ``fraction_of_total_steps`` (``decay_steps``) is searched as a
fraction of the run and turned into a step count with the run's ``total_steps``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

from natgrad.optim import get_optimizer_spec
from natgrad.optim.optimizer_spec import HyperValue

SCALES: tuple[str, ...] = ("log", "linear", "log1m")
SPACE_NAMES: tuple[str, ...] = ("restricted", "full")


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: its range and scale."""

    name: str
    scale: str
    low: float
    high: float
    fraction_of_total_steps: bool = False

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(
                f"scale of {self.name!r} must be one of {', '.join(SCALES)}, got {self.scale!r}"
            )
        if not self.low <= self.high:
            raise ValueError(f"{self.name}: low must be <= high, got [{self.low}, {self.high}]")
        if self.scale == "log" and not self.low > 0:
            raise ValueError(f"{self.name}: a log scale needs low > 0, got {self.low}")
        if self.scale == "log1m" and not self.high < 1:
            raise ValueError(f"{self.name}: a log1m scale needs high < 1, got {self.high}")

    def value(self, u: float) -> float:
        """The hyperparameter value at position ``u`` in [0, 1]."""
        if self.scale == "linear":
            return self.low + u * (self.high - self.low)
        if self.scale == "log":
            return math.exp(math.log(self.low) + u * math.log(self.high / self.low))
        one_minus = math.exp(
            math.log(1 - self.low) + u * math.log((1 - self.high) / (1 - self.low))
        )
        return 1 - one_minus

    def describe(self) -> str:
        quantity = f"1 - {self.name}" if self.scale == "log1m" else self.name
        low, high = (
            (1 - self.high, 1 - self.low) if self.scale == "log1m" else (self.low, self.high)
        )
        scale = "log" if self.scale == "log1m" else self.scale
        unit = " x total_steps" if self.fraction_of_total_steps else ""
        return f"{quantity} in [{low:.3g}, {high:.3g}]{unit} ({scale} scale)"


@dataclass(frozen=True)
class SearchSpace:
    """A named search space of one optimizer: searched dimensions and fixed values."""

    optimizer: str
    name: str
    dimensions: tuple[Dimension, ...]
    fixed: dict[str, HyperValue] = field(default_factory=dict)
    description: str = ""

    @property
    def dimension(self) -> int:
        """Number of searched hyperparameters d (the unit cube is [0, 1]^d)."""
        return len(self.dimensions)

    @property
    def needs_total_steps(self) -> bool:
        return any(d.fraction_of_total_steps for d in self.dimensions)

    def to_hyperparameters(
        self, point: Sequence[float], total_steps: int | None = None
    ) -> dict[str, HyperValue]:
        """Map ``point`` in ``[0, 1]^d`` to registry hyperparameters, fixed values included.

        ``total_steps`` is required when a dimension is a fraction of the run
        (``decay_steps = max(1, round(fraction * total_steps))``).
        """
        values = [float(u) for u in point]
        if len(values) != self.dimension:
            raise ValueError(
                f"point must have {self.dimension} coordinates for {self.optimizer}/{self.name}, "
                f"got {len(values)}"
            )
        if not all(0.0 <= u <= 1.0 for u in values):
            raise ValueError(f"point coordinates must be in [0, 1], got {values}")
        if self.needs_total_steps and (total_steps is None or total_steps < 1):
            raise ValueError(
                f"total_steps (>= 1) is needed to map {self.optimizer}/{self.name}, "
                f"got {total_steps!r}"
            )
        hyperparameters: dict[str, HyperValue] = dict(self.fixed)
        for dimension, u in zip(self.dimensions, values, strict=True):
            value = dimension.value(u)
            if dimension.fraction_of_total_steps:
                value = max(1, round(value * total_steps))
            hyperparameters[dimension.name] = value
        return hyperparameters

    def to_dict(self) -> dict:
        """A JSON-ready description (the same shape as the space in its file)."""
        search = []
        for d in self.dimensions:
            entry = {"name": d.name, "scale": d.scale, "low": d.low, "high": d.high}
            if d.fraction_of_total_steps:
                entry["fraction_of_total_steps"] = True
            search.append(entry)
        return {
            "optimizer": self.optimizer,
            "space": self.name,
            "description": self.description,
            "search": search,
            "fixed": dict(self.fixed),
        }

    def describe(self) -> str:
        """A few human-readable lines: searched ranges, then fixed values."""
        lines = [f"{self.optimizer} / {self.name}: {self.description}"]
        lines += [f"  search {d.describe()}" for d in self.dimensions]
        lines += [f"  fixed  {key} = {value!r}" for key, value in sorted(self.fixed.items())]
        return "\n".join(lines)


def _space_files() -> dict[str, object]:
    folder = resources.files("natgrad.tune").joinpath("spaces")
    return {
        entry.name[: -len(".json")]: entry
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


def list_spaces() -> dict[str, list[str]]:
    """``{optimizer: [space names]}`` for every shipped search-space file."""
    listing = {}
    for optimizer, path in sorted(_space_files().items()):
        listing[optimizer] = sorted(json.loads(path.read_text())["spaces"])
    return listing


def _check_names(optimizer: str, names: list[str]) -> None:
    """Every searched or fixed name must be a hyperparameter of the registered optimizer."""
    valid = set(get_optimizer_spec(optimizer).defaults())
    unknown = sorted(set(names) - valid)
    if unknown:
        raise ValueError(
            f"search space of {optimizer!r} names unknown hyperparameter(s) {unknown}; "
            f"valid: {sorted(valid)}"
        )


def load_space(optimizer: str, space: str = "full") -> SearchSpace:
    """Load search space ``space`` ("restricted" or "full") of ``optimizer``."""
    files = _space_files()
    if optimizer not in files:
        raise ValueError(
            f"no search space for optimizer {optimizer!r}; valid: {', '.join(sorted(files))}"
        )
    spaces = json.loads(files[optimizer].read_text())["spaces"]
    if space not in spaces:
        raise ValueError(
            f"unknown space {space!r} for {optimizer!r}; valid: {', '.join(sorted(spaces))}"
        )
    entry = spaces[space]
    dimensions = tuple(Dimension(**d) for d in entry["search"])
    fixed = dict(entry.get("fixed", {}))
    _check_names(optimizer, [d.name for d in dimensions] + list(fixed))
    return SearchSpace(optimizer, space, dimensions, fixed, entry.get("description", ""))
