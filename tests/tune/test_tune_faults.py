"""Tuning under faults, with real processes and signals: kill -9, Ctrl-C, dead parents,
two commands racing on a new folder, and arguments that must leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tune_cli import tune_args

from natgrad import cli
from natgrad.tune.owner import owner_is_gone
from natgrad.tune.storage import open_storage, storage_url

STUDY = "digits_logreg-sgd-restricted"


def start(args: list[str]) -> subprocess.Popen:
    """A natgrad command in its own process group (as a shell job would be)."""
    return subprocess.Popen(
        [sys.executable, "-m", "natgrad.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def trials_of(out: Path) -> list:
    if not (out / "study.db").exists():
        return []
    try:
        # through natgrad's storage: it takes the lock that serializes schema creation
        study = optuna.load_study(study_name=STUDY, storage=open_storage(storage_url(out, None)))
    except (KeyError, Exception):  # noqa: BLE001 - the study may not exist yet
        return []
    return study.get_trials(deepcopy=False)


def wait_for_running(out: Path, process: subprocess.Popen, count: int = 1, timeout=90) -> list:
    """The running trials, once ``count`` of them have an owner recorded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [
            t for t in trials_of(out) if t.state == TrialState.RUNNING and "owner" in t.user_attrs
        ]
        if len(running) >= count:
            return running
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("no trial started in time")


def wait_until_gone(owners: list[dict], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(owner_is_gone(owner) for owner in owners):
            return True
        time.sleep(0.1)
    return False


def test_kill9_of_the_whole_tune_then_rerun_recovers_every_point(tmp_path, capsys):
    out = tmp_path / "study"
    process = start(tune_args(out, trials=3, steps=1500, workers=2))
    running = wait_for_running(out, process, count=2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert wait_until_gone([t.user_attrs["owner"] for t in running], timeout=10)
    assert sum(t.state == TrialState.RUNNING for t in trials_of(out)) >= 2
    assert cli.main(tune_args(out, trials=3, steps=1500)) == 0
    captured = capsys.readouterr()
    assert "recovered 2 trial(s) left running by a stopped process" in captured.err
    assert "recovered from stopped processes" in captured.out
    completed = [t for t in trials_of(out) if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["point_index"] for t in completed) == [0, 1, 2]
    assert not [t for t in trials_of(out) if t.state == TrialState.RUNNING]


def test_kill9_of_the_parent_stops_its_workers(tmp_path):
    out = tmp_path / "study"
    process = start(tune_args(out, trials=2, steps=1_000_000, workers=2))
    running = wait_for_running(out, process, count=2)
    owners = [t.user_attrs["owner"] for t in running]
    assert all(owner["pid"] != process.pid for owner in owners)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert wait_until_gone(owners, timeout=20), "workers kept running after their parent died"
    statuses = {t.user_attrs.get("status") for t in trials_of(out)}
    assert statuses == {"interrupted"}
    assert not [t for t in trials_of(out) if t.state == TrialState.RUNNING]


def assert_interrupted_line(process: subprocess.Popen, command: str = "tune") -> str:
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"natgrad {command}: interrupted: ")
    assert last.endswith("trials recorded, rerun the same command to continue")
    return last


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_of_tune_is_one_line_and_leaves_no_trial_running(tmp_path, workers):
    out = tmp_path / "study"
    process = start(tune_args(out, trials=2, steps=1_000_000, workers=workers))
    wait_for_running(out, process, count=workers)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert_interrupted_line(process)
    trials = trials_of(out)
    assert trials and not [t for t in trials if t.state == TrialState.RUNNING]
    assert {t.user_attrs.get("status") for t in trials if t.state == TrialState.FAIL} == {
        "interrupted"
    }


def test_interrupting_one_worker_is_one_line(tmp_path):
    out = tmp_path / "study"
    process = start(tune_args(out, trials=2, steps=4000, workers=2))
    running = wait_for_running(out, process, count=2)
    os.kill(running[0].user_attrs["owner"]["pid"], signal.SIGINT)
    assert_interrupted_line(process)
    statuses = sorted(t.user_attrs.get("status", "") for t in trials_of(out))
    assert statuses == ["completed", "interrupted"]  # the other worker finished its trial
    assert cli.main(tune_args(out, trials=2, steps=4000)) == 0
    done = [t for t in trials_of(out) if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["point_index"] for t in done) == [0, 1]


def test_ctrl_c_of_compare_is_one_line(tmp_path):
    out = tmp_path / "compare"
    args = ["compare", "--workload", "digits_logreg", "--optimizers", "sgd", "--space"]
    args += ["restricted", "--trials", "1", "--steps", "1000000", "--out", str(out)]
    process = start(args)
    wait_for_running(out, process)
    os.killpg(process.pid, signal.SIGINT)
    assert_interrupted_line(process, "compare")


def test_two_tune_commands_started_together_share_one_new_study(tmp_path):
    out = tmp_path / "study"
    processes = [start(tune_args(out, trials=4, steps=5)) for _ in range(2)]
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert "already exists" not in stderr
    completed = [t for t in trials_of(out) if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["point_index"] for t in completed) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("option", "message"), [("--trials", "trials must be"), ("--workers", "workers must be")]
)
@pytest.mark.parametrize("command", ["tune", "compare"])
def test_zero_trials_or_workers_leave_nothing_behind(tmp_path, capsys, option, message, command):
    out = tmp_path / "new"
    args = tune_args(out, trials=2, steps=5)
    if command == "compare":
        args = ["compare", "--workload", "digits_logreg", "--optimizers", "sgd", *args[7:]]
    args[args.index(option) + 1] = "0"
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["tune", "compare"])
def test_tune_and_compare_refuse_a_training_run_folder(tmp_path, capsys, command):
    run = tmp_path / "run"
    train = ["train", "--workload", "digits_logreg", "--optimizer", "sgd", "--steps", "2"]
    assert cli.main([*train, "--out", str(run)]) == 0
    before = sorted(p.name for p in run.iterdir())
    args = tune_args(run, trials=1, steps=2)
    if command == "compare":
        args = ["compare", "--workload", "digits_logreg", "--optimizers", "sgd", *args[7:]]
    capsys.readouterr()
    assert cli.main(args) == 2
    assert "holds a training run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before
