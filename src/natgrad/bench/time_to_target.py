"""Time to a target training loss on fmnist_autoencoder: K-FAC against tuned Adam and Momentum.

Every optimizer gets a small grid: Adam and Momentum over learning rates; K-FAC as
``kfac_adaptive`` (alpha and mu from the quadratic model, Levenberg-Marquardt damping)
over the initial damping, and the fixed-lr ``kfac`` at its registry defaults for
reference. All runs start from the same seeded initialization and see the same batches
(the runner's), and they advance round-robin, one step each per round, so that all of
them share the machine load of the moment. A run stops when its training loss (mean
of its last 10 mini-batch losses) reaches the lowest of the targets (``--target`` and
``--report-targets``), or after ``--time-limit`` seconds of its own training time
(evaluation is not run); every target is reported from the same curves.

"Paired" time to a target is the steps to it times the run's mean step time over
the first rounds in which every run was still active, so all saw the same load (raw
times of a run that stopped early and one that went on later are not comparable on a
shared machine).

"Tuned" means the fastest grid point to the target. Three K-FAC variants check what
the amortized defaults cost in progress per step: statistics every step on the whole
batch (instead of every 2 steps on 1/8 of it), the quadratic model's Fisher products
on the whole batch (instead of 1/8), and inverses every 20 steps (instead of 5).
Usage::

    OMP_NUM_THREADS=1 .venv/bin/natgrad bench time-to-target \
        [--batch 1000] [--target 250] [--time-limit 200] [--out runs/kfac_time_to_target] \
        [--figure docs/figures/kfac_time_to_target.png] [--json]

(``benchmarks/bench_kfac_time_to_target.py`` runs the same.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from natgrad.bench.registry import Benchmark, register_benchmark
from natgrad.bench.timing import check_device, default_device
from natgrad.train.harness import SMOOTHING, Curve, CurveRun, run_interleaved

WORKLOAD = "fmnist_autoencoder"


@dataclass(frozen=True)
class RunSpec:
    """One run: a label, the registry optimizer, its hyperparameters, grid point or variant."""

    label: str
    optimizer: str
    hyperparameters: dict
    variant: bool = False


def grid(args: argparse.Namespace) -> list[RunSpec]:
    """Every run of the benchmark: the three grids, then the K-FAC variants."""
    runs = [RunSpec(f"adam lr={lr:g}", "adam", {"lr": lr}) for lr in args.adam_lrs]
    runs += [
        RunSpec(f"momentum lr={lr:g}", "momentum", {"lr": lr, "momentum": 0.9})
        for lr in args.momentum_lrs
    ]
    runs += [RunSpec(f"kfac (fixed lr) C={c:g}", "kfac", {"kl_clip": c}) for c in args.kl_clips]
    runs += [
        RunSpec(f"kfac_adaptive damping0={d:g}", "kfac_adaptive", {"damping": d})
        for d in args.dampings
    ]
    variants = {
        "statistics every step on whole batch": {"stat_fraction": 1.0, "stat_every": 1},
        "model on whole batch": {"model_fraction": 1.0},
        "inverses every 20 steps": {"inv_every": 20},
    }
    for name, extra in variants.items() if args.variant_damping > 0 else ():
        hparams = {"damping": args.variant_damping, **extra}
        label = f"kfac_adaptive damping0={args.variant_damping:g}, {name}"
        runs.append(RunSpec(label, "kfac_adaptive", hparams, True))
    return runs


def step_times(curve: Curve) -> list[float]:
    return [b - a for a, b in zip([0.0, *curve.wall_times[:-1]], curve.wall_times, strict=True)]


def summarize(spec: RunSpec, curve: Curve, target: float, window: int) -> dict:
    """Raw time to target, and a paired one: steps to target times the median step time
    over the first ``window`` rounds, when every run was still active (same load)."""
    steps = len(curve.wall_times)
    times = step_times(curve)
    # the mean, not the median: periodic work (inverses, the damping rule) counts
    paired_step = statistics.fmean(times[:window]) if times[:window] else None
    steps_to = curve.steps_to(target)
    return {
        "label": spec.label,
        "variant": spec.variant,
        "optimizer": curve.optimizer,
        "hyperparameters": curve.hyperparameters,
        "status": curve.status,
        "steps_run": steps,
        "seconds_to_target": curve.time_to(target),
        "steps_to_target": steps_to,
        "median_step_ms": 1e3 * statistics.median(times) if times else None,
        "paired_step_ms": None if paired_step is None else 1e3 * paired_step,
        "paired_seconds_to_target": None
        if steps_to is None or paired_step is None
        else steps_to * paired_step,
        "final_smoothed_loss": curve.smoothed()[-1] if curve.losses else None,
    }


def best(records: list[dict], optimizer: str) -> dict | None:
    """The grid point of ``optimizer`` (variants excluded) that reaches the target first."""
    reached = [
        r
        for r in records
        if r["optimizer"] == optimizer and r["seconds_to_target"] is not None and not r["variant"]
    ]
    return min(reached, key=lambda r: r["seconds_to_target"]) if reached else None


def plot(curves: dict[str, Curve], records: list[dict], target: float, path: Path) -> None:
    """Smoothed training loss against time and steps; the winners bold, variants dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "adam": "tab:green",
        "momentum": "tab:blue",
        "kfac": "tab:orange",
        "kfac_adaptive": "tab:red",
    }
    winners = {r["label"] for r in (best(records, n) for n in colors) if r is not None}
    figure, (by_time, by_steps) = plt.subplots(1, 2, figsize=(13, 4.8))
    variants = {r["label"] for r in records if r["variant"]}
    for label, curve in curves.items():
        smoothed = curve.smoothed()
        if not smoothed:
            continue
        variant = label in variants
        style = dict(
            color=colors[curve.optimizer],
            alpha=1.0 if label in winners or variant else 0.3,
            linestyle=":" if variant else "-",
            linewidth=1.8 if label in winners else 1.0,
        )
        by_time.plot(curve.wall_times, smoothed, label=label, **style)
        by_steps.plot(range(1, len(smoothed) + 1), smoothed, label=label, **style)
    for axes, xlabel in ((by_time, "training wall-clock time (s)"), (by_steps, "step")):
        axes.axhline(target, color="0.5", linestyle="--", linewidth=1)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(f"training loss (mean of last {SMOOTHING} mini-batches)")
        axes.set_ylim(target * 0.9, 560)
    by_time.legend(fontsize=7)
    by_time.set_title(
        f"{WORKLOAD}, batch {curves[next(iter(curves))].batch_size}: to loss {target:g}"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=1000, help="batch size (default: %(default)s)")
    parser.add_argument(
        "--target", type=float, default=250.0, help="the figure's target (default: %(default)s)"
    )
    parser.add_argument(
        "--report-targets",
        type=float,
        nargs="*",
        default=[250.0, 240.0, 230.0],
        help="also reported from the same curves; runs stop at the lowest target "
        "(default: %(default)s)",
    )
    grids = {
        "--time-limit": (float, 300.0, "seconds of training per run"),
        "--max-steps": (int, 2000, "steps per run"),
    }
    for option, (kind, default, text) in grids.items():
        parser.add_argument(
            option, type=kind, default=default, help=f"{text} (default: %(default)s)"
        )
    lists = {
        "--adam-lrs": ([1e-3, 2e-3, 4e-3], "Adam learning rates"),
        "--momentum-lrs": ([3e-3, 1e-2], "Momentum (0.9) learning rates"),
        "--kl-clips": ([1e-3], "KL clips of the fixed-lr kfac"),
        "--dampings": ([0.03, 0.1, 1.0], "initial dampings of kfac_adaptive"),
    }
    for option, (default, text) in lists.items():
        parser.add_argument(
            option, type=float, nargs="*", default=default, help=f"{text} (default: %(default)s)"
        )
    parser.add_argument(
        "--variant-damping",
        type=float,
        default=0.1,
        help="damping of the K-FAC variants, 0 leaves them out (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/kfac_time_to_target"),
        help="results folder (default: %(default)s)",
    )
    parser.add_argument(
        "--reanalyze",
        type=Path,
        help="recompute the tables and figure from the curves of an earlier results.json "
        "(default: run the grid)",
    )
    parser.add_argument(
        "--figure", type=Path, help="figure path (default: OUT/kfac_time_to_target.png)"
    )
    parser.add_argument(
        "--device",
        default=default_device(),
        help="cpu or cuda (default: %(default)s, cuda when present)",
    )


