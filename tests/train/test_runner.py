"""The training runner end to end: run folder, metrics, resume, signals, divergence."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from natgrad.cli import main
from natgrad.train import RunConfig, RunFolderError, train
from natgrad.train.checkpoint import load_checkpoint
from simulated_crash import crash_then_resume, without_time
from strict_json import load_file

TRAIN_SGD = ["train", "--workload", "digits_logreg", "--optimizer", "sgd"]


def test_train_writes_the_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(
        [*TRAIN_SGD, "--steps", "20", "--eval-every", "10", "--set", "lr=0.1", "--out", str(out)]
    )
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["hyperparameters"]["lr"] == 0.1 and config["steps"] == 20
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 10, 20]
    for key in ("step", "examples", "wall_time", "train_loss", "val_loss", "val_error"):
        assert key in records[-1]
    assert records[-1]["examples"] == 20 * 64
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert {"test_loss", "test_error"} <= set(summary["final"])
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    assert checkpoint["loop"]["step"] == 20


def test_simulated_crash_then_resume_equals_uninterrupted(tmp_path: Path, monkeypatch) -> None:
    config = RunConfig(
        "digits_mlp",
        "momentum",
        steps=30,
        eval_every=10,
        checkpoint_every=10,
        hyperparameters={"lr": 0.05},
    )
    reference = train(config, tmp_path / "reference")
    resumed = crash_then_resume(config, tmp_path / "crashed", monkeypatch, at_step=25)
    assert resumed.status == "completed"
    assert without_time(resumed.final) == without_time(reference.final)
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "crashed/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [0, 10, 20, 30]


def run_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "natgrad.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


TRAIN_ARGS = [
    "train",
    "--workload",
    "digits_mlp",
    "--optimizer",
    "adam",
    "--steps",
    "600",
    "--eval-every",
    "100",
    "--checkpoint-every",
    "10",
    "--set",
    "lr=0.001",
]


def test_sigkill_then_resume_ends_with_identical_metrics(tmp_path: Path) -> None:
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    process = run_cli([*TRAIN_ARGS, "--out", str(killed)])
    wait_for(killed / "checkpoints" / "last.pt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if (killed / "summary.json").exists():
        pytest.skip("the run finished before it could be killed")
    assert main([*TRAIN_ARGS, "--out", str(killed), "--resume"]) == 0
    assert main([*TRAIN_ARGS, "--out", str(reference)]) == 0
    resumed = json.loads((killed / "summary.json").read_text())
    uninterrupted = json.loads((reference / "summary.json").read_text())
    assert without_time(resumed["final"]) == without_time(uninterrupted["final"])


def test_sigterm_checkpoints_and_marks_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = run_cli([*TRAIN_ARGS[:6], "100000", *TRAIN_ARGS[7:], "--out", str(out)])
    wait_for(out / "checkpoints" / "last.pt", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    summary = load_file(out / "summary.json")
    assert summary["status"] == "interrupted"
    # the figures where it stopped, not those of the last scheduled evaluation
    assert summary["final"]["step"] == summary["step"] >= summary["last_recorded_step"]
    assert summary["final"]["train_loss"] is not None
    assert load_checkpoint(out / "checkpoints" / "last.pt")["loop"]["step"] == summary["step"]


def test_divergence_is_a_result(tmp_path: Path) -> None:
    result = train(
        RunConfig("digits_logreg", "sgd", steps=50, hyperparameters={"lr": 1e38}), tmp_path / "run"
    )
    assert result.status == "diverged"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert 1 <= summary["diverged_at_step"] <= 50


def test_existing_folder_is_left_alone(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code = main([*TRAIN_SGD, "--steps", "5", "--out", str(out)])
    assert code == 2
    assert "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    with pytest.raises(RunFolderError):
        train(RunConfig("digits_logreg", "sgd", steps=5), out)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--workload", "nope", "--optimizer", "sgd"], "valid: digits_cnn, digits_logreg"),
        (["--workload", "digits_mlp", "--optimizer", "nope"], "valid: adam"),
        (["--workload", "digits_mlp", "--optimizer", "adam", "--set", "gamma=1"], "valid: beta1"),
        (["--workload", "digits_mlp", "--optimizer", "adam", "--set", "lr=-1"], "lr"),
        (["--workload", "digits_mlp", "--optimizer", "adam", "--set", "eps=-1"], "eps"),
        (["--workload", "digits_mlp", "--optimizer", "adam", "--set", "beta1=1.5"], "beta1"),
        (["--workload", "digits_mlp", "--optimizer", "adam", "--set", "lr=fast"], "lr"),
        (["--workload", "digits_mlp", "--optimizer", "adam", "--steps", "0"], "steps"),
    ],
)
def test_bad_input_exits_nonzero_with_the_valid_names(tmp_path, capsys, args, expected) -> None:
    out = tmp_path / "run"
    code = main(["train", *args, "--out", str(out)])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_second_order_closure_contract(tmp_path: Path) -> None:
    """The runner drives a closure-taking optimizer; the loss it reports is finite."""
    from natgrad.optim import OPTIMIZERS

    second_order = [name for name, spec in OPTIMIZERS.items() if spec.second_order]
    if not second_order:
        pytest.skip("no second-order optimizer registered")
    for name in second_order:
        result = train(RunConfig("digits_logreg", name, steps=5, eval_every=5), tmp_path / name)
        assert result.status == "completed", name
        assert torch.isfinite(torch.tensor(result.final["val_loss"]))


def test_json_summary_and_plain_progress_lines(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "train",
            "--workload",
            "digits_logreg",
            "--optimizer",
            "nesterov",
            "--steps",
            "10",
            "--eval-every",
            "5",
            "--json",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["status"] == "completed" and summary["step"] == 10
    assert "steps/s" in captured.err and "eta" in captured.err  # not a terminal: log lines


def test_resume_refuses_a_different_configuration(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(RunConfig("digits_logreg", "sgd", steps=5, checkpoint_every=5), out)
    with pytest.raises(RunFolderError, match="hyperparameters"):
        train(
            RunConfig("digits_logreg", "sgd", steps=5, hyperparameters={"lr": 0.5}),
            out,
            resume=True,
        )
    longer = train(RunConfig("digits_logreg", "sgd", steps=8, checkpoint_every=5), out, resume=True)
    assert longer.step == 8 and longer.status == "completed"


def test_overwrite_replaces_a_run_but_never_other_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = RunConfig("digits_logreg", "sgd", steps=3)
    train(config, run)
    replaced = train(config, run, overwrite=True)
    assert replaced.status == "completed"
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not part of a natgrad run"):
        train(config, run, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine" and (run / "config.json").exists()
    with pytest.raises(RunFolderError, match="exclude each other"):
        train(config, tmp_path / "other", resume=True, overwrite=True)


@pytest.mark.parametrize("optimizer", ["kfac", "kfac_adaptive", "ngd"])
def test_second_order_crash_then_resume_equals_uninterrupted(tmp_path, monkeypatch, optimizer):
    """Sampled targets, damping adaptation, inverse periods and momentum all resume exactly."""
    config = RunConfig("digits_mlp", optimizer, steps=12, eval_every=6, checkpoint_every=5)
    reference = train(config, tmp_path / "reference")
    resumed = crash_then_resume(config, tmp_path / "crashed", monkeypatch, at_step=7)
    assert without_time(resumed.final) == without_time(reference.final)
