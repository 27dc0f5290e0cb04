"""Asynchronous against synchronous K-FAC inverses at the same inverse period.

The 784-1000-500-250-30-250-500-1000-784 tanh autoencoder (fmnist_autoencoder's model,
Bernoulli likelihood) on real Fashion-MNIST images, the registry's ``kfac`` preset with
``inv_every = T`` (``--inv-every``). Contenders, each on its own copy of one seeded
model and the same sequence of batches:

- ``sync``: the refresh (Cholesky of every factor) inside the step that is due;
- ``async``: the refresh of the factors of step t computed on a background thread and
  installed at step t + s (``--staleness``, default T - 1, so it is always done within
  its own period), natgrad.distributed.Coordinator(staleness=s);
- ``sync-2threads`` (``--with-two-threads``): synchronous with two intra-op threads, the
  same two cores used the other way.

Timing: the contenders alternate by whole inverse periods (T steps that start with a
refresh step; the asynchronous refresh is waited for inside its own period, so no
contender's background work spills into another's window), in a rotating order;
reported are the median and mean per-step times over the periods. Loss: the mean
Bernoulli NLL of the first ``--eval`` training images not used for the batches, after
the same number of steps. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_async.py \
        [--batch 1000] [--inv-every 5] [--periods 20] [--staleness 4] [--seed 0]
        [--with-two-threads]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
from torch import Tensor

from natgrad.curvature.likelihoods import get_likelihood
from natgrad.distributed import Coordinator, World
from natgrad.optim.kfac import KFAC
from natgrad.optim.kfac_config import preset_options
from natgrad.optim.optimizer_spec import get_optimizer_spec, parse_assignments
from natgrad.workloads.models import deep_autoencoder

WEIGHT_DECAY = 1e-5


def images(count: int) -> Tensor:
    from natgrad.data import load_splits

    return load_splits("fashion-mnist").train_x[:count].flatten(1).float()


def build(model, args: argparse.Namespace, staleness: int | None) -> KFAC:
    overrides = parse_assignments(get_optimizer_spec("kfac"), args.overrides)
    options = {**preset_options("kfac"), "inv_every": args.inv_every, **overrides}
    opt = KFAC(model, likelihood="bernoulli", weight_decay=WEIGHT_DECAY, **{
        k: v for k, v in options.items() if k != "weight_decay"
    })  # fmt: skip
    opt.coordinator = Coordinator(World(), staleness=staleness)
    return opt


class Contender:
    """One optimizer on its own model, stepped period by period on the shared batches."""

    def __init__(self, name: str, reference, args, staleness, threads: int) -> None:
        self.name, self.threads = name, threads
        self.model = copy.deepcopy(reference)
        torch.manual_seed(args.seed + 1)  # the same sampled targets for every contender
        self.opt = build(self.model, args, staleness)
        self.likelihood = get_likelihood("bernoulli")
        self.step_index = 0
        self.period_times: list[float] = []
        self.losses: list[float] = []

    def run_period(self, batches: list[Tensor], length: int, timed: bool) -> None:
        torch.set_num_threads(self.threads)
        start = time.perf_counter()
        for _ in range(length):
            inputs = batches[self.step_index % len(batches)]

            def closure(inputs=inputs):
                outputs = self.model(inputs)
                return self.likelihood.loss(outputs, inputs), outputs

            self.losses.append(float(self.opt.step(closure)))
            self.step_index += 1
        if timed:
            self.period_times.append((time.perf_counter() - start) / length)

    @torch.no_grad()
    def evaluate(self, inputs: Tensor) -> float:
        return float(self.likelihood.loss(self.model(inputs), inputs))


def inversion_time(contender: Contender, repeats: int = 3) -> float:
    """Seconds for one synchronous refresh of every layer (the work the thread takes over)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for preconditioner in contender.opt.preconditioners:
            preconditioner.compute_decomposition(0.05)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--inv-every", type=int, default=5)
    parser.add_argument("--staleness", type=int, default=None, help="default: inv_every - 1")
    parser.add_argument("--periods", type=int, default=20, help="timed periods per contender")
    parser.add_argument("--warmup-periods", type=int, default=1)
    parser.add_argument("--eval", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="model and sampling seed")
    parser.add_argument("--with-two-threads", action="store_true")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a K-FAC option, typed as the kfac optimizer's hyperparameter",
    )
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    staleness = args.inv_every - 1 if args.staleness is None else args.staleness
    steps = (args.periods + args.warmup_periods) * args.inv_every
    data = images(args.batch * min(steps, 20) + args.eval)
    batches = list(data[: args.batch * min(steps, 20)].split(args.batch))
    held_out = data[-args.eval :]
    torch.manual_seed(args.seed)
    reference = deep_autoencoder()
    contenders = [
        Contender("sync", reference, args, None, 1),
        Contender("async", reference, args, staleness, 1),
    ]
    if args.with_two_threads:
        contenders.append(Contender("sync-2threads", reference, args, None, 2))
    load_start = os.getloadavg()[0]
    for period in range(args.periods + args.warmup_periods):
        shift = period % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            contender.run_period(batches, args.inv_every, timed=period >= args.warmup_periods)
    load_end = os.getloadavg()[0]
    torch.set_num_threads(1)
    report = {
        "seed": args.seed,
        "batch": args.batch,
        "inv_every": args.inv_every,
        "staleness": staleness,
        "steps": steps,
        "load_average": [load_start, load_end],
        "inversion_s": inversion_time(contenders[0]),
        "contenders": {},
    }
    sync_median = statistics.median(contenders[0].period_times)
    for contender in contenders:
        median = statistics.median(contender.period_times)
        report["contenders"][contender.name] = {
            "step_ms_median": 1e3 * median,
            "step_ms_mean": 1e3 * statistics.fmean(contender.period_times),
            "ratio_to_sync_median": median / sync_median,
            "held_out_loss": contender.evaluate(held_out),
            "last_period_train_loss": statistics.fmean(contender.losses[-args.inv_every :]),
        }
        contender.opt.coordinator.close()
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(report, stream, indent=2)


if __name__ == "__main__":
    main()
