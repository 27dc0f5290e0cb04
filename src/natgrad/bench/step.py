"""Step time, cost breakdown and peak memory of natgrad's K-FAC against heavy-ball Momentum.

The 784-1000-500-250-30-250-500-1000-784 tanh autoencoder (Martens & Grosse 2015) with
the Bernoulli likelihood, on real Fashion-MNIST images (the first ``--batch`` training
images; the timing does not depend on their values, but the statistics do). The K-FACs
are the registry entries ``kfac`` (fixed lr, momentum, KL clip) and ``kfac_adaptive``
(quadratic-model step, Levenberg-Marquardt damping) at their defaults (``--set`` changes
one). One timed step is the whole update: forward, backward and optimizer step
(K-FAC: closure, statistics, inverses when due, preconditioning, step rule). The
optimizers alternate step by step so that all see the same machine load; inverses come
every ``inv_every`` steps, so the amortized cost is the mean over whole periods.

Breakdown: in a second loop (one K-FAC alone, under torch.profiler) the time of each
phase of KFAC.step, from its ``record_function`` regions ``kfac.<phase>``
(natgrad.optim.kfac.STEP_PHASES): forward_backward (closure, backward, batch
statistics on the sub-batch), factor_update (moving average), inverses (amortized),
precondition (G^-1 V A^-1), step_rule (momentum and KL clip, or alpha and mu),
quadratic_model (its Fisher products), apply, damping (the rule's forward at the new
point) and fallback; what lies outside the regions is one more entry.

Peak memory: each optimizer runs in its own fresh subprocess (``--memory-child``), and
the process's peak resident set size (VmHWM of ``/proc/self/status``) is
read after building the model and a batch of the same shape (uniform noise, so that
loading the dataset does not set the high-water mark) and again after the steps; the
difference is what the steps added (activations, gradients, optimizer state,
temporaries), the second number is the whole process. Usage::

    OMP_NUM_THREADS=1 .venv/bin/natgrad bench step \
        [--batches 1000 4000] [--steps 40] [--breakdown] [--memory] [--set stat_every=2] [--json]

(``benchmarks/bench_kfac_step.py`` runs the same.) With a CUDA device (``--device``,
default cuda when present) every timed step ends with a device synchronization.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict

import torch
from torch import Tensor, nn

from natgrad.bench.arguments import non_negative_int, positive_int
from natgrad.bench.benchmark import Benchmark, register_benchmark
from natgrad.bench.timing import check_device, default_device, peak_rss_mib, summary, timed
from natgrad.curvature.likelihoods import get_likelihood
from natgrad.optim.first_order import Momentum
from natgrad.optim.kfac import KFAC
from natgrad.optim.optimizer_spec import (
    BuildContext,
    HyperValue,
    get_optimizer_spec,
    parse_assignments,
    resolve_hyperparameters,
)
from natgrad.workloads.models import deep_autoencoder

WEIGHT_DECAY = 1e-5


def fashion_batch(batch: int) -> Tensor:
    """The first ``batch`` Fashion-MNIST training images as (batch, 784) in [0, 1]."""
    from natgrad.data import load_splits

    images = load_splits("fashion-mnist").train_x[:batch].flatten(1).float()
    if images.shape[0] < batch:
        raise ValueError(f"--batch {batch} exceeds the {images.shape[0]} training images")
    return images


def kfac_hyperparameters(name: str, args: argparse.Namespace) -> dict[str, HyperValue]:
    """The registry's ``name`` ("kfac" or "kfac_adaptive") at its defaults plus ``--set``,
    parsed as the train command parses it."""
    spec = get_optimizer_spec(name)
    return resolve_hyperparameters(spec, parse_assignments(spec, args.overrides))


def build_kfac(model: nn.Module, name: str, args: argparse.Namespace) -> KFAC:
    """The registry's ``name`` with :func:`kfac_hyperparameters`."""
    spec = get_optimizer_spec(name)
    hparams = kfac_hyperparameters(name, args)
    return spec.build(model, BuildContext("bernoulli", WEIGHT_DECAY), hparams)


