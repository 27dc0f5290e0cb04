"""Time to a workload's target: K-FAC against the optimizers a user would pick instead.

``--workload`` is fmnist_autoencoder (target: training loss 250, the mean of the last 10
mini-batch losses), fmnist_cnn (validation error 0.12) or fmnist_vit (validation error
0.16). Every family runs over its own grid of the same size (``--grid-size``, default 3),
log-spaced around a center: the learning rate of adam, adamw, muon, soap, shampoo,
and momentum by factors of 2; the damping of kfac_preset (the ``kfac`` preset, whose KL
clip makes the learning rate a no-op whenever it binds) by factors of 10 around its
3e-3, and the initial damping of kfac (``kfac_adaptive``: alpha and mu from the
quadratic model, Levenberg-Marquardt damping) by factors of 10, so 3 points are
{0.01, 0.1, 1}. ekfac searches its damping
like kfac when it has one, else its learning rate. A family whose optimizer is not
registered, or that needs an absent optional package (soap and shampoo: heavyball), is
skipped with one line.

All runs start from the same seeded initialization and see the same batches (the
runner's), and advance round-robin, one step each per round, so that all share the
machine load of the moment. A validation-error target is checked every ``--eval-every``
steps on the validation set (``--eval-examples``, default all 10,000 images); the
evaluation is not timed. A run stops at its target, after ``--max-steps`` steps or
``--time-limit`` seconds of its own training time, or when it diverges; a run whose step
raises an error is marked failed with the error's first line and the others go on.

A family's best is its grid point that reaches the target in the fewest seconds.
"Paired" seconds are the steps to the target times the run's mean step time over the
first rounds in which every run was still active, so all saw the same load. Usage::

    natgrad --threads 1 bench time-to-target --workload fmnist_vit [--grid-size 3] \
        [--target 0.16] [--max-steps 2000] [--time-limit 300] [--out DIR] [--json]

(``benchmarks/bench_kfac_time_to_target.py`` runs the same.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from natgrad.bench.benchmark import Benchmark, register_benchmark
from natgrad.bench.timing import check_device, default_device
from natgrad.jsonio import write_json
from natgrad.optim import OPTIMIZERS, get_optimizer_spec
from natgrad.train.harness import SMOOTHING, Curve, CurveRun
from natgrad.train.runner import load_workload_data
from natgrad.workloads import get_workload

METRICS = ("train_loss", "val_error")


@dataclass(frozen=True)
class Race:
    """A workload's race: the target metric and value, and its default settings."""

    metric: str
    target: float
    report_targets: tuple[float, ...] = ()
    eval_every: int = 50
    variant_damping: float = 0.0  # > 0: the K-FAC amortization variants too


RACES: dict[str, Race] = {
    "fmnist_autoencoder": Race("train_loss", 250.0, (240.0, 230.0), variant_damping=0.1),
    "fmnist_cnn": Race("val_error", 0.12),
    "fmnist_vit": Race("val_error", 0.16),
}


@dataclass(frozen=True)
class Family:
    """A contender: a registry optimizer, the hyperparameter its grid searches (None:
    damping when the optimizer has one, else lr), the grid's center and ratio."""

    name: str
    optimizer: str
    axis: str | None
    center: float | None  # None: the registry default
    factor: float
    fixed: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("adam", "adam", "lr", 2e-3, 2.0),
        Family("adamw", "adamw", "lr", 2e-3, 2.0),
        Family("muon", "muon", "lr", 2e-3, 2.0),
        Family("soap", "soap", "lr", 3e-3, 2.0),
        Family("shampoo", "shampoo", "lr", 3e-3, 2.0),
        Family("momentum", "momentum", "lr", 1e-2, 2.0, {"momentum": 0.9}),
        Family("kfac", "kfac_adaptive", "damping", 0.1, 10.0),  # {0.01, 0.1, 1}
        # The preset's KL clip scales the step to sqrt(kl_clip / d^T F d) whenever it binds,
        # which makes its lr a no-op; its damping changes the direction, so it is searched.
        Family("kfac_preset", "kfac", "damping", 3e-3, 10.0),  # {3e-4, 3e-3, 3e-2}
        Family("kfac_eigen_adam", "kfac_eigen_adam", "lr", None, 2.0),
        Family("ekfac", "ekfac", None, None, 2.0),
    )
}
DEFAULT_FAMILIES = (
    "adam",
    "adamw",
    "muon",
    "soap",
    "kfac",
    "kfac_preset",
    "kfac_eigen_adam",
    "ekfac",
)
# natgrad's K-FAC variants: the JSON's best["kfac"] is the fastest of their grid points
# (each variant still has a grid of --grid-size, and its own entry under its name).
KFAC_VARIANTS = ("kfac", "kfac_preset", "kfac_eigen_adam")
VARIANTS = {
    "statistics every step on whole batch": {"stat_fraction": 1.0, "stat_every": 1},
    "model on whole batch": {"model_fraction": 1.0},
    "inverses every 20 steps": {"inv_every": 20},
}


