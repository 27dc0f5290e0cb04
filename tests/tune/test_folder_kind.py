"""One check of what kind a folder of natgrad output is (natgrad.folders)."""

from __future__ import annotations

import json

import pytest

from natgrad.folders import FolderKindError, check_folder_kind, folder_kind


def test_an_empty_or_absent_folder_takes_any_kind(tmp_path):
    for wanted in ("run", "study"):
        check_folder_kind(tmp_path, wanted)
        check_folder_kind(tmp_path / "absent", wanted, experiment="batch-scaling")


@pytest.mark.parametrize("marker", ["natgrad-study.json", "study.db"])
def test_a_study_folder_refuses_a_run(tmp_path, marker):
    (tmp_path / marker).write_text("{}")
    assert folder_kind(tmp_path) == "study"
    check_folder_kind(tmp_path, "study")
    with pytest.raises(FolderKindError, match="is a study folder") as raised:
        check_folder_kind(tmp_path, "run")
    assert "\n" not in str(raised.value) and isinstance(raised.value, ValueError)


@pytest.mark.parametrize("marker", ["config.json", "metrics.jsonl"])
def test_a_training_run_refuses_studies(tmp_path, marker):
    (tmp_path / marker).write_text("{}")
    assert folder_kind(tmp_path) == "run"
    check_folder_kind(tmp_path, "run")
    with pytest.raises(FolderKindError, match="holds a training run"):
        check_folder_kind(tmp_path, "study", experiment="batch-scaling")


@pytest.mark.parametrize("text", ['{"experiment": "nqm"}', '{"config": {}}', "not json", "[1]"])
def test_an_experiment_refuses_the_results_of_another(tmp_path, text):
    (tmp_path / "results.json").write_text(text)
    check_folder_kind(tmp_path, "study")  # results alone say nothing to a plain study
    with pytest.raises(FolderKindError, match="holds results of another run"):
        check_folder_kind(tmp_path, "study", experiment="batch-scaling")


def test_an_experiment_takes_its_own_results(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "batch-scaling"}))
    (tmp_path / "study.db").write_text("")
    check_folder_kind(tmp_path, "study", experiment="batch-scaling")


def test_an_unknown_kind_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="wanted must be one of study, run"):
        check_folder_kind(tmp_path, "report")


FOUND = [("natgrad-study.json", "is a study folder"), ("config.json", "holds a training run")]


@pytest.mark.parametrize(("marker", "found"), FOUND)
def test_an_experiment_refuses_a_run_or_study_folder_unchanged(tmp_path, capsys, marker, found):
    from natgrad.cli import main

    (tmp_path / marker).write_text("{}")
    (tmp_path / "results.json").write_text('{"ranking": []}')  # e.g. what compare wrote
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert main(["experiment", "plateau", "--quick", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert found in error and "not an experiment's results" in error and error.count("\n") == 1
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
