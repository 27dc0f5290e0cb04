"""`natgrad report` on folders it cannot render: one line naming the file, exit status 2,
and no file written (an empty study.db stays empty)."""

from __future__ import annotations

import json

import optuna
import pytest

from natgrad.cli import main
from natgrad.tune.storage import open_storage
from natgrad.tune.study import ATTRS_KEY


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def report(folder, capsys) -> str:
    before = sorted(p.name for p in folder.iterdir())
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert main(["report", str(folder)]) == 2
    assert sorted(p.name for p in folder.iterdir()) == before
    assert {p.name: p.stat().st_size for p in folder.iterdir()} == sizes
    return one_line_error(capsys)


def test_an_empty_study_db_is_refused_and_left_empty(tmp_path, capsys):
    (tmp_path / "study.db").write_bytes(b"")
    err = report(tmp_path, capsys)
    assert str(tmp_path / "study.db") in err and "no natgrad study" in err
    assert (tmp_path / "study.db").stat().st_size == 0


def test_a_study_db_of_binary_garbage_names_the_file(tmp_path, capsys):
    (tmp_path / "study.db").write_bytes(b"\x00\xff garbage " * 200)
    err = report(tmp_path, capsys)
    assert str(tmp_path / "study.db") in err and "not a study database" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[]", "holds a JSON list"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 50, "not a text file"),
        (json.dumps({"experiment": "nqm"}).encode(), "lacks optimizers, curves"),
    ],
)
def test_an_unusable_results_json_names_the_file(tmp_path, capsys, content, message):
    (tmp_path / "results.json").write_bytes(content)
    err = report(tmp_path, capsys)
    assert str(tmp_path / "results.json") in err and message in err


def stored_study(folder, attrs: dict) -> None:
    storage = open_storage(f"sqlite:///{folder / 'study.db'}")  # as natgrad tune opens it
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr(ATTRS_KEY, attrs)


BASE = {"workload": "digits_logreg", "optimizer": "sgd", "space": "restricted", "steps": 5}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"target_metric": "val_error", "target": 0.1}, "run the same experiment command"),
        ({"colour": "blue"}, "does not know (colour)"),
    ],
)
def test_a_study_with_settings_of_another_kind_is_one_line(tmp_path, capsys, extra, message):
    stored_study(tmp_path, {**BASE, **extra})
    assert message in report(tmp_path, capsys)