@dataclass(frozen=True)
class RunSpec:
    """One run: a label, its family, the registry optimizer and its hyperparameters."""

    label: str
    family: str
    optimizer: str
    hyperparameters: dict
    variant: bool = False


# ---------------------------------------------------------------- the grid


def grid_values(center: float, factor: float, size: int) -> list[float]:
    """``size`` values ``center * factor^(k - (size - 1) / 2)``, rounded to 3 digits."""
    return [float(f"{center * factor ** (k - (size - 1) / 2):.3g}") for k in range(size)]


def why_unavailable(family: Family) -> str | None:
    """Why ``family`` cannot run here (one line), or None."""
    if family.optimizer not in OPTIMIZERS:
        return f"optimizer {family.optimizer!r} is not registered in this natgrad"
    spec = OPTIMIZERS[family.optimizer]
    return spec.unavailable() if spec.unavailable is not None else None


def family_grid(family: Family, size: int) -> list[RunSpec]:
    """The family's ``size`` grid points. A family that leaves its axis open searches the
    damping as kfac does (factors of 10 around 0.1) when its optimizer has one, else the
    learning rate around its registry default."""
    defaults = get_optimizer_spec(family.optimizer).defaults()
    axis = family.axis or ("damping" if "damping" in defaults else "lr")
    if family.axis is None and axis == "damping":
        factor, center = 10.0, 0.1
    else:
        factor = family.factor
        center = family.center if family.center is not None else defaults[axis]
    if not isinstance(center, (int, float)) or not center > 0:
        raise ValueError(f"{family.name}: no positive default {axis} to center its grid on")
    specs = []
    for value in grid_values(float(center), factor, size):
        label = f"{family.name} ({family.optimizer}) {axis}={value:g}"
        specs.append(RunSpec(label, family.name, family.optimizer, {**family.fixed, axis: value}))
    return specs


def grid(args: argparse.Namespace) -> tuple[list[RunSpec], dict[str, str]]:
    """Every run of the benchmark, and the families skipped with the reason."""
    specs, skipped = [], {}
    for name in args.families:
        reason = why_unavailable(FAMILIES[name])
        if reason is not None:
            skipped[name] = reason
            continue
        specs += family_grid(FAMILIES[name], args.grid_size)
    if args.variant_damping > 0 and "kfac" in args.families and "kfac" not in skipped:
        for variant, extra in VARIANTS.items():
            hparams = {"damping": args.variant_damping, **extra}
            label = f"kfac (kfac_adaptive) damping={args.variant_damping:g}, {variant}"
            specs.append(RunSpec(label, "kfac", "kfac_adaptive", hparams, variant=True))
    return specs, skipped


# ---------------------------------------------------------------- running


class RaceRun:
    """A :class:`CurveRun` with its validation errors, measured outside the timed step."""

    def __init__(self, spec: RunSpec, args: argparse.Namespace) -> None:
        self.spec = spec
        self.run = CurveRun(
            args.workload,
            spec.optimizer,
            spec.hyperparameters,
            args.batch,
            args.max_steps,
            seed=args.seed,
            device=str(args.device),
        )
        self.evaluations: list[list[float]] = []  # [step, validation error]
        self.error: str | None = None

    @property
    def curve(self) -> Curve:
        return self.run.curve

    def advance(self, args: argparse.Namespace) -> None:
        """One timed step, then (untimed) the validation error when it is due."""
        try:
            self.run.advance()
        except (RuntimeError, ValueError, ArithmeticError) as error:
            # one run's failure (e.g. a factorization of NaN curvature) ends that run only
            first_line = (str(error).strip().splitlines() or [""])[0]
            self.error = f"{type(error).__name__}: {first_line}"
            self.curve.status = "failed"
            print(
                f"{self.spec.label}: failed at step {len(self.curve.losses) + 1}: {self.error}",
                file=sys.stderr,
            )
            return
        step = len(self.curve.losses)
        due = args.target_metric == "val_error" and step % args.eval_every == 0
        if due and self.curve.status == "completed":
            self.evaluations.append([step, self.validation_error(args.eval_examples)])

    def validation_error(self, examples: int) -> float:
        """The error on the first ``examples`` validation images (0: all of them)."""
        return self.run.session.evaluate("val", examples or None)["error"]


