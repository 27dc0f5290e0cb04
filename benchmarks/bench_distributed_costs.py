"""Measured figures that calibrate docs/DISTRIBUTED.md's cost model, on this machine.

1. Inversion: seconds (best of 3) of natgrad's damped Cholesky inverse of a d x d SPD
   factor for several d (one thread), and the fitted constant c in t = c d^3.
2. Collectives: gloo all-reduce of n float32 values between ``--ranks`` local
   processes for several n (best and median of 15); alpha and B of
   t = alpha + 2 (N - 1) / N * 4 n / B (a ring all-reduce's volume) fitted to the best.
3. Data-parallel K-FAC: the mean step time of fmnist_autoencoder's model with the
   ``kfac`` preset (``inv_every=5``) on one process with the whole batch and on
   ``--ranks`` gloo processes with a share each, and the bytes the coordinator moves
   per step (gradients every step, factors every ``stat_every``, inverses every
   ``inv_every``), to compare with the model's prediction.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_distributed_costs.py [--ranks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from natgrad.curvature.likelihoods import get_likelihood
from natgrad.optim.kfac import KFAC
from natgrad.optim.kfac_config import preset_options
from natgrad.precondition.factor_inverse import symmetric_inverse
from natgrad.workloads.models import deep_autoencoder

SIZES = (256, 512, 1024, 2048)
COUNTS = (10_000, 100_000, 1_000_000, 4_000_000)


def inversion_times(repeats: int = 3) -> dict[int, float]:
    times = {}
    for d in SIZES:
        rows = torch.randn(2 * d, d)
        factor = rows.T @ rows / (2 * d) + 1e-3 * torch.eye(d)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            symmetric_inverse(factor)
            runs.append(time.perf_counter() - start)
        times[d] = min(runs)
    return times


def fit_cubic(times: dict[int, float]) -> float:
    """c minimizing the relative error of c d^3 over the largest two sizes."""
    return statistics.fmean(t / d**3 for d, t in list(times.items())[-2:])


def kfac_steps(inputs: torch.Tensor, steps: int) -> tuple[float, KFAC]:
    torch.manual_seed(0)
    model = deep_autoencoder()
    options = {**preset_options("kfac"), "inv_every": 5}
    options.pop("weight_decay")
    torch.manual_seed(1)
    opt = KFAC(model, likelihood="bernoulli", weight_decay=1e-5, **options)
    likelihood = get_likelihood("bernoulli")

    def closure():
        outputs = model(inputs)
        return likelihood.loss(outputs, inputs), outputs

    for _ in range(2):
        opt.step(closure)
    opt.steps = 0
    start = time.perf_counter()
    for _ in range(steps):
        opt.step(closure)
    return (time.perf_counter() - start) / steps, opt


def rank_main(rank: int, world: int, init_file: str, out_file: str, batch: int, steps: int):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=timedelta(seconds=600),
    )  # fmt: skip
    allreduce = {}
    for count in COUNTS:
        buffer = torch.randn(count)
        dist.all_reduce(buffer)
        runs = []
        for _ in range(15):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(buffer)
            runs.append(time.perf_counter() - start)
        allreduce[count] = (min(runs), statistics.median(runs))
    from natgrad.data import load_splits

    images = load_splits("fashion-mnist").train_x[:batch].flatten(1).float()
    share = batch // world
    step_s, _ = kfac_steps(images[rank * share : (rank + 1) * share], steps)
    if rank == 0:
        with open(out_file, "w") as stream:
            json.dump({"allreduce_s": allreduce, "step_s": step_s}, stream)
    dist.destroy_process_group()


def fit_collective(times: dict[int, float], world: int) -> tuple[float, float]:
    """(alpha, B) of t = alpha + 2 (N - 1) / N * 4 n / B, least squares on the sizes."""
    xs = [2 * (world - 1) / world * 4 * n for n in times]
    ys = list(times.values())
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - x_mean) ** 2 for x in xs
    )
    return max(y_mean - slope * x_mean, 0.0), 1.0 / slope


def traffic(opt: KFAC) -> dict[str, int]:
    """Bytes per occurrence: gradients, factor triangles, Cholesky inverses (float32)."""
    params = sum(p.numel() for p in opt.param_groups[0]["params"])
    sizes = [(p.A.shape[0], p.G.shape[0]) for p in opt.preconditioners]
    return {
        "gradients": 4 * params,
        "factors": 4 * sum(a * (a + 1) // 2 + g * (g + 1) // 2 for a, g in sizes),
        "inverses": 4 * sum(a * a + g * g for a, g in sizes),
        "inversion_flops_d3": sum(a**3 + g**3 for a, g in sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    inversion = inversion_times()
    from natgrad.data import load_splits

    images = load_splits("fashion-mnist").train_x[: args.batch].flatten(1).float()
    one_process_s, opt = kfac_steps(images, args.steps)
    with tempfile.TemporaryDirectory() as folder:
        out_file = os.path.join(folder, "ranks.json")
        mp.start_processes(
            rank_main,
            args=(args.ranks, os.path.join(folder, "rendezvous"), out_file, args.batch, args.steps),
            nprocs=args.ranks,
            start_method="fork",
        )
        with open(out_file) as stream:
            ranks = json.load(stream)
    collective_times = {int(k): v for k, v in ranks["allreduce_s"].items()}
    alpha, bandwidth = fit_collective({k: v[0] for k, v in collective_times.items()}, args.ranks)
    report = {
        "load_average": [load_start, os.getloadavg()[0]],
        "inversion_s": inversion,
        "inversion_c_s_per_d3": fit_cubic(inversion),
        "allreduce_s_min_median": collective_times,
        "allreduce_alpha_s": alpha,
        "allreduce_bandwidth_bytes_per_s": bandwidth,
        "kfac_step_s": {"1 process": one_process_s, f"{args.ranks} ranks": ranks["step_s"]},
        "kfac_traffic_bytes": traffic(opt),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
