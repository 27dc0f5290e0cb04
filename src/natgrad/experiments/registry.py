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
class Experiment:
    """A named experiment: ``run(out_dir, quick) -> results`` writes figures and results.json."""

    name: str
    description: str
    run: Callable[[Path, bool], dict]


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
    "EXPERIMENTS",
    "register_experiment",
    "get_experiment",
    "write_results",
]