def steps_to(curve: Curve, evaluations: list, metric: str, target: float) -> int | None:
    """Steps to ``target``: the smoothed training loss, or the first evaluation at or
    below it."""
    if metric == "train_loss":
        return curve.steps_to(target)
    return next((int(step) for step, error in evaluations if error <= target), None)


def run_all(specs: list[RunSpec], args: argparse.Namespace, stop_at: float) -> dict:
    """Every run, round-robin, until each is at ``stop_at``, out of steps or time, or
    diverged; the curves and evaluations by label."""
    runs = [RaceRun(spec, args) for spec in specs]

    def finished(run: RaceRun) -> bool:
        curve = run.curve
        if run.run.done:
            return True
        if curve.wall_times and curve.wall_times[-1] >= args.time_limit:
            return True
        return steps_to(curve, run.evaluations, args.target_metric, stop_at) is not None

    active = list(runs)
    while active:
        for run in active:
            run.advance(args)
        active = [run for run in active if not finished(run)]
    return {
        run.spec.label: {
            "losses": run.curve.losses,
            "wall_times": run.curve.wall_times,
            "evaluations": run.evaluations,
            "status": run.curve.status,
            "error": run.error,
        }
        for run in runs
    }


# ---------------------------------------------------------------- analysis


def step_times(wall_times: list[float]) -> list[float]:
    return [b - a for a, b in zip([0.0, *wall_times[:-1]], wall_times, strict=True)]


def summarize(spec: RunSpec, stored: dict, targets: list[float], args, window: int) -> dict:
    """One run's record: steps, seconds and paired seconds to every target."""
    curve = Curve(
        spec.optimizer,
        dict(spec.hyperparameters),
        args.batch,
        losses=list(stored["losses"]),
        wall_times=list(stored["wall_times"]),
        status=stored["status"],
    )
    times = step_times(curve.wall_times)
    # the mean, not the median: periodic work (inverses, the damping rule) counts
    paired_step = statistics.fmean(times[:window]) if times[:window] else None
    to_targets = {}
    for target in targets:
        steps = steps_to(curve, stored["evaluations"], args.target_metric, target)
        to_targets[f"{target:g}"] = {
            "steps": steps,
            "seconds": None if steps is None else curve.wall_times[steps - 1],
            "paired_seconds": None if steps is None or paired_step is None else steps * paired_step,
        }
    main = to_targets[f"{args.target:g}"]
    errors = [error for _, error in stored["evaluations"]]
    return {
        "label": spec.label,
        "family": spec.family,
        "optimizer": spec.optimizer,
        "hyperparameters": dict(spec.hyperparameters),
        "variant": spec.variant,
        "status": curve.status,
        "error": stored.get("error"),
        "steps_run": len(curve.losses),
        "steps_to_target": main["steps"],
        "seconds_to_target": main["seconds"],
        "paired_seconds_to_target": main["paired_seconds"],
        "to_targets": to_targets,
        "median_step_ms": 1e3 * statistics.median(times) if times else None,
        "paired_step_ms": None if paired_step is None else 1e3 * paired_step,
        "final_smoothed_loss": curve.smoothed()[-1] if curve.losses else None,
        "best_val_error": min(errors, default=None),
        "evaluations": stored["evaluations"],
    }


def family_winner(records: list[dict], family: str, target: float) -> dict | None:
    """The record of the family's grid point (variants excluded) that reaches ``target``
    in the fewest seconds, or None; family "kfac" takes every K-FAC variant's points."""
    key = f"{target:g}"
    members = KFAC_VARIANTS if family == "kfac" else (family,)
    reached = [
        r
        for r in records
        if r["family"] in members and not r["variant"] and r["to_targets"][key]["steps"]
    ]
    return min(reached, key=lambda r: (r["to_targets"][key]["seconds"], r["label"]), default=None)


