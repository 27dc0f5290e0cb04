"""The `kfac` preset with its output factors whole against split into diagonal blocks
(``output_blocks``): the step time and the validation error along the run, with Adam
beside them.

Runs are interleaved step by step (same initial weights and batches, one thread), so a
change in the machine's load hits each alike; the validation error (first
``--eval-examples`` of the validation split) is measured outside the timed steps. The
figures are in docs/RESULTS.md ("Output factors in blocks"). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_output_blocks.py \
        [--workload fmnist_cnn] [--blocks off auto 256 128] [--steps 300]
"""

from __future__ import annotations

import argparse

import torch

from natgrad.bench.interleaved import add_race_arguments, race_from_arguments
from natgrad.train.harness import CurveRun
from natgrad.workloads import get_workload


def build_runs(args: argparse.Namespace) -> dict[str, CurveRun]:
    batch = get_workload(args.workload).batch_size
    runs = {"adam": CurveRun(args.workload, "adam", {"lr": args.adam_lr}, batch, args.steps)}
    for blocks in args.blocks:
        hyperparameters = {"output_blocks": blocks, "damping": args.damping}
        runs[f"kfac {blocks}"] = CurveRun(args.workload, "kfac", hyperparameters, batch, args.steps)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_race_arguments(parser, "fmnist_cnn", steps=300, eval_every=25, damping=3e-3, adam_lr=4e-3)
    parser.add_argument("--blocks", nargs="+", default=["off", "auto", "256", "128"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = build_runs(args)
    print(f"{args.workload}: adam lr {args.adam_lr}, kfac damping {args.damping}")
    race_from_arguments(runs, args)
    for name, run in runs.items():
        layers = getattr(run.optimizer, "layers", [])
        print(f"{name}: output blocks per layer {[layer.output_blocks for layer in layers]}")


if __name__ == "__main__":
    main()
