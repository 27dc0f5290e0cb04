"""kfac_adaptive with the quadratic model every step against every k steps (alpha and mu
reused in between): the step time and the validation error along the run.

Runs are interleaved step by step (same initial weights and batches, one thread), so a
change in the machine's load hits each alike; the validation error (first
``--eval-examples`` of the validation split) is measured outside the timed steps. The
figures are in docs/RESULTS.md ("The quadratic model every k steps"). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_model_every.py \
        --workload fmnist_vit [--every 1 5] [--damping 0.1] [--steps 600]
"""

from __future__ import annotations

import argparse

import torch

from natgrad.bench.interleaved import add_race_arguments, race_from_arguments
from natgrad.train.harness import CurveRun
from natgrad.workloads import get_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_race_arguments(parser, "fmnist_vit", steps=600, eval_every=50, damping=0.1)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {
        every: CurveRun(
            args.workload,
            "kfac_adaptive",
            {"damping": args.damping, "model_every": every},
            get_workload(args.workload).batch_size,
            args.steps,
        )
        for every in args.every
    }
    print(f"{args.workload}, kfac_adaptive lambda0 {args.damping}, model_every {args.every}")
    named = {f"k={every}": run for every, run in runs.items()}
    race_from_arguments(named, args)


if __name__ == "__main__":
    main()
