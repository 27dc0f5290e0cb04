"""Misuse of a run folder: foreign or unreadable checkpoints, study folders, bad values.

Each expected failure is one line on stderr naming the thing, exit status 2, and leaves
every file of the run folder as it was.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from natgrad.cli import main
from natgrad.train import RunConfig, train
from natgrad.train.checkpoint import CheckpointError, load_checkpoint
from strict_json import load_file, load_lines


def train_args(out: Path, optimizer: str = "sgd", workload: str = "digits_logreg", steps: int = 6):
    return [
        "train",
        "--workload",
        workload,
        "--optimizer",
        optimizer,
        "--steps",
        str(steps),
        "--eval-every",
        "2",
        "--checkpoint-every",
        "3",
        "--out",
        str(out),
    ]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def finished_run(tmp_path: Path, name: str, **kwargs) -> Path:
    out = tmp_path / name
    assert main(train_args(out, **kwargs)) == 0
    return out


@pytest.mark.parametrize(
    ("donor", "drop_settings"),
    [
        ({"optimizer": "adam"}, False),  # another optimizer, recorded settings
        ({"optimizer": "adam"}, True),  # another optimizer, a checkpoint without settings
        ({"workload": "digits_mlp"}, True),  # another model, without settings
    ],
)
def test_resume_with_a_foreign_checkpoint_changes_no_file(tmp_path, capsys, donor, drop_settings):
    run = finished_run(tmp_path, "run", steps=4)
    foreign = finished_run(tmp_path, "foreign", steps=6, **donor)
    payload = load_checkpoint(foreign / "checkpoints/last.pt")
    if drop_settings:
        del payload["settings"]
    torch.save(payload, run / "checkpoints/last.pt")
    before = snapshot(run)
    capsys.readouterr()
    assert main([*train_args(run, steps=8), "--resume"]) == 2
    err = one_line_error(capsys)
    assert str(run / "checkpoints/last.pt") in err and "another run" in err
    assert snapshot(run) == before


def test_copied_checkpoint_of_a_longer_run_does_not_truncate_metrics(tmp_path, capsys):
    run = finished_run(tmp_path, "run", steps=8)
    other = finished_run(tmp_path, "other", optimizer="momentum", steps=4)
    shutil.copy(other / "checkpoints/last.pt", run / "checkpoints/last.pt")
    before = snapshot(run)
    capsys.readouterr()
    assert main([*train_args(run, steps=10), "--resume"]) == 2
    assert "optimizer" in one_line_error(capsys)
    assert snapshot(run) == before
    assert len(load_lines(run / "metrics.jsonl")) == 5


def object_pickle(path: Path) -> None:
    torch.save({"model": Path("/etc")}, path)  # a Python object weights_only refuses


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "truncated or corrupt"),
        (lambda p: p.write_bytes(b"\x00garbage" * 100), "truncated or corrupt"),
        (lambda p: p.write_bytes(pickle.dumps({"model": 1})), "truncated or corrupt"),
        (object_pickle, "Python objects"),
        (lambda p: torch.save(torch.zeros(3), p), "not a natgrad checkpoint"),
        (lambda p: torch.save({"model": {}}, p), "not a natgrad checkpoint"),
    ],
)
def test_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path, capsys, damage, reason):
    run = finished_run(tmp_path, "run", steps=4)
    damage(run / "checkpoints/last.pt")
    before = snapshot(run)
    capsys.readouterr()
    assert main([*train_args(run, steps=6), "--resume"]) == 2
    err = one_line_error(capsys)
    assert str(run / "checkpoints/last.pt") in err and reason in err
    assert "weights_only" not in err
    assert snapshot(run) == before
    with pytest.raises(CheckpointError, match=reason):
        load_checkpoint(run / "checkpoints/last.pt")


@pytest.mark.parametrize("marker", ["natgrad-study.json", "study.db"])
def test_train_refuses_a_study_folder(tmp_path, capsys, marker):
    study = tmp_path / "study"
    study.mkdir()
    (study / marker).write_text("{}")
    before = snapshot(study)
    for extra in (["--resume"], ["--overwrite"], []):
        assert main([*train_args(study), *extra]) == 2
        assert "study folder" in one_line_error(capsys) or extra == []
    assert snapshot(study) == before


@pytest.mark.parametrize("assignment", ["lr=inf", "lr=-inf", "lr=nan", "eps=inf", "beta1=nan"])
def test_non_finite_hyperparameters_are_rejected(tmp_path, capsys, assignment):
    out = tmp_path / "run"
    args = ["train", "--workload", "digits_logreg", "--optimizer", "adam", "--out", str(out)]
    assert main([*args, "--set", assignment]) == 2
    assert "finite" in one_line_error(capsys) and not out.exists()


def test_non_finite_damping_is_rejected(tmp_path, capsys):
    args = ["train", "--workload", "digits_logreg", "--optimizer", "kfac", "--out", str(tmp_path)]
    assert main([*args, "--set", "damping=inf"]) == 2
    assert "damping must be a finite number" in one_line_error(capsys)
    with pytest.raises(ValueError, match="finite"):
        RunConfig("digits_logreg", "sgd", hyperparameters={"lr": float("inf")}).resolved()


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("tpu7", "unknown device 'tpu7'"),
        ("cuda", "CUDA is not available"),
        ("meta", "not supported"),
    ],
)
def test_device_misuse_is_one_line(tmp_path, capsys, device, expected):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    assert main([*train_args(out), "--device", device]) == 2
    assert expected in one_line_error(capsys) and not out.exists()


def test_explicit_data_dir_lacking_the_dataset_fails(tmp_path, capsys):
    empty, out = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    args = ["train", "--workload", "fmnist_mlp", "--optimizer", "sgd", "--steps", "1"]
    assert main([*args, "--data-dir", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{empty / 'fashion-mnist'} (--data-dir): no such folder" in err
    assert "/usr/share/datasets" not in err and not out.exists()


def test_diverged_run_summary_holds_the_figures_where_it_stopped(tmp_path):
    """Evaluation every 50 steps; the run diverges before the first one."""
    out = tmp_path / "run"
    result = train(RunConfig("digits_logreg", "sgd", steps=50, hyperparameters={"lr": 1e38}), out)
    assert result.status == "diverged" and result.diverged_at_step < 50
    summary = load_file(out / "summary.json")
    assert summary["step"] == summary["final"]["step"] == result.diverged_at_step
    assert summary["last_recorded_step"] == 0
    assert summary["final"]["train_loss"] is None
    assert summary["final"]["non_finite"]["train_loss"] in ("NaN", "Infinity")
    assert [r["step"] for r in load_lines(out / "metrics.jsonl")] == [0]
