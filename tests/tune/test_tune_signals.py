"""Signals at awkward moments of `natgrad tune`: while a trial's outcome is written, and
while spawned workers are still importing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from natgrad.tune import launch
from natgrad.tune.study import StudySpec, claim_next_trial, prepare_studies, run_claimed

SPEC = StudySpec("digits_logreg", "sgd", "restricted", steps=5)


def test_a_stop_signal_while_a_trial_is_recorded_does_not_leave_it_running(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    (study,) = prepare_studies(url, [SPEC], trials=1)
    trial = claim_next_trial(study, 1)
    real_tell = optuna.Study.tell

    def tell_as_the_stop_signal_arrives(self, *args, **kwargs):
        launch._last_raised[0] = -float("inf")  # past the grace of the first signal
        signal.raise_signal(signal.SIGTERM)  # the launcher's stop, repeated each second
        return real_tell(self, *args, **kwargs)

    def interrupted_runner(study, trial, spec):
        raise KeyboardInterrupt("Ctrl-C")

    monkeypatch.setattr(optuna.Study, "tell", tell_as_the_stop_signal_arrives)
    with launch.signals_as_interrupt(), pytest.raises(KeyboardInterrupt):
        run_claimed(study, trial, SPEC, runner=interrupted_runner)
    (stored,) = optuna.load_study(study_name=SPEC.name, storage=url).get_trials()
    assert stored.state == TrialState.FAIL and stored.user_attrs["status"] == "interrupted"


def test_ctrl_c_while_workers_import_prints_one_line(tmp_path):
    out = tmp_path / "study"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["tune", "--workload", "digits_logreg", "--optimizer", "sgd", "--space", "restricted"]
    args += ["--trials", "2", "--steps", "5", "--workers", "2", "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-m", "natgrad.cli", *args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not workers_started(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # the workers are importing torch and natgrad now
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("natgrad tune: interrupted")


def workers_started(pid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


class SignalInFinalizer:
    """An object whose finalizer is running when the signal's handler runs: Python
    cannot raise there, so the KeyboardInterrupt goes to sys.unraisablehook."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the handler runs at one of these bytecodes
            pass


def test_an_interrupt_lost_in_a_finalizer_is_delivered_again():
    launch._last_raised[0] = -float("inf")
    with launch.signals_as_interrupt(), pytest.raises(KeyboardInterrupt):
        SignalInFinalizer()  # dropped at once: its finalizer runs here
        deadline = time.monotonic() + 5  # a training loop that never looks at a flag
        while time.monotonic() < deadline:
            sum(range(1000))


def test_a_repeat_of_the_signal_inside_the_hook_does_not_lose_the_interrupt(monkeypatch):
    real_start = launch.threading.Timer.start

    def start_then_repeat(self):  # the parent's next SIGTERM lands inside the hook
        real_start(self)
        signal.raise_signal(signal.SIGTERM)

    with launch.signals_as_interrupt(), pytest.raises(KeyboardInterrupt):
        # a SIGTERM whose KeyboardInterrupt a finalizer swallowed a moment ago
        launch._last_raised[0], launch._last_signal[0] = time.monotonic(), signal.SIGTERM
        monkeypatch.setattr(launch.threading.Timer, "start", start_then_repeat)
        launch.quiet_interrupts(SimpleNamespace(exc_value=KeyboardInterrupt("signal 15")))
        monkeypatch.setattr(launch.threading.Timer, "start", real_start)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            sum(range(1000))
    launch._last_signal[0] = signal.SIGINT


def test_no_signal_is_sent_again_once_the_studies_have_ended():
    launch._last_raised[0] = -float("inf")
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        launch._last_signal[0] = signal.SIGUSR1
        launch.redeliver_signal()  # the handler is not raise_keyboard_interrupt
        time.sleep(5 * launch.REDELIVER_S)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        launch._last_signal[0] = signal.SIGINT
    assert received == []


def test_the_signal_sent_again_reaches_a_runs_own_stop_flag():
    launch._last_raised[0] = -float("inf")
    received = []
    with launch.signals_as_interrupt():
        SignalInFinalizer()  # swallowed while the studies' handler is installed
        # the trial's run installs its own flag before the signal comes again
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
        try:
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                sum(range(1000))
        finally:
            signal.signal(signal.SIGINT, previous)
    assert received == [signal.SIGINT]