def step_functions(inputs: Tensor, args: argparse.Namespace) -> tuple[dict, dict]:
    """A step function per optimizer, on identical copies of one seeded model; the K-FACs."""
    likelihood = get_likelihood("bernoulli")
    torch.manual_seed(0)
    reference = deep_autoencoder().to(inputs.device)
    steps, optimizers = {}, {}
    for name in args.kfacs:
        model = copy.deepcopy(reference)
        optimizers[name] = build_kfac(model, name, args)

        def kfac_step(model=model, optimizer=optimizers[name]) -> None:
            def closure():
                outputs = model(inputs)
                return likelihood.loss(outputs, inputs), outputs

            optimizer.step(closure)

        steps[name] = kfac_step
    sgd_model = copy.deepcopy(reference)
    sgd = Momentum(sgd_model.parameters(), lr=1e-3, momentum=0.9, weight_decay=WEIGHT_DECAY)

    def sgd_step() -> None:
        sgd.zero_grad(set_to_none=True)
        likelihood.loss(sgd_model(inputs), inputs).backward()
        sgd.step()

    steps["momentum"] = sgd_step
    return steps, optimizers


def alternating_times(inputs: Tensor, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per-step wall times of every optimizer, stepped alternately."""
    steps, optimizers = step_functions(inputs, args)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    for optimizer in optimizers.values():
        optimizer.steps = 0  # the timed window starts a fresh inverse period
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name].append(timed(step, args.device))
    return times


PHASE_PREFIX = "kfac."
OUTSIDE_PHASES = "outside the phases (loss, glue)"


def _nearest_phases(event) -> list:
    """The ``kfac.*`` regions directly inside ``event`` (through any number of other ops)."""
    found = []
    for child in event.cpu_children:
        if child.name.startswith(PHASE_PREFIX):
            found.append(child)
        else:
            found.extend(_nearest_phases(child))
    return found


def phase_microseconds(events) -> dict[str, float]:
    """Exclusive host time (us) per ``kfac.<phase>`` region of KFAC.step over ``events``
    (a torch.profiler event list): each region's time less the phase regions inside it
    (``kfac.quadratic_model`` inside ``kfac.step_rule``), summed over its occurrences."""
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if not event.name.startswith(PHASE_PREFIX):
            continue
        inner = sum(child.cpu_time_total for child in _nearest_phases(event))
        totals[event.name.removeprefix(PHASE_PREFIX)] += event.cpu_time_total - inner
    return dict(totals)


def profiled_phases(step, steps: int, device: torch.device) -> dict[str, float]:
    """Mean ms per step in each phase of KFAC.step while ``step()`` runs ``steps`` times
    under torch.profiler; the wall time outside the regions is one more entry.

    The regions are host times: on CUDA a kernel's time lands in the phase that waits for
    it (each step ends with a synchronization).
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    wall = 0.0
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            wall += timed(step, device)
    phases = {name: 1e-3 * us / steps for name, us in phase_microseconds(profiler.events()).items()}
    phases[OUTSIDE_PHASES] = max(1e3 * wall / steps - sum(phases.values()), 0.0)
    return phases


def breakdown(inputs: Tensor, name: str, args: argparse.Namespace) -> dict[str, float]:
    """Mean milliseconds per step of K-FAC ``name`` in each profiler phase of its step
    (whole inverse periods)."""
    local = argparse.Namespace(**{**vars(args), "kfacs": [name]})
    steps, optimizers = step_functions(inputs, local)
    for _ in range(args.warmup):
        steps[name]()
    optimizers[name].steps = 0
    return profiled_phases(steps[name], args.steps, args.device)


def memory_child(optimizer_name: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: peak RSS after setup and after the steps, printed as JSON.

    The batch is uniform noise in [0, 1] of the real shape: loading the whole dataset
    would set the high-water mark before the first step and hide what the steps add.
    """
    torch.manual_seed(0)
    inputs = torch.rand(args.batch, 784)
    kfacs = [] if optimizer_name == "momentum" else [optimizer_name]
    steps, _ = step_functions(inputs, argparse.Namespace(**{**vars(args), "kfacs": kfacs}))
    before = peak_rss_mib()
    for _ in range(args.memory_steps):
        steps[optimizer_name]()
    after = peak_rss_mib()
    print(json.dumps({"optimizer": optimizer_name, "setup_mib": before, "peak_mib": after}))


def measure_memory(batch: int, args: argparse.Namespace) -> dict[str, dict]:
    """Peak RSS of each optimizer, each in its own subprocess."""
    results = {}
    for name in ("momentum", *args.kfacs):
        command = [sys.executable, "-m", "natgrad.bench.step", "--memory-child", name]
        command += ["--batch", str(batch), "--device", "cpu"]
        command += ["--memory-steps", str(args.memory_steps)]
        command += [f"--set={assignment}" for assignment in args.overrides]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    return results


def report_times(batch: int, times: dict[str, list[float]]) -> None:
    """Median and mean step time of every optimizer, and each K-FAC's ratio to Momentum."""
    base_median = statistics.median(times["momentum"])
    base_mean = statistics.fmean(times["momentum"])
    print(f"batch {batch}")
    for name, values in times.items():
        median, mean = statistics.median(values), statistics.fmean(values)
        ratio = f"ratio median {median / base_median:.2f}x  mean {mean / base_mean:.2f}x"
        print(f"  {name:14s} median {median * 1e3:8.1f} ms  mean {mean * 1e3:8.1f} ms  {ratio}")


def report_memory(memory: dict[str, dict]) -> None:
    """Peak RSS per optimizer and each K-FAC's ratio to Momentum (whole and added)."""
    added = {name: m["peak_mib"] - m["setup_mib"] for name, m in memory.items()}
    for name, m in memory.items():
        whole = m["peak_mib"] / memory["momentum"]["peak_mib"]
        extra = added[name] / max(added["momentum"], 1e-9)
        print(
            f"  peak RSS {name:14s} {m['peak_mib']:7.1f} MiB (setup {m['setup_mib']:7.1f}, "
            f"added by the steps {added[name]:6.1f} MiB); vs momentum {whole:.2f}x whole, "
            f"{extra:.2f}x added"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[1000, 4000],
        help="batch sizes (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=40,
        help="timed steps, a multiple of inv_every (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)"
    )
    parser.add_argument(
        "--kfacs",
        nargs="+",
        default=["kfac", "kfac_adaptive"],
        help="K-FAC presets (default: %(default)s)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="hyperparameter override for every K-FAC, e.g. --set stat_every=2 (default: none)",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also time each phase (default: off)"
    )
    parser.add_argument(
        "--memory", action="store_true", help="also measure peak RSS (default: off)"
    )
    parser.add_argument(
        "--memory-steps",
        type=int,
        default=5,
        help="steps of the memory runs (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=default_device(),
        help="cpu or cuda (default: %(default)s, cuda when present)",
    )


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the first option out of range (before any data is loaded)."""
    for batch in args.batches:
        positive_int("--batches", batch)
    positive_int("--steps", args.steps)
    non_negative_int("--warmup", args.warmup)
    positive_int("--memory-steps", args.memory_steps)
    if not args.kfacs:
        raise ValueError("--kfacs must name at least one K-FAC preset")
    for name in args.kfacs:
        kfac_hyperparameters(name, args)


def run(args: argparse.Namespace) -> dict:
    """Step times (and the breakdown and memory when asked) at every batch size."""
    check_arguments(args)
    args.device = check_device(args.device)
    if args.memory and args.device.type != "cpu":
        raise ValueError("--memory measures host memory: use it with --device cpu")
    results: dict = {"device": str(args.device), "threads": torch.get_num_threads()}
    log = print if not args.json else _quiet
    log(
        f"threads={torch.get_num_threads()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
        f"load average={os.getloadavg()[0]:.1f} steps={args.steps}"
    )
    for name in args.kfacs:
        log(f"{name}: {kfac_hyperparameters(name, args)}")
    for batch in args.batches:
        inputs = fashion_batch(batch).to(args.device)
        times = alternating_times(inputs, args)
        entry = {"times": {name: summary(values) for name, values in times.items()}}
        if not args.json:
            report_times(batch, times)
        for name in args.kfacs if args.breakdown else ():
            phases = breakdown(inputs, name, args)
            entry.setdefault("breakdown_ms", {})[name] = phases
            total = sum(phases.values())
            log(f"  breakdown of {name} (alone, mean over the timed steps)")
            for phase, value in sorted(phases.items(), key=lambda item: -item[1]):
                log(f"    {phase:40s} {value:8.1f} ms  {100 * value / total:5.1f}%")
            log(f"    {'total':40s} {total:8.1f} ms")
        if args.memory:
            memory = measure_memory(batch, args)
            entry["memory"] = memory
            if not args.json:
                report_memory(memory)
        results[str(batch)] = entry
    log(f"load average at the end={os.getloadavg()[0]:.1f}")
    return results


def _quiet(*_args, **_kwargs) -> None:
    return None


def main(argv: list[str] | None = None) -> None:
    """The script form (``python -m natgrad.bench.step``, benchmarks/bench_kfac_step.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="figures as one JSON line")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # one optimizer's memory run
    parser.add_argument("--batch", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        args.device = check_device(args.device)
        memory_child(args.memory_child, args)
        return
    results = run(args)
    if args.json:
        print(json.dumps(results))


register_benchmark(Benchmark("step", __doc__.splitlines()[0], add_arguments, run))

if __name__ == "__main__":
    main()
