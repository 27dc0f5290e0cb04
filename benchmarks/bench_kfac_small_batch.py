"""kfac_adaptive at a small batch with and without the quadratic model's example floor.

At batch 128 the registry's ``model_fraction`` of 1/8 leaves 16 examples for the
quadratic model's Fisher products; ``model_min_examples`` (default 128) raises that to
the whole batch. Each workload trains ``kfac_adaptive`` (lambda_0 = 1, registry
defaults otherwise) with the floor at 1 (no floor) and at its default, next to Adam
(lr 1e-3), from the same seeded initialization and batches, and prints each run's
status (a non-finite or exploding loss ends it as "diverged"), its length, its
final training loss (mean of the last 10 mini-batch losses) and its median step time
(the runs alternate step by step, so they see the same load). ``--floors`` gives the
floors to compare (1 = none). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_small_batch.py \
        [--workloads fmnist_mlp mnist1d_mlp] [--batch 128] [--steps 300] [--floors 1 128]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from natgrad.train.harness import CurveRun, run_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["fmnist_mlp", "mnist1d_mlp"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--floors", type=int, nargs="+", default=[1, 128])
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = [
        (
            "kfac_adaptive, no floor" if floor == 1 else f"kfac_adaptive, floor {floor}",
            "kfac_adaptive",
            {"damping": 1.0, "model_min_examples": floor},
        )
        for floor in args.floors
    ]
    settings.append(("adam lr 1e-3", "adam", {"lr": 1e-3}))
    for workload in args.workloads:
        runs = [
            CurveRun(workload, optimizer, hparams, args.batch, args.steps)
            for _, optimizer, hparams in settings
        ]
        for (label, _, _), curve in zip(settings, run_interleaved(runs), strict=True):
            starts = [0.0, *curve.wall_times[:-1]]
            times = [b - a for a, b in zip(starts, curve.wall_times, strict=True)]
            step_ms = 1e3 * statistics.median(times) if times else float("nan")
            print(
                f"{workload:12s} {label:26s} {curve.status:9s} steps {len(curve.losses):4d}  "
                f"final loss {curve.final_loss():.4f}  step {step_ms:6.1f} ms"
            )


if __name__ == "__main__":
    main()
