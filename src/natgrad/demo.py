"""`natgrad demo`: a small optimizer comparison on embedded data, with its report.

It runs the comparison protocol of Choi et al. (2019) at a tiny scale: for each optimizer,
a few quasi-random trials in its restricted space (learning rate only) and in its full
space (every hyperparameter), the best trial of each re-run with fresh seeds and scored
once on the held-out test set. It prints the ranking per space and writes report.md,
report.html and the figures into the output folder. Nothing is downloaded: the default
workload uses scikit-learn's bundled digits.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from natgrad.optim import OPTIMIZERS
from natgrad.report.document import write_report
from natgrad.tune.compare import CompareConfig, run_compare

DEMO_OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam", "kfac")
DEFAULT_WORKLOAD = "digits_mlp"


def demo_optimizers() -> list[str]:
    """The demo's optimizers that this installation registers, in a fixed order."""
    return [name for name in DEMO_OPTIMIZERS if name in OPTIMIZERS]


def format_table(results: dict) -> str:
    """Ranking per space: optimizer, mean test value, its 95% interval, chosen lr."""
    metric = results["config"]["test_metric"]
    lines = [f"{'space':10s} {'rank':>4s}  {'optimizer':10s} {metric:>10s}  95% interval        lr"]
    for space in results["config"]["spaces"]:
        for entry in results["ranking"][space]:
            best = results["studies"][entry["optimizer"]][space]["best"]
            lr = best["hyperparameters"].get("lr", math.nan) if best else math.nan
            low, high = entry["interval"]
            lines.append(
                f"{space:10s} {entry['rank']:4d}  {entry['optimizer']:10s} {entry['mean']:10.4f}  "
                f"[{low:.4f}, {high:.4f}]  {lr:.3g}"
            )
    return "\n".join(lines)


def run_demo(
    out_dir: Path,
    workload: str | None = None,
    optimizers: Sequence[str] | None = None,
    trials: int = 8,
    steps: int = 300,
    seeds: int = 3,
) -> dict:
    """Compare ``optimizers`` on ``workload`` in both spaces; write the report into ``out_dir``.

    The demo's models are tiny, so it runs on one intra-op thread: on a 2-core machine
    that is faster than two (and far faster when other processes compete for the cores).
    """
    torch.set_num_threads(1)
    config = CompareConfig(
        workload=workload or DEFAULT_WORKLOAD,
        optimizers=list(optimizers or demo_optimizers()),
        spaces=["restricted", "full"],
        trials=trials,
        steps=steps,
        seeds=seeds,
        bootstrap=500,
    )
    results = run_compare(config, Path(out_dir))
    written = write_report(results, Path(out_dir))
    print(format_table(results))
    for message in results["warnings"]:
        print(f"warning: {message}")
    print(f"report: {written['markdown']} and {written['html']}")
    return results


def add_demo_parser(commands) -> None:
    """``natgrad demo [--out FOLDER] [--workload NAME]``."""
    parser = commands.add_parser("demo", help="a short comparison of optimizers, with a report")
    parser.add_argument(
        "--out", default="runs/demo", help="folder of the demo's report (default: runs/demo)"
    )
    parser.add_argument(
        "--workload", default=None, help=f"workload to compare on (default: {DEFAULT_WORKLOAD})"
    )
    parser.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    run_demo(Path(args.out), workload=args.workload)
    return 0
