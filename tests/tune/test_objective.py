"""The tuner's objective seam: an experiment supplies ``objective(spec, hyperparameters)``,
the tuner runs it at each point and maps its outcome (or exception) to the trial's status."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from natgrad.tune.launch import run_studies
from natgrad.tune.storage import storage_url
from natgrad.tune.study import StudySpec, TrialOutcome, trial_records

SPEC = StudySpec("digits_logreg", "sgd", "restricted", steps=5)
SOURCES = Path(__file__).resolve().parents[2] / "src" / "natgrad"


def scripted(*outcomes):
    """An objective that returns (or raises) the given outcomes in turn, noting its calls."""
    calls = []

    def objective(spec, hyperparameters):
        calls.append((spec, hyperparameters))
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return objective, calls


def test_the_objective_gets_each_point_and_its_outcome_is_recorded(tmp_path):
    objective, calls = scripted(
        TrialOutcome("completed", 3.0, attrs={"history": [[1, 0.5, 0.7]], "reached": True}),
        TrialOutcome("completed", math.inf, attrs={"reached": False}),
        TrialOutcome("diverged", reason="loss 1e9 at step 2", attrs={"history": [[1, 0.9, 2.0]]}),
    )
    (study,) = run_studies(
        storage_url(tmp_path, None), [SPEC], 3, progress=False, objective=objective
    )
    records = trial_records(study, 3)
    assert [spec for spec, _ in calls] == [SPEC] * 3
    assert [hp for _, hp in calls] == [r["hyperparameters"] for r in records]
    space = SPEC.search_space()
    assert [hp for _, hp in calls] == [space.to_hyperparameters(r["point"]) for r in records]
    assert [r["status"] for r in records] == ["completed", "completed", "diverged"]
    assert [r["value"] for r in records] == [3.0, math.inf, None]  # inf: a value, not a failure
    assert records[2]["reason"] == "loss 1e9 at step 2"
    assert [r["history"] for r in records] == [[[1, 0.5, 0.7]], [], [[1, 0.9, 2.0]]]
    assert [t.user_attrs.get("reached") for t in study.trials] == [True, False, None]
    assert all(r["duration_s"] >= 0 for r in records)


def test_exceptions_and_nan_values_of_an_objective_become_the_trials_status(tmp_path, capsys):
    objective, _ = scripted(
        torch.linalg.LinAlgError("factor is singular"),
        RuntimeError("a bug in the experiment"),
        TrialOutcome("completed", math.nan),
    )
    url = storage_url(tmp_path, None)
    (study,) = run_studies(url, [SPEC], 3, progress=False, objective=objective)
    records = trial_records(study, 3)
    assert [r["status"] for r in records] == ["diverged", "error", "non-finite"]
    assert records[0]["reason"].endswith("LinAlgError: factor is singular")
    assert records[1]["reason"] == "RuntimeError: a bug in the experiment"
    assert records[2]["reason"] == "val_error is nan"
    assert all(t.state == TrialState.FAIL for t in study.trials)
    err = capsys.readouterr().err
    assert "raised an unexpected error" in err and "Traceback" in err


def test_a_signal_in_the_objective_records_the_trial_and_stops_the_work(tmp_path):
    objective, calls = scripted(KeyboardInterrupt("Ctrl-C"))
    url = storage_url(tmp_path, None)
    with pytest.raises(KeyboardInterrupt):
        run_studies(url, [SPEC], 2, progress=False, objective=objective)
    assert len(calls) == 1
    resumed, again = scripted(TrialOutcome("completed", 1.0), TrialOutcome("completed", 2.0))
    (study,) = run_studies(url, [SPEC], 2, progress=False, objective=resumed)
    assert len(again) == 2  # the interrupted point runs again
    statuses = sorted(t.user_attrs["status"] for t in study.trials)
    assert statuses == ["completed", "completed", "interrupted"]
    records = trial_records(study, 2)
    assert [r["point_index"] for r in records] == [0, 1]
    assert all(r["status"] == "completed" for r in records)


def test_an_outcome_with_an_unknown_status_is_refused():
    with pytest.raises(ValueError, match="status must be one of completed, diverged, error"):
        TrialOutcome("pruned")


def test_only_tune_storage_touches_optunas_private_names():
    private = re.compile(r"\._storage\b|\._trial_id\b|\._study_id\b|optuna\.Trial\(")
    users = sorted(
        str(path.relative_to(SOURCES))
        for path in SOURCES.rglob("*.py")
        if private.search(path.read_text())
    )
    assert users == ["tune/storage.py"]
