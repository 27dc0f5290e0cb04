"""Batch-size scaling on a real workload: fewest steps to a target, tuned at every batch size.

Shallue et al. (2018) measure, for each optimizer and batch size B, the fewest training
steps S(B) that any hyperparameter setting of a search needs to reach a target, and
read off where S(B) stops halving when B doubles. Here each (optimizer, B) is one
quasi-random Optuna study of natgrad's tune package (:mod:`natgrad.tune.study`): the
first K points of a scrambled Halton sequence in the optimizer's scaling space
(``tune/spaces/batch-scaling/``: the learning rate and the optimizer's key hyperparameter), so
running the command again resumes, a larger ``--trials`` extends every study, new
batch sizes add studies, and ``--storage``/``--workers`` share the work as in
``natgrad tune``.

A trial (:func:`train_to_target`, the objective the tuner runs at each point) trains
from the seeded initialization (the runner's model, optimizer, schedule and batches) for
at most ``budget(B) = clamp(ceil(examples_budget / B), min_steps, max_steps)`` steps,
evaluates the target metric on the validation split at steps 1, 2, ... growing
geometrically by ``eval_ratio`` (so a step count is at most that factor above the first
step at the target), and stops at the first evaluation at or below the target. Its
value is that step, or infinity if the target was not reached (a diverged trial is a
failure). S(B) is the best trial's value; the critical batch size follows
:mod:`natgrad.experiments.scaling`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import optuna
import torch

from natgrad.experiments.experiment import (
    PRESET_OPTION,
    Experiment,
    ExperimentOption,
    register_experiment,
    write_results,
)
from natgrad.experiments.scaling import critical_batch_size, fit_scaling_model
from natgrad.folders import check_folder_kind
from natgrad.train.session import DivergenceRule, TrainingSession, load_workload_data
from natgrad.tune.spaces import SearchSpace, list_spaces, load_space
from natgrad.tune.storage import redact, storage_url
from natgrad.tune.study import StudySpec, TrialOutcome, trial_records
from natgrad.workloads import get_workload

SPACE_NAME = "batch-scaling"
METRICS = ("val_error", "val_loss")
DIVERGENCE_FACTOR = 1e3  # a mini-batch loss this many times the first one is a divergence
DIVERGENCE = DivergenceRule(threshold=DIVERGENCE_FACTOR, relative_to_first=True)


def scaling_space(optimizer: str) -> SearchSpace:
    """The scaling search space of ``optimizer`` (tune/spaces/batch-scaling/): the learning
    rate and its key hyperparameter, with a constant schedule so that a trial's steps to
    the target do not depend on its budget; ValueError lists the optimizers that have one."""
    return load_space(optimizer, SPACE_NAME, experiment=SPACE_NAME)


SCALING_SPACES: dict[str, SearchSpace] = {
    optimizer: scaling_space(optimizer) for optimizer in list_spaces(SPACE_NAME)
}


@dataclass(frozen=True)
class ScalingStudySpec(StudySpec):
    """One (optimizer, batch size) study: ``steps`` is the trial's step budget."""

    target_metric: str = "val_error"
    target: float = 0.0
    eval_ratio: float = 1.1

    @property
    def name(self) -> str:
        return f"{self.workload}-{self.optimizer}-b{self.batch_size}-{SPACE_NAME}"

    @property
    def metric(self) -> str:
        return "steps_to_target"

    def search_space(self) -> SearchSpace:
        return scaling_space(self.optimizer)

    def validate(self) -> None:
        super().validate()
        if self.batch_size is None:
            raise ValueError("a batch-scaling study needs a batch size")
        if self.target_metric not in METRICS:
            raise ValueError(
                f"target metric must be one of {', '.join(METRICS)}, got {self.target_metric!r}"
            )
        if not math.isfinite(self.target):
            raise ValueError(f"--target must be a finite number, got {self.target!r}")
        cannot_be_negative = self.target_metric == "val_error" or (
            get_workload(self.workload).classification  # a cross-entropy is >= 0
        )
        if cannot_be_negative and self.target < 0:
            raise ValueError(
                f"--target must be >= 0 for {self.target_metric} of {self.workload} "
                f"(no trial can reach {self.target!r})"
            )
        if not self.eval_ratio > 1.0:
            raise ValueError(f"eval_ratio must be > 1, got {self.eval_ratio!r}")


