"""Quasi-random studies: points, resume/extend, failures, lost trials, workers, storages."""

import hashlib
import time

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from tune_cli import TUNE_SGD, tune_args

from natgrad import cli
from natgrad.train import RunResult
from natgrad.tune import study as study_module
from natgrad.tune.launch import run_studies
from natgrad.tune.spaces import load_space
from natgrad.tune.storage import StorageError, open_storage, set_trial_user_attr, storage_url
from natgrad.tune.study import (
    StudySpec,
    claim_next_trial,
    point_parameters,
    prepare_studies,
    quasi_random_points,
    trial_records,
    work,
)

SPEC = StudySpec("digits_logreg", "sgd", "restricted", steps=5)


def test_halton_points_are_a_stratified_seeded_prefix():
    short, long = quasi_random_points(3, 8, seed=5), quasi_random_points(3, 16, seed=5)
    np.testing.assert_array_equal(short, long[:8])
    assert not np.allclose(short, quasi_random_points(3, 8, seed=6))
    assert ((short >= 0) & (short < 1)).all()
    # Base 2 in the first coordinate: the first 2^m points fill the 2^m cells once each.
    assert sorted(np.floor(long[:, 0] * 16).astype(int)) == list(range(16))
    assert sorted(np.floor(quasi_random_points(2, 9, seed=5)[:, 1] * 9).astype(int)) == list(
        range(9)
    )


def test_point_parameters_show_the_values_the_trial_trains_with():
    space = load_space("adam", "full")
    point = quasi_random_points(space.dimension, 1, seed=0)[0]
    shown = point_parameters(space, point)
    hyper = space.to_hyperparameters(point, total_steps=200)
    assert shown["lr"][0] == pytest.approx(hyper["lr"])
    assert shown["one_minus_beta1"][0] == pytest.approx(1 - hyper["beta1"])
    assert shown["eps"][0] == pytest.approx(hyper["eps"])
    assert round(shown["decay_steps_fraction"][0] * 200) == hyper["decay_steps"]


@pytest.mark.parametrize("u", [0.0, 0.37, 1 - 1e-12])
def test_shown_parameters_lie_in_their_distributions_before_any_clipping(u):
    """point_parameters clips to the distribution; the unclipped mapping must already
    land inside it (within round-off), so clipping never hides a wrong mapping."""
    space = load_space("adam", "full")
    shown = point_parameters(space, np.full(space.dimension, u))
    for dimension in space.dimensions:
        raw = dimension.value(u)
        if dimension.scale == "log1m":
            value, distribution = shown[f"one_minus_{dimension.name}"]
            raw = 1 - raw
        else:
            key = dimension.name + ("_fraction" if dimension.fraction_of_total_steps else "")
            value, distribution = shown[key]
        assert value == pytest.approx(raw, rel=1e-9, abs=1e-15)
        tolerance = 1e-9 * max(abs(distribution.low), abs(distribution.high))
        assert distribution.low - tolerance <= raw <= distribution.high + tolerance
        edge = {0.0: distribution.low, 1 - 1e-12: distribution.high}.get(u)
        if edge is not None and dimension.scale != "log1m":
            assert raw == pytest.approx(edge, rel=1e-6)


def all_point_indices(url, name):
    study = optuna.load_study(study_name=name, storage=url)
    return [t.user_attrs["point_index"] for t in study.trials]


def test_tune_resumes_and_extends_without_losing_or_repeating_trials(tmp_path, capsys):
    assert cli.main(tune_args(tmp_path, trials=3, steps=5)) == 0
    url = storage_url(tmp_path, None)
    first = {t.number: t.value for t in optuna.load_study(study_name=SPEC.name, storage=url).trials}
    assert cli.main(tune_args(tmp_path, trials=3, steps=5)) == 0
    assert cli.main(tune_args(tmp_path, trials=5, steps=5)) == 0
    study = optuna.load_study(study_name=SPEC.name, storage=url)
    assert sorted(all_point_indices(url, SPEC.name)) == [0, 1, 2, 3, 4]
    assert {t.number: t.value for t in study.trials if t.number in first} == first
    points = quasi_random_points(1, 5, seed=0)
    space = load_space("sgd", "restricted")
    for trial in study.trials:
        expected = space.to_hyperparameters(points[trial.user_attrs["point_index"]])
        assert trial.params["lr"] == pytest.approx(expected["lr"])
    output = capsys.readouterr()
    assert "optuna-dashboard" in output.out and "[tune] trials 5/5 done" in output.err


def test_progress_reports_each_trial_as_it_finishes(tmp_path, monkeypatch, capsys):
    """Failed trials do not improve the best value; their line still comes at once."""
    outcomes = iter(["completed", "diverged", "diverged"])

    def fake_train(config):
        status = next(outcomes)
        return RunResult(status, 5, {"val_error": 0.25}, [], None, diverged_at_step=3)

    monkeypatch.setattr(study_module, "train", fake_train)
    run_studies(storage_url(tmp_path, None), [SPEC], 3, workers=1)
    err = capsys.readouterr().err
    for line in ("trials 1/3 done, 0 failed", "trials 2/3 done, 1 failed", "3/3 done, 2 failed"):
        assert line in err


