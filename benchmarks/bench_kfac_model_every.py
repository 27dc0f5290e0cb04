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
import statistics

import torch

from natgrad.bench.time_to_target import step_times
from natgrad.train.harness import CurveRun
from natgrad.workloads import get_workload

WORKLOADS = ("fmnist_cnn", "fmnist_vit", "fmnist_autoencoder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="fmnist_vit", choices=WORKLOADS)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=5000)
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
    for step in range(1, args.steps + 1):
        for run in runs.values():
            if not run.done:
                run.advance()
        if step % args.eval_every == 0:
            cells = []
            for every, run in runs.items():
                metric = (
                    f"loss {run.curve.smoothed()[-1]:.2f}"
                    if args.workload == "fmnist_autoencoder"
                    else f"err {run.session.evaluate('val', args.eval_examples)['error']:.4f}"
                )
                cells.append(f"k={every}: {metric} t={run.curve.wall_times[-1]:.1f}s")
            print(f"step {step}: " + " | ".join(cells), flush=True)
    for every, run in runs.items():
        times = step_times(run.curve.wall_times)
        print(
            f"k={every}: mean step {1e3 * statistics.fmean(times):.1f} ms, "
            f"median {1e3 * statistics.median(times):.1f} ms, status {run.curve.status}"
        )


if __name__ == "__main__":
    main()
