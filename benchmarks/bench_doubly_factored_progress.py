"""Progress per step that the doubly-factored approximation costs: fmnist_cnn's first
fully connected layer (64 channels x 49 locations = 3136 inputs, 1024 outputs) doubly
factored against full K-FAC, both with the registry's ``kfac`` preset otherwise.

Both runs start from the same seeded initialization, see the same batches (the
runner's) and advance round-robin. Reported: the training loss (mean of the last 10
mini-batch losses) at a few steps, the validation error at the end, the steps to a few
loss targets, and the median step time of each. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_doubly_factored_progress.py \
        [--steps 400] [--batch 128] [--out runs/doubly_factored_progress]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from natgrad.train.harness import CurveRun, run_interleaved
from natgrad.train.runner import evaluate

VARIANTS = {"full K-FAC": "off", "doubly-factored layer 7": "7"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--targets", type=float, nargs="*", default=[0.6, 0.5, 0.45, 0.4])
    parser.add_argument("--out", type=Path, default=Path("runs/doubly_factored_progress"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {
        label: CurveRun("fmnist_cnn", "kfac", {"doubly_factored": choice}, args.batch, args.steps)
        for label, choice in VARIANTS.items()
    }
    run_interleaved(list(runs.values()))
    records = []
    for label, run in runs.items():
        curve = run.curve
        smoothed = curve.smoothed()
        times = curve.wall_times
        steps = [b - a for a, b in zip([0.0, *times[:-1]], times, strict=True)]
        with torch.no_grad():
            val = run.data.val
            error = evaluate(run.model, run.workload, val.inputs, val.targets)["error"]
        checkpoints = [s for s in (50, 100, 200, 400, 800) if s <= len(smoothed)]
        records.append(
            {
                "label": label,
                "status": curve.status,
                "loss_at": {str(s): smoothed[s - 1] for s in checkpoints},
                "steps_to": {str(t): curve.steps_to(t) for t in args.targets},
                "val_error": error,
                "median_step_ms": 1e3 * statistics.median(steps),
            }
        )
        print(json.dumps(records[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
