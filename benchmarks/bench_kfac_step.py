"""Step time, cost breakdown and peak memory of natgrad.KFAC against heavy-ball Momentum.

The 784-1000-500-250-30-250-500-1000-784 tanh autoencoder (Martens & Grosse 2015) with
the Bernoulli likelihood, on real Fashion-MNIST images (the first ``--batch`` training
images; the timing does not depend on their values, but the statistics do). One timed
step is the whole update: forward, backward and optimizer step (K-FAC: its closure,
statistics when due, inverses when due, preconditioning, momentum). The optimizers
alternate step by step so that both see the same machine load; K-FAC's inverses come
every ``inv_every`` steps, so the amortized cost is the mean over a whole number of
periods. Several batch sizes are measured in one run.

Breakdown: in a second loop (K-FAC alone) every phase of the step is timed by wrapping
the optimizer's own functions: main forward/backward (the closure and loss.backward),
the statistics sub-batch forward, the sampled-target backward ("extra backward"), the
factor products A, G and their moving average ("statistics"), the decompositions
("inversion", amortized over the period), gradient matrices and G^-1 V A^-1
("preconditioning") and the step rule with the parameter update ("update").

Peak memory: each optimizer runs in its own fresh subprocess (``--memory-child``), and
the process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is
read once after building the model and a batch of the same shape (uniform noise, so
that loading the dataset does not set the high-water mark) and once after the steps; the difference
is what the steps added (activations, gradients, optimizer state, temporaries), the
second number is the whole process. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_step.py \
        [--batches 1000 4000] [--steps 40] [--breakdown] [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch import Tensor, nn

import natgrad.optim.kfac as kfac_module
from natgrad.curvature.likelihoods import get_likelihood
from natgrad.optim.first_order import Momentum
from natgrad.optim.kfac import KFAC
from natgrad.workloads.models import deep_autoencoder

WEIGHT_DECAY = 1e-5


def fashion_batch(batch: int) -> Tensor:
    """The first ``batch`` Fashion-MNIST training images as (batch, 784) in [0, 1]."""
    from natgrad.data import load_splits

    images = load_splits("fashion-mnist").train_x[:batch].flatten(1).float()
    if images.shape[0] < batch:
        raise ValueError(f"--batch {batch} exceeds the {images.shape[0]} training images")
    return images


def build_kfac(model: nn.Module, args: argparse.Namespace) -> KFAC:
    return KFAC(
        model,
        lr=1e-3,
        momentum=0.9,
        damping=3e-3,
        weight_decay=WEIGHT_DECAY,
        likelihood="bernoulli",
        fisher=args.fisher,
        stat_fraction=args.stat_fraction,
        stat_every=args.stat_every,
        inv_every=args.inv_every,
        inverse=args.inverse,
        kl_clip=1e-3,
    )


def step_functions(inputs: Tensor, args: argparse.Namespace) -> dict:
    """A step function for each optimizer, on identical copies of one seeded model."""
    likelihood = get_likelihood("bernoulli")
    torch.manual_seed(0)
    kfac_model = deep_autoencoder()
    sgd_model = deep_autoencoder()
    sgd_model.load_state_dict(kfac_model.state_dict())
    kfac = build_kfac(kfac_model, args)
    sgd = Momentum(sgd_model.parameters(), lr=1e-3, momentum=0.9, weight_decay=WEIGHT_DECAY)

    def kfac_step() -> None:
        def closure():
            outputs = kfac_model(inputs)
            return likelihood.loss(outputs, inputs), outputs

        kfac.step(closure)

    def sgd_step() -> None:
        sgd.zero_grad(set_to_none=True)
        likelihood.loss(sgd_model(inputs), inputs).backward()
        sgd.step()

    return {"kfac": kfac_step, "momentum": sgd_step, "optimizer": kfac}


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def alternating_times(inputs: Tensor, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per-step wall times of K-FAC and Momentum, stepped alternately."""
    steps = step_functions(inputs, args)
    for _ in range(args.warmup):
        steps["kfac"]()
        steps["momentum"]()
    steps["optimizer"].steps = 0  # the timed window starts a fresh inverse period
    times: dict[str, list[float]] = {"kfac": [], "momentum": []}
    for _ in range(args.steps):
        times["kfac"].append(timed(steps["kfac"]))
        times["momentum"].append(timed(steps["momentum"]))
    return times


class PhaseClock:
    """Accumulates wall time per phase name; nested phases are subtracted from their parent."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []

    @contextmanager
    def phase(self, name: str):
        self._stack.append([name, 0.0])
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            _, inner = self._stack.pop()
            self.totals[name] += elapsed - inner
            if self._stack:
                self._stack[-1][1] += elapsed

    def wrap(self, function, name: str):
        def wrapped(*args, **kwargs):
            with self.phase(name):
                return function(*args, **kwargs)

        return wrapped


@contextmanager
def instrumented(optimizer: KFAC, clock: PhaseClock):
    """Time the phases of ``optimizer``'s step by wrapping its functions (restored after)."""
    module_functions = {
        "output_gradients": "extra backward (sampled targets)",
        "layer_batch_factors": "statistics (A, G products)",
    }
    saved = {name: getattr(kfac_module, name) for name in module_functions}
    for name, phase in module_functions.items():
        setattr(kfac_module, name, clock.wrap(saved[name], phase))
    methods = {
        "_statistics_from_subbatch": "statistics sub-batch forward",
        "update_statistics": "statistics (moving average)",
        "update_inverses": "inversion (amortized)",
        "gradient_matrices": "preconditioning",
        "precondition": "preconditioning",
        "_step_rule": "update (KL clip, momentum, apply)",
        "apply_updates": "update (KL clip, momentum, apply)",
    }
    for name, phase in methods.items():
        setattr(optimizer, name, clock.wrap(getattr(optimizer, name), phase))
    try:
        yield
    finally:
        for name in module_functions:
            setattr(kfac_module, name, saved[name])
        for name in methods:
            delattr(optimizer, name)