def test_diverged_and_crashed_trials_are_failed_with_their_reason(tmp_path, monkeypatch):
    calls = []

    def fake_train(config):
        calls.append(config)
        if len(calls) == 1:
            return RunResult("diverged", 3, {"step": 3}, [], None, diverged_at_step=3)
        if len(calls) == 2:
            raise RuntimeError("linear solve failed")
        return RunResult(
            "completed", 5, {"val_error": 0.25}, [{"step": 5, "wall_time": 0.1, "val_error": 0.25}]
        )

    monkeypatch.setattr(study_module, "train", fake_train)
    url = storage_url(tmp_path, None)
    (study,) = prepare_studies(url, [SPEC], 3)
    assert work(url, [SPEC], 3) == 3
    records = trial_records(study, 3)
    assert [r["status"] for r in records] == ["diverged", "error", "completed"]
    assert "non-finite at step 3" in records[0]["reason"]
    assert "RuntimeError: linear solve failed" in records[1]["reason"]
    assert [r["value"] for r in records] == [None, None, 0.25]
    assert [t.state for t in study.trials] == [
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]


def test_a_lost_trial_is_marked_and_its_point_run_again(tmp_path):
    url = storage_url(tmp_path, None)
    (study,) = prepare_studies(url, [SPEC], 2)
    trial = claim_next_trial(study, 2)
    set_trial_user_attr(study, trial, "heartbeat", time.time() - 10_000)
    prepare_studies(url, [SPEC], 2)
    assert work(url, [SPEC], 2) == 2
    states = {t.number: (t.state, t.user_attrs.get("status")) for t in study.trials}
    assert states[trial.number] == (TrialState.FAIL, "lost")
    records = trial_records(study, 2)
    assert [r["point_index"] for r in records] == [0, 1]
    assert all(r["status"] == "completed" for r in records)


def check_each_point_once(url, name, trials):
    study = optuna.load_study(study_name=name, storage=url)
    assert sorted(all_point_indices(url, name)) == list(range(trials))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    url = storage_url(tmp_path, None)
    run_studies(url, [SPEC], 6, workers=2, progress=False)
    check_each_point_once(url, SPEC.name, 6)


@pytest.mark.postgres
def test_postgresql_storage_with_workers_resumes_and_extends(postgres_url):
    run_studies(postgres_url, [SPEC], 4, workers=2, progress=False)
    run_studies(postgres_url, [SPEC], 6, workers=1, progress=False)
    check_each_point_once(postgres_url, SPEC.name, 6)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def existing_study(tmp_path):
    assert cli.main(tune_args(tmp_path, trials=2, steps=5)) == 0
    return tmp_path


BAD_INPUTS = {
    "unknown optimizer": (
        [
            "compare",
            "--workload",
            "digits_logreg",
            "--optimizers",
            "sgd,lion",
            "--trials",
            "2",
            "--steps",
            "5",
        ],
        "unknown optimizer(s) 'lion' in --optimizers; valid:",
    ),
    "other workload": (
        ["tune", "--workload", "digits_mlp", "--optimizer", "sgd", "--trials", "2", "--steps", "5"],
        "holds studies of workload 'digits_logreg', not 'digits_mlp'",
    ),
    "other steps": (
        [*TUNE_SGD, "--trials", "2", "--steps", "7"],
        "was made with other settings (steps: stored 5, asked 7)",
    ),
    "unreachable server": (
        [
            "tune",
            "--workload",
            "digits_logreg",
            "--optimizer",
            "sgd",
            "--trials",
            "2",
            "--steps",
            "5",
            "--storage",
            "postgresql+psycopg2://nobody:secret@127.0.0.1:1/none",
        ],
        "cannot open storage postgresql+psycopg2://nobody:***@127.0.0.1:1/none",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_leaves_studies_untouched(existing_study, capsys, case):
    arguments, message = BAD_INPUTS[case]
    database = existing_study / "study.db"
    before = digest(database)
    assert cli.main([*arguments, "--out", str(existing_study)]) == 2
    assert message in capsys.readouterr().err
    assert digest(database) == before


def test_storage_errors_name_the_url(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path}/missing/study.db")
    with pytest.raises(StorageError, match="cannot be parsed"):
        open_storage("not a url")
    with pytest.raises(ValueError, match="trials must be an integer >= 1"):
        prepare_studies(storage_url(tmp_path, None), [SPEC], 0)


def test_an_interrupted_trial_stops_the_worker_and_is_run_again(tmp_path, monkeypatch):
    real_train = study_module.train
    monkeypatch.setattr(
        study_module, "train", lambda config: RunResult("interrupted", 2, {"step": 2}, [])
    )
    url = storage_url(tmp_path, None)
    (study,) = prepare_studies(url, [SPEC], 2)
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        work(url, [SPEC], 2)
    assert [trial_status_of(t) for t in study.trials] == ["interrupted", "waiting"]
    monkeypatch.setattr(study_module, "train", real_train)
    prepare_studies(url, [SPEC], 2)
    assert work(url, [SPEC], 2) == 2
    assert [r["point_index"] for r in trial_records(study, 2)] == [0, 1]


def trial_status_of(trial):
    return study_module.trial_status(trial)


def test_numerical_failures_count_as_divergence_and_bugs_are_reported(
    tmp_path, monkeypatch, capsys
):
    calls = []

    def fake_train(config):
        calls.append(config)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("cholesky: the matrix is not positive definite")
        raise KeyError("a bug in user code")

    monkeypatch.setattr(study_module, "train", fake_train)
    url = storage_url(tmp_path, None)
    (study,) = prepare_studies(url, [SPEC], 2)
    work(url, [SPEC], 2)
    records = trial_records(study, 2)
    assert [r["status"] for r in records] == ["diverged", "error"]
    assert "LinAlgError" in records[0]["reason"]
    assert "unexpected error" in capsys.readouterr().err