def evaluation_steps(budget: int, ratio: float) -> list[int]:
    """Steps 1, 2, ... growing by ``ratio`` (at least one step apart), and the budget."""
    steps, step = [], 1
    while step < budget:
        steps.append(step)
        step = max(step + 1, math.ceil(step * ratio))
    return steps + [budget]


@torch.no_grad()
def produces_finite_outputs(model: torch.nn.Module, inputs: torch.Tensor) -> bool:
    return bool(torch.isfinite(model(inputs)).all())


def train_to_target(spec: ScalingStudySpec, hyperparameters: dict) -> TrialOutcome:
    """The studies' objective: train until the validation metric is <= the target, the
    budget ends or it diverges. The value is the step at the target (inf if not reached);
    the trial keeps its curve ``[[step, metric, train loss], ...]`` and whether it got there.
    """
    session = TrainingSession(spec.run_config(hyperparameters).resolved(), "cpu", DIVERGENCE)
    key = spec.target_metric.removeprefix("val_")
    history: list[list[float]] = []
    checkpoints = set(evaluation_steps(spec.steps, spec.eval_ratio))
    for step in range(1, spec.steps + 1):
        try:
            loss = float(session.step(step - 1))
        except RuntimeError as error:  # e.g. K-FAC sampling targets from non-finite outputs
            if produces_finite_outputs(session.model, session.batch(step - 1)[0]):
                raise
            return scaling_outcome(history, diverged=f"non-finite outputs: {error}")
        if session.diverged(loss):
            return scaling_outcome(history, diverged=f"training loss {loss} at step {step}")
        if step in checkpoints:
            value = session.evaluate("val")[key]
            history.append([step, value, loss])
            if value <= spec.target:
                return scaling_outcome(history, reached_at=step)
    return scaling_outcome(history)


def scaling_outcome(
    history: list[list[float]], reached_at: int | None = None, diverged: str = ""
) -> TrialOutcome:
    """Steps to the target as the value (inf if not reached), or diverged with its reason."""
    attrs = {"history": history, "reached": reached_at is not None}
    if diverged:
        return TrialOutcome("diverged", reason=diverged, attrs=attrs)
    steps = math.inf if reached_at is None else float(reached_at)
    return TrialOutcome("completed", steps, attrs=attrs)


@dataclass(frozen=True)
class ScalingConfig:
    """A batch-scaling measurement: what is tuned where, and each trial's budget."""

    workload: str
    optimizers: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    target: float
    target_metric: str
    trials: int
    examples_budget: int
    min_steps: int
    max_steps: int
    eval_ratio: float = 1.1
    seed: int = 0
    preset: str = "custom"

    def budget(self, batch_size: int) -> int:
        """Step budget of a trial at ``batch_size``."""
        steps = math.ceil(self.examples_budget / batch_size)
        return min(self.max_steps, max(self.min_steps, steps))

    def specs(self) -> list[ScalingStudySpec]:
        return [
            ScalingStudySpec(
                self.workload,
                optimizer,
                SPACE_NAME,
                self.budget(batch),
                self.seed,
                batch,
                self.target_metric,
                self.target,
                self.eval_ratio,
            )
            for optimizer in self.optimizers
            for batch in self.batch_sizes
        ]

    def validate(self) -> None:
        """ValueError naming the first bad setting (before anything is written)."""
        if not self.optimizers:
            raise ValueError("--optimizers must name at least one optimizer")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"--batch-sizes must be integers >= 1, got {list(self.batch_sizes)}")
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)):
            raise ValueError(f"--batch-sizes must be increasing, got {list(self.batch_sizes)}")
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"--trials must be an integer >= 1, got {self.trials!r}")
        if not 1 <= self.min_steps <= self.max_steps or self.examples_budget < 1:
            raise ValueError("budget: need examples_budget >= 1 and 1 <= min_steps <= max_steps")
        for spec in self.specs():
            spec.validate()
        train_size = _train_size(self.workload)
        if train_size is not None and self.batch_sizes[-1] > train_size:
            raise ValueError(
                f"batch size {self.batch_sizes[-1]} exceeds the {train_size} training "
                f"examples of {self.workload}"
            )