def breakdown(inputs: Tensor, args: argparse.Namespace) -> dict[str, float]:
    """Mean milliseconds per K-FAC step spent in each phase (over whole inverse periods)."""
    steps = step_functions(inputs, args)
    optimizer = steps["optimizer"]
    for _ in range(args.warmup):
        steps["kfac"]()
    optimizer.steps = 0
    clock = PhaseClock()
    with instrumented(optimizer, clock):
        for _ in range(args.steps):
            with clock.phase("main forward/backward and rest"):
                steps["kfac"]()
    return {name: 1e3 * total / args.steps for name, total in clock.totals.items()}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def memory_child(optimizer_name: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: peak RSS after setup and after the steps, printed as JSON.

    The batch is uniform noise in [0, 1] of the real shape: loading the whole dataset
    would set the high-water mark before the first step and hide what the steps add.
    """
    torch.manual_seed(0)
    inputs = torch.rand(args.batch, 784)
    steps = step_functions(inputs, args)
    before = peak_rss_mib()
    for _ in range(args.memory_steps):
        steps[optimizer_name]()
    after = peak_rss_mib()
    print(json.dumps({"optimizer": optimizer_name, "setup_mib": before, "peak_mib": after}))


def measure_memory(batch: int, args: argparse.Namespace) -> dict[str, dict]:
    """Peak RSS of each optimizer, each in its own subprocess."""
    results = {}
    for name in ("momentum", "kfac"):
        command = [sys.executable, __file__, "--memory-child", name, "--batch", str(batch)]
        command += ["--memory-steps", str(args.memory_steps), "--fisher", args.fisher]
        command += ["--stat-fraction", str(args.stat_fraction), "--inv-every", str(args.inv_every)]
        command += ["--stat-every", str(args.stat_every), "--inverse", args.inverse]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    return results


def report_times(batch: int, times: dict[str, list[float]]) -> None:
    k_med, s_med = statistics.median(times["kfac"]), statistics.median(times["momentum"])
    k_mean, s_mean = statistics.fmean(times["kfac"]), statistics.fmean(times["momentum"])
    print(f"batch {batch}")
    print(f"  momentum  median {s_med * 1e3:8.1f} ms   mean {s_mean * 1e3:8.1f} ms")
    print(f"  kfac      median {k_med * 1e3:8.1f} ms   mean {k_mean * 1e3:8.1f} ms (amortized)")
    print(f"  ratio kfac/momentum: median {k_med / s_med:.2f}x   mean {k_mean / s_mean:.2f}x")


def report_memory(memory: dict[str, dict]) -> None:
    added = {name: m["peak_mib"] - m["setup_mib"] for name, m in memory.items()}
    for name, m in memory.items():
        print(
            f"  peak RSS {name:9s} {m['peak_mib']:7.1f} MiB (setup {m['setup_mib']:7.1f} MiB, "
            f"added by the steps {added[name]:7.1f} MiB)"
        )
    print(
        f"  memory ratio kfac/momentum: whole process "
        f"{memory['kfac']['peak_mib'] / memory['momentum']['peak_mib']:.2f}x, "
        f"added by the steps {added['kfac'] / max(added['momentum'], 1e-9):.2f}x"
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--steps", type=int, default=40, help="timed steps (multiple of inv_every)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--stat-fraction", type=float, default=0.125)
    parser.add_argument("--stat-every", type=int, default=1)
    parser.add_argument("--inv-every", type=int, default=20)
    parser.add_argument("--fisher", default="mc")
    parser.add_argument("--inverse", default="cholesky")
    parser.add_argument("--breakdown", action="store_true", help="also time each phase")
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS")
    parser.add_argument("--memory-steps", type=int, default=5)
    parser.add_argument("--memory-child", choices=("kfac", "momentum"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1000, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    print(
        f"threads={torch.get_num_threads()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
        f"load average={os.getloadavg()[0]:.1f} steps={args.steps}"
    )
    print(
        f"kfac: fisher={args.fisher} stat_fraction={args.stat_fraction} "
        f"stat_every={args.stat_every} inv_every={args.inv_every} inverse={args.inverse} "
        "kl_clip=1e-3"
    )
    for batch in args.batches:
        inputs = fashion_batch(batch)
        report_times(batch, alternating_times(inputs, args))
        if args.breakdown:
            phases = breakdown(inputs, args)
            total = sum(phases.values())
            for name, value in sorted(phases.items(), key=lambda item: -item[1]):
                print(f"    {name:36s} {value:8.1f} ms  {100 * value / total:5.1f}%")
            print(f"    {'total (K-FAC alone)':36s} {total:8.1f} ms")
        if args.memory:
            report_memory(measure_memory(batch, args))
    print(f"load average at the end={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
