"""The comparison protocol of Choi et al. (2019), end to end.

1. For each optimizer and search space, a quasi-random study of K trials of S steps.
2. The best trial on validation is re-run with R fresh seeds, and the held-out test set
   is evaluated at its final checkpoint (the only use of the test set).
3. Statistics (see :mod:`natgrad.tune.analysis`): best-of-K curves, steps to the
   workload's target, rankings with intervals per space, inclusion consistency,
   boundary warnings and the rank flips between the restricted and full spaces.
Everything the report needs is written to ``DIR/results.json``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from natgrad.jsonio import dumps as json_dumps
from natgrad.jsonio import write_json
from natgrad.optim import OPTIMIZERS
from natgrad.train import RunConfig, train
from natgrad.tune import analysis
from natgrad.tune.folder import check_study_folder, mark_study_folder
from natgrad.tune.launch import (
    Interrupted,
    check_workers,
    format_seconds,
    run_studies,
    signals_as_interrupt,
)
from natgrad.tune.spaces import SPACE_NAMES
from natgrad.tune.storage import open_storage, redact, storage_url
from natgrad.tune.study import StudySpec, compact_history, trial_records
from natgrad.workloads import get_workload

RESULTS_FILE = "results.json"


@dataclass
class CompareConfig:
    """What to compare: optimizers x spaces on one workload, K trials of S steps each."""

    workload: str
    optimizers: list[str]
    spaces: list[str] = field(default_factory=lambda: list(SPACE_NAMES))
    trials: int = 10
    steps: int = 300
    seeds: int = 3
    seed: int = 0
    batch_size: int | None = None
    bootstrap: int = 1000

    def validate(self) -> None:
        """ValueError naming the bad argument (checked before any study is touched)."""
        get_workload(self.workload)
        unknown = [name for name in self.optimizers if name not in OPTIMIZERS]
        if unknown:
            raise ValueError(
                f"unknown optimizer(s) {', '.join(map(repr, unknown))} in --optimizers; "
                f"valid: {', '.join(sorted(OPTIMIZERS))}"
            )
        bad_spaces = [name for name in self.spaces if name not in SPACE_NAMES]
        if bad_spaces:
            raise ValueError(
                f"unknown space(s) {bad_spaces} in --space; valid: {', '.join(SPACE_NAMES)}"
            )
        for name, value, low in (
            ("trials", self.trials, 1),
            ("seeds", self.seeds, 1),
            ("bootstrap", self.bootstrap, 1),
            ("steps", self.steps, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for spec in self.specs():
            spec.validate()

    def specs(self) -> list[StudySpec]:
        return [
            StudySpec(self.workload, optimizer, space, self.steps, self.seed, self.batch_size)
            for space in self.spaces
            for optimizer in self.optimizers
        ]


def rerun_folder(out_dir: Path, spec: StudySpec, seed: int) -> Path:
    return out_dir / "reruns" / f"{spec.optimizer}-{spec.space}" / f"seed{seed}"


def rerun_config(spec: StudySpec, hyperparameters: dict, seed: int) -> RunConfig:
    """A best trial's run again with ``seed``, evaluated on the test split as well."""
    trial = spec.run_config(hyperparameters)
    return replace(trial, seed=seed, eval_every=max(1, spec.steps // 20), evaluate_test=True)


def same_run_config(folder: Path, config: RunConfig) -> bool:
    """Whether ``folder`` holds a run (finished or not) of exactly this config."""
    stored = folder / "config.json"
    try:
        return json.loads(stored.read_text()) == json.loads(json_dumps(config.resolved()))
    except (OSError, json.JSONDecodeError):
        return False


def load_finished_run(folder: Path, config: RunConfig) -> dict | None:
    """A finished (completed or diverged) run in ``folder`` with exactly this config, or
    None; an interrupted one is resumed by the caller."""
    summary = folder / "summary.json"
    if not (summary.exists() and same_run_config(folder, config)):
        return None
    content = json.loads(summary.read_text())
    if content.get("status") not in ("completed", "diverged"):
        return None
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return {
        "status": content["status"],
        "final": content["final"],
        "history": [json.loads(line) for line in lines if line.strip()],
    }


def rerun_once(task: tuple[dict, dict, int, str]) -> dict:
    """Train one seed of a best configuration into its run folder (reused when finished)."""
    spec_dict, hyperparameters, seed, folder = task
    spec = StudySpec(**spec_dict)
    config = rerun_config(spec, hyperparameters, seed)
    outcome = load_finished_run(Path(folder), config)
    if outcome is None:
        resume = same_run_config(Path(folder), config)
        result = train(config, folder, resume=resume, overwrite=not resume)
        outcome = {"status": result.status, "final": result.final, "history": result.history}
    return {
        "label": f"{spec.optimizer}/{spec.space}",
        "seed": seed,
        "status": outcome["status"],
        "final": {k: v for k, v in outcome["final"].items() if isinstance(v, (int, float))},
        "history": compact_history(outcome["history"], spec.metric),
    }


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def rerun_interrupted_message(records: dict) -> str:
    trials = sum(len(found) for found in records.values())
    return (
        f"interrupted: {trials} trials recorded (re-runs of the best trials resume), "
        "rerun the same command to continue"
    )


class RerunProgress:
    """One line per finished re-run on stderr: count, elapsed time and ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.started = time.perf_counter()
        if enabled:
            print(
                f"[compare] re-running the best trials: {total} runs", file=sys.stderr, flush=True
            )

    def finished(self, outcome: dict) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        eta = (self.total - self.done) * elapsed / self.done
        print(
            f"[compare] re-runs {self.done}/{self.total} done ({outcome['label']} seed "
            f"{outcome['seed']}: {outcome['status']}); elapsed {format_seconds(elapsed)}, "
            f"eta {format_seconds(eta)}",
            file=sys.stderr,
            flush=True,
        )


def run_reruns(tasks: list[tuple], workers: int, progress: RerunProgress) -> list[dict]:
    """Run the re-run tasks here (one worker) or in a pool of spawned processes, in order."""
    if workers == 1 or len(tasks) <= 1:
        outcomes = []
        for task in tasks:
            outcomes.append(rerun_once(task))
            progress.finished(outcomes[-1])
        return outcomes
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    by_index: dict[int, dict] = {}
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)), _init_worker) as pool:
        for index, outcome in pool.imap_unordered(rerun_indexed, enumerate(tasks)):
            by_index[index] = outcome
            progress.finished(outcome)
    return [by_index[index] for index in range(len(tasks))]


def rerun_indexed(item: tuple[int, tuple]) -> tuple[int, dict]:
    index, task = item
    return index, rerun_once(task)


def test_values(reruns: list[dict], test_metric: str) -> list[float]:
    """The re-runs' test values; a failed re-run counts as the worst value (1 for errors)."""
    values = [r["final"].get(test_metric) for r in reruns]
    worst = analysis.failure_value(values, test_metric)
    return [v if v is not None and math.isfinite(v) else worst for v in values]


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """The range of a metric, for clipping intervals: error rates lie in [0, 1]."""
    return (0.0, 1.0) if metric.endswith("error") else None


def summarise_study(
    spec: StudySpec, records: list[dict], reruns: list[dict], config: CompareConfig
) -> dict:
    """Per study: trials, best trial, best-of-K curve, boundary warnings, re-runs, test stats."""
    completed = [r for r in records if r["value"] is not None]
    best = min(completed, key=lambda r: r["value"]) if completed else None
    test_metric = spec.metric.replace("val_", "test_")
    values = test_values(reruns, test_metric) if reruns else []
    mean, low, high = analysis.mean_interval(values, bounds=metric_bounds(test_metric))
    target = get_workload(spec.workload).target.get(spec.metric)
    to_target = [analysis.steps_to_target(r["history"], target) for r in reruns] if target else []
    reached = sorted(s for s in to_target if s is not None)
    label = f"{spec.optimizer}/{spec.space}"
    return {
        "optimizer": spec.optimizer,
        "space": spec.space,
        "search_space": spec.search_space().to_dict(),
        "trials": records,
        "failed": len(records) - len(completed),
        "best": best,
        "best_of_k": analysis.best_of_k(
            [r["value"] for r in records], spec.metric, config.bootstrap, config.seed
        ),
        "boundary_warnings": analysis.boundary_warnings(spec.search_space(), best["point"], label)
        if best
        else [],
        "reruns": reruns,
        "test": {"mean": mean, "interval": [low, high], "values": values},
        "steps_to_target": {
            "target": target,
            "per_seed": to_target,
            "median": reached[len(reached) // 2]
            if len(reached) == len(to_target) and reached
            else None,
        },
    }


def analyse(config: CompareConfig, summaries: dict[str, dict[str, dict]], test_metric: str) -> dict:
    """Rankings per space, inclusion checks, rank flips and the list of warnings."""
    ranking, inclusion, warnings = {}, {}, []
    for space in config.spaces:
        samples = {
            opt: summaries[opt][space]["test"]["values"]
            for opt in config.optimizers
            if summaries[opt][space]["test"]["values"]
        }
        ranking[space] = (
            analysis.rank_with_intervals(samples, bounds=metric_bounds(test_metric))
            if samples
            else []
        )
        inclusion[space] = analysis.inclusion_checks(ranking[space], space)
        warnings += [check["message"] for check in inclusion[space] if not check["consistent"]]
        for optimizer in config.optimizers:
            warnings += summaries[optimizer][space]["boundary_warnings"]
            if summaries[optimizer][space]["best"] is None:
                warnings.append(f"{optimizer}/{space}: every trial failed")
    flips = []
    if "restricted" in ranking and "full" in ranking:
        flips = analysis.rank_flips(ranking["restricted"], ranking["full"])
    return {
        "ranking": ranking,
        "inclusion": inclusion,
        # Only flips that the intervals support; the others are noise and only counted.
        "rank_flips": [flip for flip in flips if flip["intervals_apart"]],
        "rank_flips_within_intervals": sum(not flip["intervals_apart"] for flip in flips),
        "warnings": warnings,
    }


def run_compare(
    config: CompareConfig,
    out_dir: Path,
    storage: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Run (or resume) the whole protocol into ``out_dir`` and return the results dict."""
    config.validate()
    check_workers(workers)
    out_dir = Path(out_dir)
    check_study_folder(out_dir, config.workload)
    if storage is None:
        out_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(out_dir, storage)
    open_storage(url)
    mark_study_folder(out_dir, config.workload)
    specs = config.specs()
    studies = run_studies(url, specs, config.trials, workers, progress)
    records = {
        spec: trial_records(study, config.trials)
        for spec, study in zip(specs, studies, strict=True)
    }
    tasks, owners = [], []
    for spec in specs:
        completed = [r for r in records[spec] if r["value"] is not None]
        if not completed:
            continue
        best = min(completed, key=lambda r: r["value"])
        for offset in range(config.seeds):
            seed = config.seed + 1 + offset
            tasks.append(
                (
                    spec.attrs(),
                    best["hyperparameters"],
                    seed,
                    str(rerun_folder(out_dir, spec, seed)),
                )
            )
            owners.append(spec)
    try:
        with signals_as_interrupt():
            outcomes = run_reruns(tasks, workers, RerunProgress(len(tasks), progress))
    except KeyboardInterrupt:
        raise Interrupted(rerun_interrupted_message(records)) from None
    if any(outcome["status"] == "interrupted" for outcome in outcomes):
        raise Interrupted(rerun_interrupted_message(records))
    reruns = {
        spec: [o for o, owner in zip(outcomes, owners, strict=True) if owner == spec]
        for spec in specs
    }
    summaries: dict[str, dict[str, dict]] = {}
    for spec in specs:
        summaries.setdefault(spec.optimizer, {})[spec.space] = summarise_study(
            spec, records[spec], reruns[spec], config
        )
    metric = specs[0].metric
    results = {
        "config": {
            **asdict(config),
            "metric": metric,
            "test_metric": metric.replace("val_", "test_"),
            "storage": redact(url),
            "target": get_workload(config.workload).target,
        },
        "studies": summaries,
        **analyse(config, summaries, metric.replace("val_", "test_")),
    }
    write_json(out_dir / RESULTS_FILE, results, indent=1)
    return results
