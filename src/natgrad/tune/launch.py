"""Running studies: in this process or in P spawned worker processes, with progress lines.

Each worker is a fresh process (``spawn``) with one intra-op thread
(``OMP_NUM_THREADS=1``), so P workers use P cores without oversubscription. The
launcher enqueues the points first (under the storage lock), then the workers claim
waiting trials until none is left, while this process prints trials done, failures,
the best value so far and an ETA.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from natgrad.tune.owner import current_owner
from natgrad.tune.storage import live_trial
from natgrad.tune.study import (
    Objective,
    StudySpec,
    counts_as_trial,
    finish_trial,
    prepare_studies,
    train_to_the_end,
    trial_status,
    work,
)

POLL_INTERVAL_S = 1.0
PARENT_CHECK_S = 1.0
WORKER_STOP_TIMEOUT_S = 30.0
INTERRUPT_GRACE_S = 3.0
INTERRUPTED_EXIT_CODES = (130, -signal.SIGINT, -signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal stopped the studies; the message says what was kept and how to go on."""


def interrupted_message(done: int) -> str:
    return f"interrupted: {done} trials recorded, rerun the same command to continue"


@dataclass
class StudyProgress:
    """Counts and best values over a set of studies.

    Prints a line each time a trial finishes (or fails) and when the best value improves.
    """

    studies: list[optuna.Study]
    specs: list[StudySpec]
    trials: int
    enabled: bool = True
    started: float = field(default_factory=time.perf_counter)
    done_at_start: int | None = None
    last_line: str = ""
    last_printed: float = -math.inf
    recovered_count: int = 0

    def counts(self) -> tuple[int, int, tuple[float, str] | None]:
        done = failed = 0
        best: tuple[float, str] | None = None
        for study, spec in zip(self.studies, self.specs, strict=True):
            for trial in study.get_trials(deepcopy=False):
                if trial.user_attrs.get("point_index", self.trials) >= self.trials:
                    continue
                if not counts_as_trial(trial):
                    continue
                done += 1
                if trial_status(trial) != "completed":
                    failed += 1
                elif best is None or trial.value < best[0]:
                    best = (
                        trial.value,
                        f"{spec.optimizer}/{spec.space} #{trial.user_attrs['point_index']}",
                    )
        return done, failed, best

    def report(self) -> None:
        if not self.enabled:
            return
        done, failed, best = self.counts()
        if self.done_at_start is None:
            self.done_at_start = done
        total = self.trials * len(self.specs)
        elapsed = time.perf_counter() - self.started
        ran = done - self.done_at_start
        eta = (total - done) * elapsed / ran if ran > 0 else math.nan
        metric = self.specs[0].metric if self.specs else "value"
        best_text = f"best {metric} {best[0]:.4g} ({best[1]})" if best else "best: none yet"
        eta_text = f"eta {format_seconds(eta)}" if math.isfinite(eta) else "eta unknown"
        line = f"[tune] trials {done}/{total} done, {failed} failed; {best_text}; {eta_text}"
        if line.split("; eta")[0] != self.last_line.split("; eta")[0]:
            print(line, file=sys.stderr, flush=True)
            self.last_line, self.last_printed = line, time.perf_counter()

    def recovered(self, count: int) -> None:
        self.recovered_count = count
        if count and self.enabled:
            print(
                f"[tune] recovered {count} trial(s) left running by a stopped process; "
                "their points run again",
                file=sys.stderr,
                flush=True,
            )


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


_last_raised = [-math.inf]
_last_signal = [signal.SIGINT]
# live scopes whose signals stop studies (signals_as_interrupt, a worker's whole life)
_stopping_scopes = [0]
REDELIVER_S = 0.05


def raise_keyboard_interrupt(signum, frame) -> None:
    """SIGINT or SIGTERM as KeyboardInterrupt; a repeat within INTERRUPT_GRACE_S is
    ignored, so the clean-up that the first one started (recording the trial) is not cut
    short."""
    now = time.monotonic()
    if now - _last_raised[0] < INTERRUPT_GRACE_S:
        return
    _last_raised[0], _last_signal[0] = now, signum
    raise KeyboardInterrupt(f"signal {signum}")


def quiet_interrupts(unraisable) -> None:
    """sys.unraisablehook for a KeyboardInterrupt raised inside a finalizer or a
    garbage-collector callback, where Python cannot deliver it: the signal is sent to
    this process again shortly (so a trial running in this process still stops); any
    other unraisable exception is reported as usual."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        # A hook that raises prints a traceback; a start refused at interpreter shutdown
        # is dropped (nothing is left to stop).
        with contextlib.suppress(BaseException):
            redeliver_signal()
        return
    sys.__unraisablehook__(unraisable)


def redeliver_signal() -> None:
    """Send the last signal again in REDELIVER_S, outside the finalizer that swallowed its
    KeyboardInterrupt. The grace period is cleared only then (until then a repeat of the
    signal, e.g. a worker's parent's SIGTERM, is ignored rather than raised inside this
    hook and lost). It goes to whichever handler is current (a trial's run may have set
    its own stop flag meanwhile), and is not sent once the studies have ended."""
    signum = _last_signal[0]

    def resend() -> None:
        if _stopping_scopes[0] > 0:
            _last_raised[0] = -math.inf
            os.kill(os.getpid(), signum)

    timer = threading.Timer(REDELIVER_S, resend)
    timer.daemon = True
    timer.start()


def stop_when_parent_dies(parent: int, interval: float = PARENT_CHECK_S) -> threading.Thread:
    """A daemon thread that sends SIGTERM to this process once ``parent`` has exited (the
    worker then records its trial as interrupted and exits), and again every ``interval``
    seconds: Python drops an exception raised while a garbage-collector callback runs,
    so one signal may go unheard."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        while True:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(interval)

    thread = threading.Thread(target=watch, daemon=True, name="parent-watch")
    thread.start()
    return thread