def _train_size(workload: str) -> int | None:
    """Training-set size of ``workload`` (loads its data, which the runs need anyway)."""
    return len(load_workload_data(get_workload(workload), None, "cpu").train)


FULL = ScalingConfig(
    workload="mnist1d_mlp",
    optimizers=("sgd", "momentum", "adam", "kfac_adaptive"),
    batch_sizes=(16, 32, 64, 128, 256, 512, 1024, 2048, 3200),
    target=0.40,
    target_metric="val_error",
    trials=12,
    examples_budget=160_000,
    min_steps=500,
    max_steps=8_000,
    preset="full",
)
# The measurement made small: an easier workload and target, 2 trials of 3 batch sizes,
# short budgets.
SMOKE = replace(
    FULL,
    workload="digits_mlp",
    target=0.15,
    trials=2,
    batch_sizes=(16, 64, 256),
    examples_budget=6_000,
    min_steps=20,
    max_steps=300,
    preset="smoke",
)
PRESETS = {"smoke": SMOKE, "full": FULL}


def batch_row(study: optuna.Study, spec: ScalingStudySpec, trials: int) -> dict:
    """The best trial of one study: steps and examples to the target, and its settings."""
    records = trial_records(study, trials)
    completed = [r for r in records if r["status"] == "completed"]
    reached = [r for r in completed if r["value"] is not None and math.isfinite(r["value"])]
    best = min(reached, key=lambda r: (r["value"], r["point_index"])) if reached else None
    steps = None if best is None else int(best["value"])
    return {
        "batch_size": spec.batch_size,
        "budget": spec.steps,
        "steps": steps,
        "examples": None if steps is None else steps * spec.batch_size,
        "hyperparameters": best["hyperparameters"] if best else {},
        "best_point": best["point_index"] if best else None,
        "trials": len(records),
        "reached": len(reached),
        "failed": len(records) - len(completed),
        "trial_steps": [
            None if r["value"] is None or not math.isfinite(r["value"]) else int(r["value"])
            for r in records
        ],
        "seconds": sum(r["duration_s"] or 0.0 for r in records),
    }


def analyze(config: ScalingConfig, rows: dict[str, list[dict]]) -> dict:
    """Critical batch sizes from the rows of every optimizer; the results dict."""
    critical, fits = {}, {}
    for name, by_batch in rows.items():
        batches, steps = [r["batch_size"] for r in by_batch], [r["steps"] for r in by_batch]
        budgets = [r["budget"] for r in by_batch]
        critical[name] = critical_batch_size(batches, steps, budgets).to_dict()
        fit = fit_scaling_model(batches, steps)
        fits[name] = None if fit is None else fit.to_dict()
    return {
        "experiment": "batch-scaling",
        "config": {
            **asdict(config),
            "budgets": {str(b): config.budget(b) for b in config.batch_sizes},
        },
        "target": config.target,
        "target_metric": config.target_metric,
        "optimizers": {name: name for name in config.optimizers},
        "order": list(config.optimizers),
        "curves": rows,
        "critical": critical,
        "critical_fit": fits,
        "critical_batch_size": {name: record["value"] for name, record in critical.items()},
    }


