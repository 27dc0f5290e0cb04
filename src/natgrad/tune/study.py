"""Quasi-random search as plain Optuna studies (Choi et al. 2019, Shallue et al. 2018).

A study is one (workload, optimizer, search space, steps, seed). Its K points are the
first K points of a scrambled, seeded Halton sequence in the unit cube ``[0, 1]^d``,
``u_i = Halton_seed(i)``, mapped to hyperparameters by the search space. The points are
generated once and enqueued as waiting trials (the study's sampler is Optuna's
``QMCSampler`` with the same settings, but it never has to draw: enqueueing avoids its
random first trial and the duplicate points it hands to concurrent workers). A trial
is identified by its point index, so running the same command again resumes, a larger
K extends the sequence, and no point is run twice: enqueueing and claiming run under a
storage-wide lock. Diverged or crashed trials are recorded as failed with their reason
and count as trials; a trial whose worker vanished (no heartbeat) is marked lost and its
point is enqueued again.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import optuna
import torch
from optuna.distributions import FloatDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import qmc

from natgrad.optim import get_optimizer_spec
from natgrad.optim.natural_gradient import IndefiniteCurvatureError
from natgrad.train import RunConfig, train
from natgrad.tune.owner import current_owner, owner_is_gone
from natgrad.tune.spaces import SearchSpace, load_space
from natgrad.tune.storage import (
    live_trial,
    open_storage,
    set_trial_state,
    set_trial_user_attr,
    stored_trial_state,
    study_lock,
)
from natgrad.workloads import get_workload

ATTRS_KEY = "natgrad"
HEARTBEAT_INTERVAL_S = 30.0
LOST_AFTER_S = 300.0
COUNTED_FAILURES = ("diverged", "error", "non-finite")
# Failures that say the hyperparameters are infeasible (like a divergence), not a bug.
NUMERICAL_FAILURES = (ArithmeticError, torch.linalg.LinAlgError, IndefiniteCurvatureError)
OUTCOME_STATUSES = ("completed", *COUNTED_FAILURES, "interrupted")

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class StudySpec:
    """What a study searches: workload, optimizer, space, trial length and seed."""

    workload: str
    optimizer: str
    space: str
    steps: int
    seed: int = 0
    batch_size: int | None = None

    @property
    def name(self) -> str:
        return f"{self.workload}-{self.optimizer}-{self.space}"

    @property
    def metric(self) -> str:
        """The validation metric minimized: error rate for classifiers, else loss."""
        return "val_error" if get_workload(self.workload).classification else "val_loss"

    def search_space(self) -> SearchSpace:
        return load_space(self.optimizer, self.space)

    def validate(self) -> None:
        """Raise ValueError naming the bad field (unknown names, steps < 1, seed < 0)."""
        get_workload(self.workload)
        get_optimizer_spec(self.optimizer).check_available()
        self.search_space()
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def attrs(self) -> dict:
        return asdict(self)

    def run_config(self, hyperparameters: dict) -> RunConfig:
        """The training run of a trial at ``hyperparameters`` (validation split only)."""
        return RunConfig(
            self.workload,
            self.optimizer,
            steps=self.steps,
            batch_size=self.batch_size,
            seed=self.seed,
            hyperparameters=hyperparameters,
            evaluate_test=False,
        )


def quasi_random_points(dimension: int, count: int, seed: int) -> np.ndarray:
    """The first ``count`` points of the scrambled Halton sequence seeded by ``seed``.

    Returns an array (count, dimension) in [0, 1); a prefix of a longer request, so a
    study extended from K to K' > K keeps its first K points.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if dimension == 0:
        return np.zeros((count, 0))
    return qmc.Halton(d=dimension, scramble=True, seed=seed).random(count)


def point_parameters(space: SearchSpace, point: np.ndarray) -> dict[str, tuple]:
    """Optuna parameters shown for a point: ``{name: (value, distribution)}``.

    Log dimensions keep their name; ``log1m`` ones are shown as ``one_minus_<name>`` on a
    log scale; fractions of the run as ``<name>_fraction``. Values are clipped to the
    distribution so round-off never pushes them outside.
    """
    shown = {}
    for dimension, u in zip(space.dimensions, point, strict=True):
        value = dimension.value(float(u))
        if dimension.scale == "log1m":
            name, low, high, log = (
                f"one_minus_{dimension.name}",
                1 - dimension.high,
                1 - dimension.low,
                True,
            )
            value = 1 - value
        else:
            name, low, high = dimension.name, dimension.low, dimension.high
            log = dimension.scale == "log"
            if dimension.fraction_of_total_steps:
                name = f"{dimension.name}_fraction"
        shown[name] = (min(max(value, low), high), FloatDistribution(low, high, log=log))
    return shown