def speedups(records: list[dict]) -> dict:
    """Best grid point per optimizer; K-FAC's speedup over the best first-order one,
    raw and paired (variants excluded)."""
    names = ("adam", "momentum", "kfac", "kfac_adaptive")
    winners = {name: best(records, name) for name in names}

    def fastest(name: str, key: str) -> float | None:
        values = [
            r[key]
            for r in records
            if r["optimizer"] == name and r[key] is not None and not r["variant"]
        ]
        return min(values, default=None)

    result: dict = {"winners": winners}
    for key, label in (("seconds_to_target", "raw"), ("paired_seconds_to_target", "paired")):
        first_order = [v for n in ("adam", "momentum") if (v := fastest(n, key)) is not None]
        kfac = [v for n in ("kfac", "kfac_adaptive") if (v := fastest(n, key)) is not None]
        result[f"{label}_speedup"] = min(first_order) / min(kfac) if first_order and kfac else None
    return result


def print_records(records: list[dict], target: float) -> None:
    print(f"--- target {target:g}")
    for r in records:
        print(
            f"{r['label']:44s} {r['status']:9s} steps {r['steps_run']:4d}  "
            f"to target: {r['seconds_to_target'] or float('nan'):7.1f} s "
            f"{r['steps_to_target'] or 0:4d} steps  median step {r['median_step_ms']:6.0f} ms  "
            f"paired: step {r['paired_step_ms'] or float('nan'):6.0f} ms, to target "
            f"{r['paired_seconds_to_target'] or float('nan'):6.1f} s"
        )


