"""The experiment registry: each of the seed's results is one named, runnable experiment.

An experiment's ``run(out_dir, quick)`` writes its PNG figures and ``results.json`` into
``out_dir`` and returns the results dict; ``quick=True`` runs a smaller version (for
tests). Modules register their experiments at import; ``natgrad.experiments`` imports
the built-in ones, so importing this module through the package fills ``EXPERIMENTS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from natgrad.jsonio import write_json
from natgrad.registry import Registry


@dataclass(frozen=True)
class ExperimentOption:
    """A command-line option an experiment accepts: ``--batch-sizes`` -> ``batch_sizes=``."""

    flag: str
    help: str
    type: Callable = str

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


PRESET_OPTION = ExperimentOption(
    "--preset",
    "smoke (a quick check) or full (the measurement) (default: full, or smoke with --quick)",
)


@dataclass(frozen=True)
class Experiment:
    """A named experiment: ``run(out_dir, quick, **options) -> results``.

    ``run`` writes figures and results.json; ``options`` lists the command-line options
    it takes besides ``--out`` and ``--quick`` (passed as keywords when given);
    ``folder_kind`` is what its output folder holds besides them ("study" for one that
    runs tuner studies there, else "results": no run and no study).
    """

    name: str
    description: str
    run: Callable[..., dict]
    options: tuple[ExperimentOption, ...] = ()
    folder_kind: str = "results"


def every_option() -> dict[str, ExperimentOption]:
    """The options of all registered experiments by flag (one definition per flag)."""
    options: dict[str, ExperimentOption] = {}
    for experiment in EXPERIMENTS.values():
        for option in experiment.options:
            options.setdefault(option.flag, option)
    return options


def chosen_options(experiment: Experiment, values: dict) -> dict:
    """The given (non-None) option values; ValueError for one ``experiment`` does not take."""
    accepted = {option.dest for option in experiment.options}
    given = {key: value for key, value in values.items() if value is not None}
    unknown = sorted(set(given) - accepted)
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        allowed = ", ".join(o.flag for o in experiment.options) or "only --out and --quick"
        raise ValueError(f"experiment {experiment.name!r} takes no {flags}; its options: {allowed}")
    return given


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register_experiment(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the registry; a name can be registered once."""
    return EXPERIMENTS.add(experiment.name, experiment)


def get_experiment(name: str) -> Experiment:
    """Look an experiment up by name; ValueError lists the valid names."""
    return EXPERIMENTS.lookup(name)


def write_results(out_dir: Path, results: dict) -> None:
    """Write ``results`` as standard, indented JSON to ``out_dir/results.json``."""
    write_json(out_dir / "results.json", results)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny-model loops on one intra-op thread (faster on a shared CPU), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


__all__ = [
    "single_thread",
    "Experiment",
    "ExperimentOption",
    "PRESET_OPTION",
    "every_option",
    "chosen_options",
    "EXPERIMENTS",
    "register_experiment",
    "get_experiment",
    "write_results",
]
