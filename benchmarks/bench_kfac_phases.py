"""Per-phase time of K-FAC's step on fmnist_vit and fmnist_cnn against Adam's step.

Each workload trains Adam (lr 1e-3) and the K-FAC presets from the same seeded
initialization and batches (the runner's step: ``natgrad train`` without evaluation),
stepped alternately so that all see the same machine load; then each K-FAC runs again
alone under torch.profiler and its step is split into the ``kfac.<phase>`` regions of
KFAC.step (natgrad.bench.step.profiled_phases). The warm-up and the timed window are
whole inverse periods (``--warmup`` and ``--steps`` multiples of every preset's
inv_every), so the inverses' time is amortized as in training. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_phases.py \
        [--workloads fmnist_vit fmnist_cnn] [--steps 40] [--warmup 20] \
        [--set kfac_adaptive:model_min_examples=16]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from natgrad.bench.step import profiled_phases
from natgrad.optim.optimizer_spec import get_optimizer_spec, parse_assignments
from natgrad.train.harness import CurveRun, run_interleaved

BATCH_SIZES = {"fmnist_vit": 128, "fmnist_cnn": 256}
ADAM = ("adam", {"lr": 1e-3})


def kfac_overrides(texts: list[str], presets: list[str]) -> dict[str, dict]:
    """``preset:key=value`` (or ``key=value`` for every preset) as options per preset,
    each value parsed by the preset's registered types."""
    options: dict[str, dict] = {name: {} for name in presets}
    for text in texts:
        target, _, assignment = text.rpartition(":")
        for name in [target] if target else presets:
            options[name].update(parse_assignments(get_optimizer_spec(name), [assignment]))
    return options


def step_milliseconds(curve) -> list[float]:
    """Per-step wall times (ms) from a curve's cumulative training times."""
    times = [0.0, *curve.wall_times]
    return [1e3 * (b - a) for a, b in zip(times[:-1], times[1:], strict=True)]


def measure(workload: str, presets: dict[str, dict], args: argparse.Namespace) -> None:
    batch = BATCH_SIZES[workload]
    total = args.warmup + args.steps
    contenders = [ADAM, *presets.items()]
    runs = [CurveRun(workload, name, hparams, batch, total) for name, hparams in contenders]
    curves = run_interleaved(runs)
    medians = {
        name: statistics.median(step_milliseconds(curve)[args.warmup :])
        for (name, _), curve in zip(contenders, curves, strict=True)
    }
    print(f"{workload} (batch {batch}), median step over {args.steps} steps")
    for name, median in medians.items():
        print(f"  {name:14s} {median:8.1f} ms  {median / medians['adam']:5.2f}x adam")
    for name, hparams in presets.items():
        run = CurveRun(workload, name, hparams, batch, total)
        for _ in range(args.warmup):
            run.advance()
        phases = profiled_phases(run.advance, args.steps, torch.device("cpu"))
        whole = sum(phases.values())
        print(f"  {name} phases (profiled, mean ms per step; total {whole:.1f} ms)")
        for phase, value in sorted(phases.items(), key=lambda item: -item[1]):
            print(f"    {phase:34s} {value:8.1f} ms  {100 * value / whole:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(BATCH_SIZES), choices=BATCH_SIZES)
    parser.add_argument("--presets", nargs="+", default=["kfac", "kfac_adaptive"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    presets = kfac_overrides(args.overrides, args.presets)
    for workload in args.workloads:
        measure(workload, presets, args)


if __name__ == "__main__":
    main()