def run_all(specs: list[RunSpec], args: argparse.Namespace, stop_at: float) -> dict[str, Curve]:
    """Every run of the grid, round-robin, until the lowest target or the time limit."""
    runs = {
        spec.label: CurveRun(
            WORKLOAD,
            spec.optimizer,
            spec.hyperparameters,
            args.batch,
            args.max_steps,
            device=str(args.device),
        )
        for spec in specs
    }
    run_interleaved(list(runs.values()), time_limit=args.time_limit, target=stop_at)
    return {label: run.curve for label, run in runs.items()}


def load_curves(specs: list[RunSpec], args: argparse.Namespace, path: Path) -> dict[str, Curve]:
    """The curves stored in an earlier results.json, for the runs of this grid."""
    stored = json.loads(path.read_text())
    statuses = {
        record["label"]: record["status"]
        for by_target in stored["targets"].values()
        for record in by_target["runs"]
    }
    curves = {}
    for spec in specs:
        if spec.label not in stored["curves"]:
            raise ValueError(f"{path} has no run {spec.label!r}; use the same grid arguments")
        data = stored["curves"][spec.label]
        curves[spec.label] = Curve(
            spec.optimizer,
            dict(spec.hyperparameters),
            args.batch,
            losses=list(data["losses"]),
            wall_times=list(data["wall_times"]),
            status=statuses.get(spec.label, "completed"),
        )
    return curves


def run(args: argparse.Namespace) -> dict:
    """Run (or reanalyze) the grid; results.json and the figure go to ``--out``."""
    args.device = check_device(args.device)
    if args.figure is None:
        args.figure = args.out / "kfac_time_to_target.png"
    log = _quiet if getattr(args, "json", False) else print
    targets = sorted(set(args.report_targets) | {args.target}, reverse=True)
    log(
        f"threads={torch.get_num_threads()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
        f"load average={os.getloadavg()[0]:.1f} batch={args.batch} targets={targets}"
    )
    specs = grid(args)
    started = time.perf_counter()
    if args.reanalyze is not None:
        curves = load_curves(specs, args, args.reanalyze)
    else:
        curves = run_all(specs, args, stop_at=min(targets))
    window = min(len(curve.wall_times) for curve in curves.values())
    by_target = {}
    for target in targets:
        records = [summarize(spec, curves[spec.label], target, window) for spec in specs]
        if log is print:
            print_records(records, target)
        summary = speedups(records)
        log(
            f"K-FAC speedup over the best first-order run to {target:g}: "
            f"raw {summary['raw_speedup']}, paired {summary['paired_speedup']}"
        )
        by_target[str(target)] = {"runs": records, **summary}
    log(
        f"paired window {window} rounds; total benchmark time "
        f"{time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "paired_window": window,
        "targets": by_target,
        "load_average_end": os.getloadavg()[0],
        "curves": {
            label: {"losses": c.losses, "wall_times": c.wall_times} for label, c in curves.items()
        },
    }
    (args.out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    plot(curves, by_target[str(args.target)]["runs"], args.target, args.figure)
    return {key: value for key, value in payload.items() if key != "curves"}


def _quiet(*_args, **_kwargs) -> None:
    return None


def main(argv: list[str] | None = None) -> None:
    """The script form (``python -m natgrad.bench.time_to_target``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


register_benchmark(Benchmark("time-to-target", __doc__.splitlines()[0], add_arguments, run))

if __name__ == "__main__":
    main()
