"""Training runs interleaved step by step, with the validation error printed along the way.

What the ablation scripts in benchmarks/ share (``bench_kfac_model_every.py``,
``bench_kfac_output_blocks.py``, ``bench_kfac_model_curvature.py``): every run takes one
step in turn from the same initial weights and batches, so a change in the machine's load
hits each alike; every ``eval_every`` steps each run's metric is printed (the mean of
the recent training losses on fmnist_autoencoder, else the validation error on the
first ``eval_examples`` validation images), measured outside the timed steps; at the
end each run's median and mean step time and status.
"""

from __future__ import annotations

import argparse
import statistics

from natgrad.bench.time_to_target import step_times
from natgrad.train.harness import CurveRun

LOSS_WORKLOADS = ("fmnist_autoencoder",)
WORKLOADS = ("fmnist_cnn", "fmnist_vit", "fmnist_autoencoder")


def add_race_arguments(
    parser: argparse.ArgumentParser,
    workload: str,
    steps: int,
    eval_every: int,
    damping: float,
    adam_lr: float | None = None,
) -> None:
    """--workload, --steps, --eval-every, --eval-examples, K-FAC's --damping and, with a
    default, Adam's --adam-lr."""
    parser.add_argument("--workload", default=workload, choices=WORKLOADS)
    parser.add_argument("--damping", type=float, default=damping)
    if adam_lr is not None:
        parser.add_argument("--adam-lr", type=float, default=adam_lr)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--eval-every", type=int, default=eval_every)
    parser.add_argument("--eval-examples", type=int, default=5000)


def race_from_arguments(runs: dict[str, CurveRun], args: argparse.Namespace) -> None:
    """:func:`race_and_print` with the options of :func:`add_race_arguments`."""
    race_and_print(runs, args.workload, args.steps, args.eval_every, args.eval_examples)


def metric_cell(name: str, run: CurveRun, workload: str, eval_examples: int) -> str:
    """``name: err 0.1234 t=12.3s`` (or ``loss``) for one run at its latest step."""
    if workload in LOSS_WORKLOADS:
        metric = f"loss {run.curve.smoothed()[-1]:.2f}"
    else:
        metric = f"err {run.session.evaluate('val', eval_examples)['error']:.4f}"
    return f"{name}: {metric} t={run.curve.wall_times[-1]:.1f}s"


def race_and_print(
    runs: dict[str, CurveRun], workload: str, steps: int, eval_every: int, eval_examples: int
) -> None:
    """Step every run in turn for ``steps`` steps, printing the metrics every
    ``eval_every`` steps and each run's step times at the end."""
    for step in range(1, steps + 1):
        for run in runs.values():
            if not run.done:
                run.advance()
        if step % eval_every == 0:
            cells = [metric_cell(name, run, workload, eval_examples) for name, run in runs.items()]
            print(f"step {step}: " + " | ".join(cells), flush=True)
    for name, run in runs.items():
        times = step_times(run.curve.wall_times)
        print(
            f"{name}: median step {1e3 * statistics.median(times):.1f} ms, mean "
            f"{1e3 * statistics.fmean(times):.1f} ms, status {run.curve.status}"
        )


__all__ = ["race_and_print", "race_from_arguments", "add_race_arguments", "metric_cell"]
