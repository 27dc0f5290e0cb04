"""Steps and seconds to fmnist_vit's target validation error: K-FAC against tuned Adam.

K-FAC is ``kfac_adaptive`` (quadratic-model step, Levenberg-Marquardt damping) over a
small grid of initial dampings, once with ``sharing=expand`` (tokens are extra rows of
the batch) and once with ``sharing=reduce`` (output gradients summed and inputs
averaged over the 16 tokens), and with ``--fixed-kfac`` the fixed-lr ``kfac`` preset; Adam is
tuned over learning rates. All runs start from the same seeded initialization and see
the same batches (the runner's), and advance round-robin, one step each per round, so
all share the load of the moment. Every ``--eval-every`` steps the validation error is
measured (not timed); a run stops at the first evaluation at or below the target, or
after ``--max-steps``.

Seconds are training time only. "Paired" seconds are the steps to the target times the
run's mean step time over the rounds in which every run was still active (the same
machine load for all). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vit_time_to_target.py \
        [--target 0.16] [--max-steps 2000] [--out runs/vit_time_to_target]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from natgrad.train.harness import CurveRun
from natgrad.train.runner import evaluate

WORKLOAD = "fmnist_vit"


def grid(args: argparse.Namespace) -> dict[str, tuple[str, dict]]:
    """label -> (registry optimizer, hyperparameters)."""
    runs = {f"adam lr={lr:g}": ("adam", {"lr": lr}) for lr in args.adam_lrs}
    for sharing in ("expand", "reduce"):
        for damping in args.dampings:
            label = f"kfac_adaptive {sharing} damping0={damping:g}"
            runs[label] = ("kfac_adaptive", {"damping": damping, "sharing": sharing})
    if args.fixed_kfac:
        runs["kfac (fixed lr) expand"] = ("kfac", {})
    return runs


class EvaluatedRun:
    """A CurveRun whose validation error is measured every ``every`` steps (untimed)."""

    def __init__(self, optimizer: str, hyperparameters: dict, args: argparse.Namespace) -> None:
        self.run = CurveRun(WORKLOAD, optimizer, hyperparameters, args.batch, args.max_steps)
        self.every, self.target = args.eval_every, args.target
        self.errors: list[tuple[int, float]] = []

    @property
    def reached(self) -> int | None:
        return next((step for step, error in self.errors if error <= self.target), None)

    @property
    def finished(self) -> bool:
        return self.run.done or self.reached is not None

    def advance(self) -> None:
        self.run.advance()
        step = len(self.run.curve.losses)
        if step % self.every == 0 and self.run.curve.status == "completed":
            with torch.no_grad():
                val = self.run.data.val
                metrics = evaluate(self.run.model, self.run.workload, val.inputs, val.targets)
            self.errors.append((step, metrics["error"]))


def run_all(runs: dict[str, EvaluatedRun]) -> int:
    """Round-robin until every run is finished; the number of rounds all runs shared."""
    active, shared = list(runs.values()), 0
    while active:
        for run in active:
            run.advance()
        if len(active) == len(runs):
            shared += 1
        active = [run for run in active if not run.finished]
    return shared


def summary(label: str, run: EvaluatedRun, shared: int) -> dict:
    curve = run.run.curve
    times = [b - a for a, b in zip([0.0, *curve.wall_times[:-1]], curve.wall_times, strict=True)]
    paired_step = statistics.fmean(times[:shared]) if times[:shared] else None
    steps = run.reached
    return {
        "label": label,
        "optimizer": curve.optimizer,
        "hyperparameters": curve.hyperparameters,
        "status": curve.status,
        "steps_to_target": steps,
        "seconds_to_target": None if steps is None else curve.wall_times[steps - 1],
        "paired_seconds_to_target": None if steps is None else steps * paired_step,
        "median_step_ms": 1e3 * statistics.median(times) if times else None,
        "paired_step_ms": None if paired_step is None else 1e3 * paired_step,
        "best_val_error": min((e for _, e in run.errors), default=None),
        "val_errors": run.errors,
    }


def table(records: list[dict]) -> str:
    lines = [
        "| run | steps to target | s to target | paired s | step ms (median) | best val error |",
        "|---|---|---|---|---|---|",
    ]

    def show(value, fmt):
        return "not reached" if value is None else format(value, fmt)

    for r in records:
        lines.append(
            f"| {r['label']} | {show(r['steps_to_target'], 'd')} | "
            f"{show(r['seconds_to_target'], '.1f')} | {show(r['paired_seconds_to_target'], '.1f')}"
            f" | {r['median_step_ms']:.1f} | {r['best_val_error']:.4f} |"
        )
    return "\n".join(lines)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--target", type=float, default=0.16, help="validation error target")
    parser.add_argument("--max-steps", type=int, default=2000, help="step budget per run")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    parser.add_argument("--adam-lrs", type=float, nargs="*", default=[1e-3, 2e-3, 4e-3])
    parser.add_argument("--dampings", type=float, nargs="*", default=[0.03, 0.1, 1.0])
    parser.add_argument("--fixed-kfac", action="store_true", help="also the fixed-lr kfac preset")
    parser.add_argument("--out", type=Path, default=Path("runs/vit_time_to_target"))
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(1)
    runs = {
        label: EvaluatedRun(optimizer, hparams, args)
        for label, (optimizer, hparams) in grid(args).items()
    }
    shared = run_all(runs)
    records = [summary(label, run, shared) for label, run in runs.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(records, indent=2) + "\n")
    print(table(records))
    print(f"shared rounds: {shared}; results in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