def family_best(records: list[dict], family: str, target: float) -> dict:
    """``{"steps", "seconds", "setting", "paired_seconds"}`` of the family's best grid
    point, nulls if none reaches ``target``."""
    winner = family_winner(records, family, target)
    if winner is None:
        return {"steps": None, "seconds": None, "setting": None, "paired_seconds": None}
    figures = winner["to_targets"][f"{target:g}"]
    return {
        "steps": figures["steps"],
        "seconds": figures["seconds"],
        "setting": {"optimizer": winner["optimizer"], **winner["hyperparameters"]},
        "paired_seconds": figures["paired_seconds"],
    }


def analyze(specs: list[RunSpec], curves: dict, args, skipped: dict[str, str]) -> dict:
    """The JSON object: workload, target, best per family, runs, and the context."""
    targets = sorted({args.target, *args.report_targets}, reverse=True)
    window = min((len(curves[s.label]["wall_times"]) for s in specs), default=0)
    records = [summarize(spec, curves[spec.label], targets, args, window) for spec in specs]
    families = [name for name in args.families if name not in skipped]
    best = {name: family_best(records, name, args.target) for name in families}
    result = {
        "workload": args.workload,
        "target": {"metric": args.target_metric, "value": args.target},
        "best": best,
        "runs": records,
        "skipped": skipped,
        "speedup_over_adam": speedups(best),
        "grid_size": args.grid_size,
        "paired_window": window,
        "eval": None
        if args.target_metric != "val_error"
        else {"every": args.eval_every, "examples": args.eval_examples or "all"},
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    if args.report_targets:
        result["best_by_target"] = {
            f"{t:g}": {name: family_best(records, name, t) for name in families} for t in targets
        }
    return result


def speedups(best: dict) -> dict:
    """Adam's best seconds over each family's (raw and paired); None where either is
    missing."""
    adam = best.get("adam") or {}
    ratios = {}
    for name, entry in best.items():
        pair = {}
        for key in ("seconds", "paired_seconds"):
            mine, reference = entry.get(key), adam.get(key)
            pair[key] = reference / mine if mine and reference else None
        ratios[name] = pair
    return ratios


# ---------------------------------------------------------------- figure and table


COLORS = {
    "adam": "tab:green",
    "adamw": "tab:olive",
    "muon": "tab:purple",
    "soap": "tab:brown",
    "shampoo": "tab:pink",
    "momentum": "tab:blue",
    "kfac": "tab:red",
    "kfac_preset": "tab:orange",
    "ekfac": "tab:cyan",
}


def plot(curves: dict, result: dict, args, path: Path) -> None:
    """The training loss (smoothed) or the validation error against training time and
    steps; each family's best bold, variants dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    winners = {
        winner["label"]
        for family in result["best"]
        if (winner := family_winner(result["runs"], family, args.target)) is not None
    }
    figure, (by_time, by_steps) = plt.subplots(1, 2, figsize=(13, 4.8))
    for record in result["runs"]:
        stored = curves[record["label"]]
        if args.target_metric == "train_loss":
            curve = Curve("", {}, args.batch, losses=stored["losses"])
            values, steps = curve.smoothed(), list(range(1, len(stored["losses"]) + 1))
        else:
            steps = [int(step) for step, _ in stored["evaluations"]]
            values = [error for _, error in stored["evaluations"]]
        if not values:
            continue
        seconds = [stored["wall_times"][s - 1] for s in steps]
        style = dict(
            color=COLORS.get(record["family"], "0.3"),
            alpha=1.0 if record["label"] in winners or record["variant"] else 0.3,
            linestyle=":" if record["variant"] else "-",
            linewidth=1.8 if record["label"] in winners else 1.0,
        )
        by_time.plot(seconds, values, label=record["label"], **style)
        by_steps.plot(steps, values, label=record["label"], **style)
    ylabel = (
        f"training loss (mean of last {SMOOTHING} mini-batches)"
        if args.target_metric == "train_loss"
        else "validation error"
    )
    for axes, xlabel in ((by_time, "training wall-clock time (s)"), (by_steps, "step")):
        axes.axhline(args.target, color="0.5", linestyle="--", linewidth=1)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        if args.target_metric == "train_loss":
            axes.set_ylim(args.target * 0.9, 560)
        else:
            axes.set_ylim(args.target * 0.8, min(1.0, args.target * 3))
    by_time.legend(fontsize=6)
    by_time.set_title(f"{args.workload}, batch {args.batch}: to {ylabel} {args.target:g}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def table(result: dict) -> str:
    """Every run, then each family's best."""

    def show(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    target = result["target"]
    lines = [f"--- {result['workload']}: to {target['metric']} {target['value']:g}"]
    for r in result["runs"]:
        lines.append(
            f"{r['label']:58s} {r['status']:9s} steps {r['steps_run']:5d}  to target: "
            f"{show(r['steps_to_target'], 'd'):>5s} steps {show(r['seconds_to_target'], '.1f'):>7s}"
            f" s (paired {show(r['paired_seconds_to_target'], '.1f'):>7s} s)  step "
            f"{show(r['median_step_ms'], '.0f'):>5s} ms"
        )
    for name, reason in result["skipped"].items():
        lines.append(f"{name}: skipped ({reason})")
    lines.append("best per family:")
    for name, best in result["best"].items():
        lines.append(
            f"  {name:12s} steps {show(best['steps'], 'd'):>5s}  seconds "
            f"{show(best['seconds'], '.1f'):>7s}  setting {best['setting']}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workload",
        default="fmnist_autoencoder",
        choices=sorted(RACES),
        help="the race (default: %(default)s)",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        default=list(DEFAULT_FAMILIES),
        metavar="FAMILY",
        help=f"contenders, of {', '.join(FAMILIES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--grid-size", type=int, default=3, help="settings per family, >= 1 (default: 3)"
    )
    parser.add_argument("--batch", type=int, help="batch size (default: the workload's)")
    parser.add_argument(
        "--target-metric",
        choices=METRICS,
        help="train_loss or val_error (default: the workload's: training loss for "
        "fmnist_autoencoder, validation error for fmnist_cnn and fmnist_vit)",
    )
    parser.add_argument(
        "--target",
        type=float,
        help="target value (default: 250 for fmnist_autoencoder, 0.12 fmnist_cnn, 0.16 fmnist_vit)",
    )
    parser.add_argument(
        "--report-targets",
        type=float,
        nargs="*",
        help="more targets reported from the same runs, which stop at the lowest "
        "(default: 240 230 for fmnist_autoencoder, none otherwise)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        help="steps between validation evaluations, untimed (default: 50)",
    )
    parser.add_argument(
        "--eval-examples",
        type=int,
        default=0,
        help="validation examples per evaluation, 0 = all (default: 0)",
    )
    parser.add_argument(
        "--max-steps", type=int, default=2000, help="steps per run (default: %(default)s)"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="seconds of training per run (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights and batches (default: 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=argparse.SUPPRESS,
        help="torch threads, as natgrad --threads (default: torch's choice)",
    )
    parser.add_argument(
        "--variant-damping",
        type=float,
        help="damping of three amortization variants of kfac_adaptive, 0 leaves them out "
        "(default: 0.1 for fmnist_autoencoder, 0 otherwise)",
    )
    parser.add_argument(
        "--out", type=Path, help="results folder (default: runs/time_to_target/WORKLOAD)"
    )
    parser.add_argument(
        "--reanalyze",
        type=Path,
        help="recompute the tables and figure from the curves of an earlier results.json "
        "(default: run the grid)",
    )
    parser.add_argument("--figure", type=Path, help="figure path (default: OUT/time_to_target.png)")
    parser.add_argument(
        "--device",
        default=default_device(),
        help="cpu or cuda (default: %(default)s, cuda when present)",
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def resolve_arguments(args: argparse.Namespace) -> None:
    """Fill the workload's defaults and check every option (ValueError, one line)."""
    race = RACES[args.workload]
    args.target_metric = args.target_metric or race.metric
    _require(
        args.target_metric != "val_error" or get_workload(args.workload).classification,
        f"--target-metric val_error: {args.workload} is not a classifier; use train_loss",
    )
    if args.target is None:
        args.target = race.target if args.target_metric == race.metric else None
    _require(
        args.target is not None,
        f"--target is needed with --target-metric {args.target_metric} on {args.workload}",
    )
    if args.report_targets is None:
        args.report_targets = list(race.report_targets) if args.target == race.target else []
    for name, value in [("--target", args.target)] + [
        ("--report-targets", t) for t in args.report_targets
    ]:
        _require(_finite(value) and value > 0, f"{name} must be a finite number > 0, got {value}")
        if args.target_metric == "val_error":
            _require(value <= 1, f"{name} is a validation error, in (0, 1], got {value}")
    unknown = [name for name in args.families if name not in FAMILIES]
    _require(not unknown, f"unknown --families {' '.join(unknown)}; valid: {', '.join(FAMILIES)}")
    _require(len(set(args.families)) == len(args.families), "--families names one twice")
    _require(args.grid_size >= 1, f"--grid-size must be >= 1 (an empty grid), got {args.grid_size}")
    _require(args.max_steps >= 1, f"--max-steps must be >= 1, got {args.max_steps}")
    _require(
        _finite(args.time_limit) and args.time_limit > 0,
        f"--time-limit must be a finite number of seconds > 0, got {args.time_limit}",
    )
    args.eval_every = race.eval_every if args.eval_every is None else args.eval_every
    _require(args.eval_every >= 1, f"--eval-every must be >= 1, got {args.eval_every}")
    _require(args.eval_examples >= 0, f"--eval-examples must be >= 0, got {args.eval_examples}")
    _require(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    if args.variant_damping is None:
        args.variant_damping = race.variant_damping
    _require(
        _finite(args.variant_damping) and args.variant_damping >= 0,
        f"--variant-damping must be a finite number >= 0, got {args.variant_damping}",
    )
    args.batch = args.batch if args.batch is not None else get_workload(args.workload).batch_size
    _require(args.batch >= 1, f"--batch must be >= 1, got {args.batch}")
    threads = getattr(args, "threads", None)
    _require(threads is None or threads >= 1, f"--threads must be >= 1, got {threads}")
    args.device = check_device(args.device)
    args.out = args.out or Path("runs/time_to_target") / args.workload
    args.figure = args.figure or args.out / "time_to_target.png"
    _require(not args.out.is_file(), f"--out {args.out} is a file; give a folder")


def load_stored(path: Path, specs: list[RunSpec], args: argparse.Namespace) -> dict:
    """The curves of an earlier results.json for the runs of this grid; ValueError (naming
    the file) for a missing file, invalid JSON or a file of another shape."""
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--reanalyze {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--reanalyze {path}: not valid JSON ({error})") from None
    curves = stored.get("curves") if isinstance(stored, dict) else None
    shape_ok = isinstance(curves, dict) and all(
        isinstance(c, dict) and {"losses", "wall_times", "evaluations", "status"} <= set(c)
        for c in curves.values()
    )
    _require(
        shape_ok and isinstance(stored.get("workload"), str),
        f"--reanalyze {path}: not a results.json of bench time-to-target (no workload and "
        "curves with losses, wall_times, evaluations and status)",
    )
    _require(
        stored["workload"] == args.workload,
        f"--reanalyze {path}: its workload is {stored['workload']}, not {args.workload}",
    )
    missing = [spec.label for spec in specs if spec.label not in curves]
    if missing:
        raise ValueError(
            f"--reanalyze {path} has no run {missing[0]!r}; use the same grid arguments"
        )
    return {spec.label: curves[spec.label] for spec in specs}


def run(args: argparse.Namespace) -> dict:
    """Run (or reanalyze) the race; results.json and the figure go to ``--out``."""
    resolve_arguments(args)
    specs, skipped = grid(args)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    quiet = getattr(args, "json", False)
    curves = load_stored(args.reanalyze, specs, args) if args.reanalyze is not None else None
    _require(
        bool(specs),
        "no family can run here: "
        + "; ".join(f"{name}: {reason}" for name, reason in skipped.items()),
    )
    if curves is None:
        load_workload_data(get_workload(args.workload), None, str(args.device))  # fail early
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})", file=sys.stderr)
    if not quiet:
        print(
            f"{args.workload}: threads={torch.get_num_threads()} "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} load average="
            f"{os.getloadavg()[0]:.1f} batch={args.batch} {len(specs)} runs"
        )
    started = time.perf_counter()
    if curves is None:
        stop_at = min([args.target, *args.report_targets])
        curves = run_all(specs, args, stop_at)
    result = analyze(specs, curves, args, skipped)
    result["benchmark_seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    arguments = {k: str(v) for k, v in vars(args).items() if k not in ("handler", "argv")}
    write_json(args.out / "results.json", {**result, "arguments": arguments, "curves": curves})
    plot(curves, result, args, args.figure)
    if not quiet:
        print(table(result))
        print(f"results: {args.out / 'results.json'}, figure: {args.figure}")
    return result


def main(argv: list[str] | None = None) -> int:
    """The script form (``python -m natgrad.bench.time_to_target``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except ValueError as error:
        print(f"time-to-target: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    return 0


register_benchmark(Benchmark("time-to-target", __doc__.splitlines()[0], add_arguments, run))

if __name__ == "__main__":
    sys.exit(main())
