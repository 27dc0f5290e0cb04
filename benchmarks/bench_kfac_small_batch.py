"""kfac_adaptive at a small batch with and without the quadratic model's example floor.

At batch 128 the registry's ``model_fraction`` of 1/8 leaves 16 examples for the
quadratic model's Fisher products; ``model_min_examples`` (default 128) raises that to
the whole batch. Each workload trains ``kfac_adaptive`` (lambda_0 = 1, registry
defaults otherwise) with the floor at 1 (no floor) and at its default, next to Adam
(lr 1e-3), from the same seeded initialization and batches, and prints each run's
status (a non-finite or exploding loss ends it as "diverged"), its length and its
final training loss (mean of the last 10 mini-batch losses). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_small_batch.py \
        [--workloads fmnist_mlp mnist1d_mlp] [--batch 128] [--steps 300]
"""

from __future__ import annotations

import argparse

import torch

from natgrad.train.harness import CurveRun, run_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["fmnist_mlp", "mnist1d_mlp"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = [
        ("kfac_adaptive, no floor", "kfac_adaptive", {"damping": 1.0, "model_min_examples": 1}),
        ("kfac_adaptive, floor 128", "kfac_adaptive", {"damping": 1.0}),
        ("adam lr 1e-3", "adam", {"lr": 1e-3}),
    ]
    for workload in args.workloads:
        runs = [
            CurveRun(workload, optimizer, hparams, args.batch, args.steps)
            for _, optimizer, hparams in settings
        ]
        for (label, _, _), curve in zip(settings, run_interleaved(runs), strict=True):
            print(
                f"{workload:12s} {label:26s} {curve.status:9s} steps {len(curve.losses):4d}  "
                f"final loss {curve.final_loss():.4f}"
            )


if __name__ == "__main__":
    main()
