"""What the report shows of a ``natgrad tune`` folder: each study's trials and best-of-K.

The studies are read from the folder's storage (study.db, or the ``--storage`` URL the
studies were made with) and turned into plain dicts, so the report layer only renders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import optuna

from natgrad.folders import STUDY_DATABASE, folder_kind
from natgrad.tune import analysis
from natgrad.tune.storage import open_storage, redact, storage_url
from natgrad.tune.study import ATTRS_KEY, StudySpec, trial_records, trial_status

DEFAULT_RESAMPLES = 1000


def is_study_folder(folder: Path) -> bool:
    """Whether ``folder`` holds studies of `natgrad tune` or `natgrad compare`."""
    return folder_kind(folder) == "study"


def study_folder_summary(
    folder: Path, storage: str | None = None, resamples: int = DEFAULT_RESAMPLES
) -> dict:
    """{"storage", "studies": [...]} for every natgrad study in the folder's storage.

    ValueError (one line) when the storage cannot be found or holds no natgrad study.
    """
    folder = Path(folder)
    if storage is None and not (folder / STUDY_DATABASE).exists():
        raise ValueError(
            f"{folder} has no {STUDY_DATABASE}: its studies live in the storage given to "
            "`natgrad tune --storage`; pass the same --storage URL to `natgrad report`"
        )
    url = storage_url(folder, storage)
    if url.startswith("sqlite:///"):
        check_study_database(Path(url.removeprefix("sqlite:///")))
    stored = [
        study for study in open_storage(url).get_all_studies() if ATTRS_KEY in study.user_attrs
    ]
    if not stored:
        raise ValueError(f"{redact(url)} holds no natgrad study; run `natgrad tune` first")
    return {
        "storage": redact(url),
        "studies": [summarise_study(url, frozen.study_name, resamples) for frozen in stored],
    }


def check_study_database(path: Path) -> None:
    """ValueError naming ``path`` unless it is an SQLite file holding Optuna's tables; read
    only, so a report never writes Optuna's schema into an empty or foreign file."""
    if not path.exists():
        raise ValueError(f"{path} does not exist; run `natgrad tune` first")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            tables = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'studies'"
            ).fetchall()
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{path} is not a study database ({error})") from None
    if not tables:
        raise ValueError(f"{path} holds no natgrad study (no Optuna tables); run `natgrad tune`")


def stored_spec(name: str, attrs: dict) -> StudySpec:
    """The StudySpec a study recorded; ValueError when it holds settings of another kind."""
    known = {field.name for field in dataclasses.fields(StudySpec)}
    unknown = sorted(set(attrs) - known)
    if "target_metric" in unknown:
        raise ValueError(
            f"study {name} belongs to `natgrad experiment batch-scaling`, whose report is made "
            "from its results.json: run the same experiment command again to write it"
        )
    if unknown:
        raise ValueError(
            f"study {name} records settings this version of natgrad does not know "
            f"({', '.join(unknown)}); it was made by another version or another tool"
        )
    return StudySpec(**attrs)


def summarise_study(url: str, name: str, resamples: int) -> dict:
    """One study: its settings, trial table, failures, recoveries, best trial, best-of-K."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    spec = stored_spec(name, study.user_attrs[ATTRS_KEY])
    trials = study.get_trials(deepcopy=False)
    indices = [t.user_attrs["point_index"] for t in trials if "point_index" in t.user_attrs]
    records = trial_records(study, max(indices, default=-1) + 1)
    completed = [r for r in records if r["value"] is not None]
    return {
        "name": name,
        "settings": spec.attrs(),
        "metric": spec.metric,
        "search_space": spec.search_space().to_dict(),
        "trials": records,
        "failed": len(records) - len(completed),
        "recovered": sum(trial_status(t) in ("lost", "interrupted") for t in trials),
        "unfinished": sum(trial_status(t) in ("running", "waiting") for t in trials),
        "best": min(completed, key=lambda r: r["value"]) if completed else None,
        "best_of_k": analysis.best_of_k(
            [r["value"] for r in records], spec.metric, resamples, spec.seed
        )
        if records
        else {"k": [], "median": [], "low": [], "high": []},
        "resamples": resamples,
    }
