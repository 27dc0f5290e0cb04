"""What a folder of natgrad output is: a training run, a study (tune or compare), or neither.

``natgrad train`` must not write a run into a study folder, ``natgrad tune`` or
``compare`` must not create a study inside a training run, and an experiment must not
write into the results of another; each asks :func:`check_folder_kind` before writing
anything.
"""

from __future__ import annotations

import json
from pathlib import Path

STUDY_MARKER = "natgrad-study.json"
STUDY_DATABASE = "study.db"
RUN_CONFIG = "config.json"
RUN_METRICS = "metrics.jsonl"
RESULTS = "results.json"

# How an error names a folder of each kind (found) and the kind a command writes (wanted).
_FOUND = {
    "study": "is a study folder of `natgrad tune` or `natgrad compare`",
    "run": "holds a training run (config.json, metrics.jsonl)",
}
_WANTED = {"study": "studies", "run": "a training run", "results": "an experiment's results"}


class FolderKindError(ValueError):
    """A command was pointed at a folder that holds another kind of output."""


def folder_kind(folder: Path) -> str | None:
    """ "study" for a tune/compare folder, "run" for a training run, else None."""
    folder = Path(folder)
    if (folder / STUDY_MARKER).exists() or (folder / STUDY_DATABASE).exists():
        return "study"
    if (folder / RUN_CONFIG).exists() or (folder / RUN_METRICS).exists():
        return "run"
    return None


def results_experiment(folder: Path) -> str | None:
    """The ``experiment`` named by ``folder``'s results.json (None if it names none or
    cannot be read)."""
    try:
        experiment = json.loads((Path(folder) / RESULTS).read_text()).get("experiment")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return experiment if isinstance(experiment, str) else None


def check_folder_kind(folder: Path, wanted: str, experiment: str | None = None) -> None:
    """FolderKindError (one line) unless ``folder`` can take output of kind ``wanted``
    ("run", "study", or "results": an experiment's figures and results.json, which
    takes neither a run nor a study): it holds nothing of another kind, and, for an ``experiment``,
    no results.json of anything else. Reads only."""
    if wanted not in _WANTED:
        raise ValueError(f"wanted must be one of {', '.join(_WANTED)}, got {wanted!r}")
    folder = Path(folder)
    found = folder_kind(folder)
    if found is not None and found != wanted:
        raise FolderKindError(
            f"{folder} {_FOUND[found]}, not {_WANTED[wanted]}; use another --out folder"
        )
    results_of_another = (folder / RESULTS).exists() and results_experiment(folder) != experiment
    if experiment is not None and results_of_another:
        raise FolderKindError(f"{folder} holds results of another run; use another --out folder")
