"""The ``natgrad tune`` command line that the tuning tests run: plain SGD's restricted
space on digits_logreg, the smallest study there is."""

from __future__ import annotations

from pathlib import Path

TUNE_SGD = ["tune", "--workload", "digits_logreg", "--optimizer", "sgd", "--space", "restricted"]


def tune_args(out: Path, trials: int, steps: int, workers: int = 1) -> list[str]:
    """``natgrad tune`` of :data:`TUNE_SGD` into ``out``."""
    return [
        *TUNE_SGD,
        *("--trials", str(trials), "--steps", str(steps), "--workers", str(workers)),
        *("--out", str(out)),
    ]