def trial_status(trial: FrozenTrial) -> str:
    """completed | diverged | error | non-finite | interrupted | lost | running | waiting."""
    if trial.state == TrialState.COMPLETE:
        return "completed"
    if trial.state == TrialState.WAITING:
        return "waiting"
    if trial.state == TrialState.RUNNING:
        return "running"
    return trial.user_attrs.get("status", "error")


def holds_point(trial: FrozenTrial) -> bool:
    """Whether the trial accounts for its point (so the point must not be enqueued again)."""
    return "point_index" in trial.user_attrs and trial_status(trial) not in ("interrupted", "lost")


def counts_as_trial(trial: FrozenTrial) -> bool:
    """Finished trials that count in the protocol: completed and failed (diverged...)."""
    return trial_status(trial) == "completed" or trial_status(trial) in COUNTED_FAILURES


def check_study_attrs(study_name: str, stored: dict, spec: StudySpec) -> None:
    expected = spec.attrs()
    differing = sorted(
        key for key in set(stored) | set(expected) if stored.get(key) != expected.get(key)
    )
    if differing:
        shown = ", ".join(
            f"{key}: stored {stored.get(key)!r}, asked {expected.get(key)!r}" for key in differing
        )
        raise ValueError(
            f"study {study_name!r} was made with other settings ({shown}); "
            "use another --out or --storage"
        )


def existing_study_attrs(url: str, name: str) -> dict | None:
    """The natgrad settings stored on study ``name``, or None when it does not exist."""
    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return storage.get_study_user_attrs(study_id).get(ATTRS_KEY, {})


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(qmc_type="halton", scramble=True, seed=seed)


def open_study(url: str, spec: StudySpec, create: bool = False) -> optuna.Study:
    """Load (or create) the study of ``spec``; ValueError if it holds other settings."""
    stored = existing_study_attrs(url, spec.name)
    if stored is not None:
        check_study_attrs(spec.name, stored, spec)
        return optuna.load_study(
            study_name=spec.name, storage=open_storage(url), sampler=make_sampler(spec.seed)
        )
    if not create:
        raise ValueError(f"no study {spec.name!r} in the storage")
    study = optuna.create_study(
        study_name=spec.name,
        storage=open_storage(url),
        sampler=make_sampler(spec.seed),
        direction="minimize",
    )
    study.set_user_attr(ATTRS_KEY, spec.attrs())
    study.set_user_attr("metric", spec.metric)
    return study


def lost_reason(trial: FrozenTrial, now: float, lost_after_s: float) -> str | None:
    """Why a running trial is lost (its process is gone, or silent too long), else None."""
    owner = trial.user_attrs.get("owner")
    if owner and owner_is_gone(owner):
        return f"its process {owner['pid']} on {owner['host']} is gone"
    beat = trial.user_attrs.get("heartbeat", trial.datetime_start.timestamp())
    if now - beat > lost_after_s:
        return f"no heartbeat for {now - beat:.0f} s"
    return None


def mark_lost_trials(study: optuna.Study, lost_after_s: float = LOST_AFTER_S) -> int:
    """Running trials of a dead process, or without a heartbeat for ``lost_after_s``
    seconds, become failed (lost); their points are enqueued again. Returns how many."""
    now, lost = time.time(), 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = lost_reason(trial, now, lost_after_s)
        if reason is not None:
            set_trial_user_attr(study, trial, "status", "lost")
            set_trial_user_attr(study, trial, "reason", reason)
            try:
                set_trial_state(study, trial, TrialState.FAIL)
                lost += 1
            except UpdateFinishedTrialError:
                pass
    return lost


def enqueue_missing_points(study: optuna.Study, spec: StudySpec, trials: int) -> int:
    """Enqueue the points 0..trials-1 that no trial holds yet (call under the study lock)."""
    held = {t.user_attrs["point_index"] for t in study.get_trials(deepcopy=False) if holds_point(t)}
    space = spec.search_space()
    points = quasi_random_points(space.dimension, trials, spec.seed)
    added = 0
    for index in range(trials):
        if index in held:
            continue
        params = {
            name: value for name, (value, _) in point_parameters(space, points[index]).items()
        }
        study.enqueue_trial(
            params, user_attrs={"point_index": index, "point": points[index].tolist()}
        )
        added += 1
    return added


def check_trials(trials: int) -> None:
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")