def _worker_main(
    url: str, specs: list[StudySpec], trials: int, parent: int, objective: Objective
) -> None:
    """A worker: SIGINT stays ignored (as the launcher started it) until the handlers that
    record an interrupted trial are installed; a Ctrl-C during its imports reaches the
    launcher alone, whose SIGTERM then ends the worker without a traceback."""
    import torch

    torch.set_num_threads(1)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_keyboard_interrupt)
    sys.unraisablehook = quiet_interrupts
    _stopping_scopes[0] += 1  # for the worker's whole life
    try:
        stop_when_parent_dies(parent)
        work(url, specs, trials, objective=objective)
    except KeyboardInterrupt:
        sys.exit(130)


def spawn_workers(
    url: str,
    specs: list[StudySpec],
    trials: int,
    workers: int,
    objective: Objective = train_to_the_end,
) -> list:
    """Start ``workers`` spawned processes running :func:`work` with one thread each.

    ``specs`` (dataclasses) and ``objective`` (a module-level function) are pickled.
    """
    context = multiprocessing.get_context("spawn")
    previous = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        processes = [
            context.Process(
                target=_worker_main,
                args=(url, list(specs), trials, os.getpid(), objective),
                daemon=False,
            )
            for _ in range(workers)
        ]
        for process in processes:
            process.start()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return processes


def run_studies(
    url: str,
    specs: list[StudySpec],
    trials: int,
    workers: int = 1,
    progress: bool = True,
    objective: Objective = train_to_the_end,
) -> list[optuna.Study]:
    """Bring every study of ``specs`` to ``trials`` trials, with ``workers`` processes.

    ``objective(spec, hyperparameters) -> TrialOutcome`` gives each trial's outcome
    (default: train to the end, see :func:`natgrad.tune.study.run_trial`).
    """
    check_workers(workers)
    with signals_as_interrupt():
        return _run_studies(url, specs, trials, workers, progress, objective)


@contextlib.contextmanager
def signals_as_interrupt():
    """SIGTERM raises KeyboardInterrupt here too, like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, raise_keyboard_interrupt) for signum in signals}
    previous_hook, sys.unraisablehook = sys.unraisablehook, quiet_interrupts
    _stopping_scopes[0] += 1
    try:
        yield
    finally:
        _stopping_scopes[0] -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook


def _run_studies(
    url: str,
    specs: list[StudySpec],
    trials: int,
    workers: int,
    progress: bool,
    objective: Objective,
) -> list[optuna.Study]:
    recovered: list[int] = []
    studies = prepare_studies(url, specs, trials, on_recovered=recovered.append)
    monitor = StudyProgress(studies, specs, trials, enabled=progress)
    monitor.recovered(recovered[0])
    monitor.report()
    try:
        if workers == 1:
            work(url, specs, trials, on_trial=monitor.report, objective=objective)
        else:
            run_workers(url, specs, trials, workers, monitor, objective)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(monitor.counts()[0])) from None
    monitor.report()
    return studies


def check_workers(workers: int) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")


def run_workers(
    url: str,
    specs: list[StudySpec],
    trials: int,
    workers: int,
    monitor: StudyProgress,
    objective: Objective = train_to_the_end,
) -> None:
    """Spawn the workers and report until they finish; on a signal here, stop them (each
    records its trial as interrupted) and raise KeyboardInterrupt."""
    processes: list = []
    try:
        with interrupts_ignored_by_new_processes():  # see _worker_main
            processes = spawn_workers(url, specs, trials, workers, objective)
        while any(process.is_alive() for process in processes):
            time.sleep(POLL_INTERVAL_S)
            monitor.report()
    except KeyboardInterrupt:
        killed = stop_workers(processes)
        record_trials_of_killed_workers(monitor.studies, killed)
        raise
    for process in processes:
        process.join()
    codes = [process.exitcode for process in processes if process.exitcode != 0]
    if codes and all(code in INTERRUPTED_EXIT_CODES for code in codes):
        raise KeyboardInterrupt("a worker was interrupted")
    if codes:
        raise RuntimeError(f"{len(codes)} worker process(es) failed (exit codes {codes})")


@contextlib.contextmanager
def interrupts_ignored_by_new_processes():
    """Ignore SIGINT while processes are started (they inherit SIG_IGN through exec, as a
    signal mask is not), so that a Ctrl-C while a worker imports prints no traceback there;
    a Ctrl-C in the few milliseconds of the starts themselves is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_workers(processes: list) -> list[int]:
    """SIGTERM to each live worker (repeated each second, as one may go unheard), then
    SIGKILL those still alive after WORKER_STOP_TIMEOUT_S; returns the pids of those."""
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        alive = [process for process in processes if process.is_alive()]
        if not alive:
            return []
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        alive[0].join(PARENT_CHECK_S)
    killed = []
    for process in processes:
        if process.is_alive():
            process.kill()
            killed.append(process.pid)
        process.join()
    return killed


def record_trials_of_killed_workers(studies: list[optuna.Study], pids: list[int]) -> None:
    """Record as interrupted the trials that killed workers (``pids``, on this host) left
    running, so that none stays running after the command has stopped."""
    if not pids:
        return
    here = current_owner()["host"]
    for study in studies:
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = frozen.user_attrs.get("owner") or {}
            if owner.get("pid") in pids and owner.get("host") == here:
                trial = live_trial(study, frozen)
                finish_trial(study, trial, "interrupted", "its worker did not stop in time")
