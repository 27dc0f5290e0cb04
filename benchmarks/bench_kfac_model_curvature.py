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

import torch

from natgrad.bench.interleaved import add_race_arguments, race_from_arguments
from natgrad.train.harness import CurveRun
from natgrad.workloads import get_workload

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_race_arguments(parser, "fmnist_vit", steps=600, eval_every=50, damping=0.1, adam_lr=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = build_runs(args)
    print(f"{args.workload}: adam lr {args.adam_lr}, kfac_adaptive lambda_0 {args.damping}")
    race_from_arguments(runs, args)


if __name__ == "__main__":
    main()
