"""Runner overhead: `natgrad.train.train` vs a bare forward/backward/step loop.

Both use the same workload model, data (in-memory tensors), batch size, optimizer and
number of steps; the runner also samples batches by epoch permutation, records the loss,
evaluates at the start and the end, and writes its run folder. Trials alternate between
the two and the script reports medians and their ratio.

    .venv/bin/python benchmarks/bench_runner_overhead.py --workload fmnist_mlp --steps 1000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from natgrad.optim import Momentum
from natgrad.train import RunConfig, train
from natgrad.train.runner import load_workload_data
from natgrad.workloads import get_workload


def bare_loop(workload_name: str, steps: int, batch_size: int) -> float:
    workload = get_workload(workload_name)
    data = load_workload_data(workload, None, "cpu")
    torch.manual_seed(0)
    model = workload.build_model()
    optimizer = Momentum(model.parameters(), lr=0.01, momentum=0.9)
    x, y = data.train.inputs, data.train.targets
    started = time.perf_counter()
    for _step in range(steps):
        index = torch.randint(0, x.shape[0], (batch_size,))
        optimizer.zero_grad(set_to_none=True)
        loss = workload.loss(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def runner_loop(workload_name: str, steps: int, batch_size: int) -> tuple[float, float]:
    """Total seconds of ``train`` and the seconds its loop spent in training steps."""
    config = RunConfig(
        workload_name,
        "momentum",
        steps=steps,
        batch_size=batch_size,
        eval_every=steps,
        hyperparameters={"lr": 0.01, "momentum": 0.9},
        evaluate_test=False,
    )
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = train(config, folder + "/run")
        return time.perf_counter() - started, result.final["wall_time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", default="fmnist_mlp")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    runner_loop(args.workload, 20, args.batch_size)  # load data, warm up
    bare, run, loop = [], [], []
    for _ in range(args.trials):
        bare.append(bare_loop(args.workload, args.steps, args.batch_size))
        total, in_loop = runner_loop(args.workload, args.steps, args.batch_size)
        run.append(total)
        loop.append(in_loop)
    bare_median, run_median = statistics.median(bare), statistics.median(run)
    loop_median = statistics.median(loop)
    print(
        f"workload={args.workload} steps={args.steps} batch={args.batch_size} "
        f"trials={args.trials} threads={torch.get_num_threads()}"
    )
    print(f"bare loop   median {bare_median:.3f} s  ({1e3 * bare_median / args.steps:.3f} ms/step)")
    print(f"runner      median {run_median:.3f} s  ({1e3 * run_median / args.steps:.3f} ms/step)")
    print(f"  of which training steps  {loop_median:.3f} s")
    print(
        f"overhead, whole run (2 evaluations, files)  {100 * (run_median / bare_median - 1):+.1f}%"
    )
    print(
        f"overhead, training steps only               {100 * (loop_median / bare_median - 1):+.1f}%"
    )


if __name__ == "__main__":
    main()
