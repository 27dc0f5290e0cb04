"""What a folder of natgrad output is: a training run, a study (tune or compare), or neither.

``natgrad train`` must not write a run into a study folder and ``natgrad tune`` or
``compare`` must not create a study inside a training run; both ask :func:`folder_kind`
before writing anything.
"""

from __future__ import annotations

from pathlib import Path

STUDY_MARKER = "natgrad-study.json"
STUDY_DATABASE = "study.db"
RUN_CONFIG = "config.json"
RUN_METRICS = "metrics.jsonl"


def folder_kind(folder: Path) -> str | None:
    """ "study" for a tune/compare folder, "run" for a training run, else None."""
    folder = Path(folder)
    if (folder / STUDY_MARKER).exists() or (folder / STUDY_DATABASE).exists():
        return "study"
    if (folder / RUN_CONFIG).exists() or (folder / RUN_METRICS).exists():
        return "run"
    return None