def measure(
    config: ScalingConfig, out_dir: Path, storage: str | None = None, workers: int = 1
) -> dict:
    """Bring every study to ``config.trials`` trials, then write results and figures."""
    from natgrad.report.scaling import write_scaling_figures
    from natgrad.tune.launch import run_studies

    config.validate()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    out_dir = Path(out_dir)
    check_folder_kind(out_dir, "study", experiment="batch-scaling")
    out_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(out_dir, storage)
    specs = config.specs()
    started, cpu_started = time.perf_counter(), time.process_time()
    studies = run_studies(url, specs, config.trials, workers, objective=train_to_target)
    rows: dict[str, list[dict]] = {name: [] for name in config.optimizers}
    for study, spec in zip(studies, specs, strict=True):
        rows[spec.optimizer].append(batch_row(study, spec, config.trials))
    results = analyze(config, rows)
    results["storage"] = redact(url)
    results["seconds_this_run"] = time.perf_counter() - started
    results["cpu_seconds_this_run"] = time.process_time() - cpu_started  # this process only
    write_results(out_dir, results)  # the measurements are kept even if a figure fails
    results["figures"] = sorted(p.name for p in write_scaling_figures(results, out_dir).values())
    write_results(out_dir, results)
    return results


def parse_list(text: str, kind, what: str) -> tuple:
    """A comma-separated list; ValueError naming ``what`` when an entry does not parse."""
    try:
        values = tuple(kind(item.strip()) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list, got {text!r}") from None
    return values


def configure(
    preset: str | None,
    workload: str | None = None,
    optimizers: str | None = None,
    batch_sizes: str | None = None,
    target: float | None = None,
    target_metric: str | None = None,
    trials: int | None = None,
    seed: int | None = None,
) -> ScalingConfig:
    """The preset (default "full") with the given command-line values replacing its own."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    config = PRESETS[preset or "full"]
    changes: dict = {}
    if workload is not None:
        changes["workload"] = workload
    if optimizers is not None:
        changes["optimizers"] = tuple(dict.fromkeys(parse_list(optimizers, str, "--optimizers")))
    if batch_sizes is not None:
        changes["batch_sizes"] = parse_list(batch_sizes, int, "--batch-sizes")
    for name, value in (("target", target), ("target_metric", target_metric)):
        if value is not None:
            changes[name] = value
    if trials is not None:
        changes["trials"] = trials
    if seed is not None:
        changes["seed"] = seed
    if changes:
        changes["preset"] = f"{config.preset} (changed: {', '.join(sorted(changes))})"
    return replace(config, **changes)


def run(
    out_dir: Path,
    quick: bool = False,
    preset: str | None = None,
    storage: str | None = None,
    workers: int | None = None,
    **choices,
) -> dict:
    """``natgrad experiment batch-scaling``: the preset ("smoke" with ``quick``) or choices."""
    config = configure(preset or ("smoke" if quick else None), **choices)
    return measure(config, out_dir, storage, 1 if workers is None else workers)


PRESET_DEFAULT = " (default: the preset's)"
OPTIONS = (
    PRESET_OPTION,
    ExperimentOption("--workload", "workload name, see `natgrad workloads`" + PRESET_DEFAULT),
    ExperimentOption(
        "--optimizers", "comma-separated optimizers, e.g. sgd,momentum,adam" + PRESET_DEFAULT
    ),
    ExperimentOption("--batch-sizes", "comma-separated increasing batch sizes" + PRESET_DEFAULT),
    ExperimentOption("--target", "target value of the metric" + PRESET_DEFAULT, float),
    ExperimentOption(
        "--target-metric", "val_error or val_loss, on the validation split" + PRESET_DEFAULT
    ),
    ExperimentOption(
        "--trials", "quasi-random trials per optimizer and batch size" + PRESET_DEFAULT, int
    ),
    ExperimentOption(
        "--seed", "seed of the Halton sequence, the model and the batches (default: 0)", int
    ),
    ExperimentOption(
        "--storage", "SQLAlchemy URL of a shared storage (default: study.db in --out)"
    ),
    ExperimentOption("--workers", "local worker processes (default: 1)", int),
)

register_experiment(
    Experiment(
        name="batch-scaling",
        description="steps to a target vs batch size, every optimizer tuned at every batch size",
        run=run,
        options=OPTIONS,
        folder_kind="study",
    )
)

__all__ = [
    "SCALING_SPACES",
    "ScalingConfig",
    "ScalingStudySpec",
    "evaluation_steps",
    "train_to_target",
    "configure",
    "measure",
    "run",
]