def prepare_studies(
    url: str, specs: list[StudySpec], trials: int, on_recovered: Callable[[int], None] | None = None
) -> list[optuna.Study]:
    """Check every spec, then create/load the studies and enqueue their missing points.

    All checks (names, stored settings) happen before anything is written, so a bad
    request leaves existing studies untouched. Trials left running by a process that
    is gone are marked lost and their points enqueued again; ``on_recovered`` is told
    how many.
    """
    check_trials(trials)
    for spec in specs:
        spec.validate()
    open_storage(url)
    with study_lock(url):
        for spec in specs:
            stored = existing_study_attrs(url, spec.name)
            if stored is not None:
                check_study_attrs(spec.name, stored, spec)
        studies = [open_study(url, spec, create=True) for spec in specs]
        recovered = sum(mark_lost_trials(study) for study in studies)
        for study, spec in zip(studies, specs, strict=True):
            enqueue_missing_points(study, spec, trials)
    if on_recovered is not None:
        on_recovered(recovered)
    return studies


def claim_next_trial(study: optuna.Study, limit: int) -> optuna.Trial | None:
    """Move the first waiting trial with point index < ``limit`` to running (under the lock)."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if frozen.user_attrs.get("point_index", limit) >= limit:
            continue
        try:
            if set_trial_state(study, frozen, TrialState.RUNNING):
                set_trial_user_attr(study, frozen, "owner", current_owner())
                set_trial_user_attr(study, frozen, "heartbeat", time.time())
                return live_trial(study, frozen)
        except UpdateFinishedTrialError:
            continue
    return None


class Heartbeat:
    """Writes ``heartbeat = time.time()`` on a running trial every ``interval`` seconds."""

    def __init__(
        self, study: optuna.Study, trial: optuna.Trial, interval: float = HEARTBEAT_INTERVAL_S
    ):
        self.study, self.trial, self.interval = study, trial, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            # A missed beat only delays the lost-trial check; it must never stop the trial.
            with contextlib.suppress(Exception):
                set_trial_user_attr(self.study, self.trial, "heartbeat", time.time())

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def compact_history(history: list[dict], metric: str) -> list[list[float]]:
    """[[step, wall_time, metric, train_loss], ...]: what the report needs per evaluation."""
    rows = []
    for record in history:
        train_loss = record.get("train_loss")
        rows.append(
            [
                record["step"],
                record["wall_time"],
                record.get(metric, math.nan),
                train_loss if train_loss is not None else math.nan,
            ]
        )
    return rows


def finite_floats(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


@dataclass(frozen=True)
class TrialOutcome:
    """What an objective reports for one trial: its status, the value the study minimizes
    (read only when completed), why it failed, and user attributes to store on the trial
    (e.g. its learning curve, for the report)."""

    status: str = "completed"
    value: float = math.nan
    reason: str = ""
    attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in OUTCOME_STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(OUTCOME_STATUSES)}, got {self.status!r}"
            )


Objective = Callable[[StudySpec, dict], TrialOutcome]


def train_to_the_end(spec: StudySpec, hyperparameters: dict) -> TrialOutcome:
    """The tuner's objective: train ``spec.steps`` steps, the value is the final
    ``spec.metric`` on the validation split."""
    result = train(spec.run_config(hyperparameters))
    value = result.final.get(spec.metric, math.nan)
    attrs = {
        "final": finite_floats(result.final),
        "history": compact_history(result.history, spec.metric),
    }
    if result.status == "diverged":
        reason = f"training loss became non-finite at step {result.diverged_at_step}"
        return TrialOutcome("diverged", value, reason, attrs)
    if result.status == "interrupted":
        return TrialOutcome(
            "interrupted", value, f"stopped by a signal at step {result.step}", attrs
        )
    if not math.isfinite(value):
        return TrialOutcome("non-finite", value, f"{spec.metric} is {value}", attrs)
    return TrialOutcome(result.status, value, "", attrs)


def suggest_point(trial: optuna.Trial, spec: StudySpec) -> dict:
    """Show the trial's point to Optuna as parameters; returns its hyperparameters (stored
    on the trial too)."""
    space = spec.search_space()
    point = trial.user_attrs["point"]
    for name, (_, distribution) in point_parameters(space, np.asarray(point)).items():
        trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    hyperparameters = space.to_hyperparameters(point, total_steps=spec.steps)
    trial.set_user_attr("hyperparameters", hyperparameters)
    return hyperparameters


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: StudySpec,
    objective: Objective = train_to_the_end,
) -> str:
    """Run ``objective`` at the trial's point and tell the study; returns the trial's status.

    An exception of the objective is the trial's outcome, never the caller's: a signal
    (KeyboardInterrupt) makes it interrupted, a numerical failure (:data:`NUMERICAL_FAILURES`)
    diverged, anything else an error (printed with its traceback). A completed outcome
    whose value is NaN is recorded as non-finite.
    """
    hyperparameters = suggest_point(trial, spec)
    started = time.perf_counter()
    try:
        with Heartbeat(study, trial):
            outcome = objective(spec, hyperparameters)
    except KeyboardInterrupt:  # a signal before or after the training loop
        outcome = TrialOutcome("interrupted", reason="stopped by a signal")
    except NUMERICAL_FAILURES as error:  # the point is infeasible, like a divergence
        outcome = TrialOutcome("diverged", reason=f"{type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 - any failure of a trial is recorded, not fatal
        outcome = TrialOutcome("error", reason=f"{type(error).__name__}: {error}")
        print(
            f"[tune] trial {trial.number} of {spec.name} raised an unexpected error "
            f"(recorded as failed):\n{traceback.format_exc()}",
            file=sys.stderr,
            flush=True,
        )
    for key, value in outcome.attrs.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("duration_s", time.perf_counter() - started)
    status, reason = outcome.status, outcome.reason
    if status == "completed" and math.isnan(outcome.value):
        status, reason = "non-finite", f"{spec.metric} is {outcome.value}"
    return finish_trial(study, trial, status, reason, outcome.value)


def finish_trial(
    study: optuna.Study, trial: optuna.Trial, status: str, reason: str, value: float = math.nan
) -> str:
    """Record ``status`` (and its reason) on the trial and tell the study; returns the status
    ("lost" when another process already marked the trial lost)."""
    with signals_deferred():  # a trial half-written stays "running" for good
        trial.set_user_attr("status", status)
        if reason:
            trial.set_user_attr("reason", reason)
        try:
            if status == "completed":
                study.tell(trial, value)
            else:
                study.tell(trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            status = "lost"
    return status


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM while a trial's state is written (main thread only): one
    that arrives meanwhile is raised again, to the usual handler, once the write is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {
        signum: signal.signal(signum, lambda s, _: received.append(s)) for signum in signals
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


TrialRunner = Callable[[optuna.Study, optuna.Trial, StudySpec], str]


def work(
    url: str,
    specs: list[StudySpec],
    trials: int,
    on_trial: Callable[[], None] | None = None,
    objective: Objective = train_to_the_end,
) -> int:
    """Claim and run waiting trials of ``specs`` (in order) until none is left; returns the count.

    Several processes (or machines sharing a server) may run this at once on the same
    studies. A trial interrupted by a signal is recorded (its point is enqueued again
    on the next run) and then KeyboardInterrupt is raised, so callers stop too.
    ``objective`` (default :func:`train_to_the_end`) gives each trial's outcome; an
    experiment that measures something else passes its own (see :func:`run_trial`).
    """
    runner = functools.partial(run_trial, objective=objective)
    studies = [open_study(url, spec) for spec in specs]
    done = 0
    while True:
        claimed = None
        try:
            # A signal during the claim is held until the trial is ours to record.
            with signals_deferred(), study_lock(url):
                for study, spec in zip(studies, specs, strict=True):
                    trial = claim_next_trial(study, trials)
                    if trial is not None:
                        claimed = (study, trial, spec)
                        break
            if claimed is None:
                return done
            status = run_claimed(*claimed, runner=runner)
        except KeyboardInterrupt:
            if claimed is not None:
                record_interrupted(claimed[0], claimed[1])
            raise
        done += 1
        if on_trial is not None:
            on_trial()
        if status == "interrupted":
            raise KeyboardInterrupt(f"trial {claimed[1].number} of {claimed[2].name} interrupted")


def run_claimed(
    study: optuna.Study, trial: optuna.Trial, spec: StudySpec, runner: TrialRunner = run_trial
) -> str:
    """``runner`` (:func:`run_trial`), recording the trial as interrupted if a signal ends it
    anywhere, so no trial stays running after its process stops."""
    try:
        return runner(study, trial, spec)
    except BaseException:
        record_interrupted(study, trial)
        raise


def record_interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record ``trial`` as interrupted unless its outcome is already stored."""
    with contextlib.suppress(Exception):
        if stored_trial_state(study, trial) == TrialState.RUNNING:
            finish_trial(study, trial, "interrupted", "stopped by a signal")


def trial_records(study: optuna.Study, trials: int) -> list[dict]:
    """The trials that count (point index < ``trials``), by point index, as plain dicts."""
    records = []
    for trial in study.get_trials(deepcopy=False):
        index = trial.user_attrs.get("point_index")
        if index is None or index >= trials or not counts_as_trial(trial):
            continue
        records.append(
            {
                "number": trial.number,
                "point_index": index,
                "point": trial.user_attrs.get("point"),
                "status": trial_status(trial),
                "reason": trial.user_attrs.get("reason", ""),
                "value": trial.value if trial.state == TrialState.COMPLETE else None,
                "hyperparameters": trial.user_attrs.get("hyperparameters", {}),
                "history": trial.user_attrs.get("history", []),
                "duration_s": trial.user_attrs.get("duration_s"),
            }
        )
    return sorted(records, key=lambda record: record["point_index"])
