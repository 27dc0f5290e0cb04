"""Running studies: in this process or in P spawned worker processes, with progress lines.

Each worker is a fresh process (``spawn``) with one intra-op thread
(``OMP_NUM_THREADS=1``), so P workers use P cores without oversubscription. The
launcher enqueues the points first (under the storage lock), then the workers claim
waiting trials until none is left, while this process prints trials done, failures,
the best value so far and an ETA.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field

import optuna

from natgrad.tune.study import StudySpec, counts_as_trial, prepare_studies, trial_status, work

POLL_INTERVAL_S = 5.0
PRINT_EVERY_S = 10.0


@dataclass
class StudyProgress:
    """Counts and best values over a set of studies.

    Prints a line when the best value improves, when all trials are done, and otherwise
    at most every PRINT_EVERY_S seconds.
    """

    studies: list[optuna.Study]
    specs: list[StudySpec]
    trials: int
    enabled: bool = True
    started: float = field(default_factory=time.perf_counter)
    done_at_start: int | None = None
    last_line: str = ""
    last_printed: float = -math.inf

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
        now = time.perf_counter()
        new_best = best_text not in self.last_line
        due = now - self.last_printed >= PRINT_EVERY_S or done == total or new_best
        if due and line.split("; eta")[0] != self.last_line.split("; eta")[0]:
            print(line, file=sys.stderr, flush=True)
            self.last_line, self.last_printed = line, now


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _worker_main(url: str, specs: list[StudySpec], trials: int, runner=None) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        work(url, specs, trials, runner=runner)
    except KeyboardInterrupt:
        sys.exit(130)


def spawn_workers(url: str, specs: list[StudySpec], trials: int, workers: int, runner=None) -> list:
    """Start ``workers`` spawned processes running :func:`work` with one thread each.

    ``specs`` (dataclasses) and ``runner`` (a module-level function) are pickled.
    """
    context = multiprocessing.get_context("spawn")
    previous = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        processes = [
            context.Process(
                target=_worker_main, args=(url, list(specs), trials, runner), daemon=False
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
    runner=None,
) -> list[optuna.Study]:
    """Bring every study of ``specs`` to ``trials`` trials, with ``workers`` processes.

    ``runner`` replaces :func:`natgrad.tune.study.run_trial` (see :func:`work`).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    studies = prepare_studies(url, specs, trials)
    monitor = StudyProgress(studies, specs, trials, enabled=progress)
    monitor.report()
    if workers == 1:
        work(url, specs, trials, on_trial=monitor.report, runner=runner)
        return studies
    processes = spawn_workers(url, specs, trials, workers, runner)
    try:
        while any(process.is_alive() for process in processes):
            time.sleep(POLL_INTERVAL_S)
            monitor.report()
    finally:
        for process in processes:
            process.join()
    monitor.report()
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) failed (exit codes {failed})")
    return studies
