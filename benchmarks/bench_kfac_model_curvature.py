"""kfac_adaptive with the quadratic model's exact Fisher products against products
through each layer's Kronecker factors (``model_curvature``), with Adam beside them:
the step time and the validation error along the run.

Runs are interleaved step by step (same initial weights and batches, one thread); the
validation error (first ``--eval-examples`` of the validation split) is measured outside
the timed steps. The figures are in docs/RESULTS.md ("The quadratic model through the
Kronecker factors"). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_model_curvature.py \\
        [--workload fmnist_vit] [--damping 0.1] [--steps 600]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from natgrad.bench.time_to_target import step_times
from natgrad.train.harness import CurveRun
from natgrad.workloads import get_workload

WORKLOADS = ("fmnist_cnn", "fmnist_vit", "fmnist_autoencoder")
CURVATURES = ("exact", "kronecker")


def build_runs(args: argparse.Namespace) -> dict[str, CurveRun]:
    batch = get_workload(args.workload).batch_size
    runs = {"adam": CurveRun(args.workload, "adam", {"lr": args.adam_lr}, batch, args.steps)}
    for curvature in CURVATURES:
        hyperparameters = {"damping": args.damping, "model_curvature": curvature}
        runs[curvature] = CurveRun(
            args.workload, "kfac_adaptive", hyperparameters, batch, args.steps
        )
    return runs


def evaluation_cells(runs: dict[str, CurveRun], args: argparse.Namespace) -> str:
    cells = []
    for name, run in runs.items():
        if args.workload == "fmnist_autoencoder":
            metric = f"loss {run.curve.smoothed()[-1]:.2f}"
        else:
            metric = f"err {run.session.evaluate('val', args.eval_examples)['error']:.4f}"
        cells.append(f"{name}: {metric} t={run.curve.wall_times[-1]:.1f}s")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="fmnist_vit", choices=WORKLOADS)
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--adam-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = build_runs(args)
    print(f"{args.workload}: adam lr {args.adam_lr}, kfac_adaptive lambda_0 {args.damping}")
    for step in range(1, args.steps + 1):
        for run in runs.values():
            if not run.done:
                run.advance()
        if step % args.eval_every == 0:
            print(f"step {step}: " + evaluation_cells(runs, args), flush=True)
    for name, run in runs.items():
        times = step_times(run.curve.wall_times)
        print(
            f"{name}: median step {1e3 * statistics.median(times):.1f} ms, mean "
            f"{1e3 * statistics.fmean(times):.1f} ms, status {run.curve.status}"
        )


if __name__ == "__main__":
    main()
