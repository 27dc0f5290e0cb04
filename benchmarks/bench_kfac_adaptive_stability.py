"""kfac_adaptive's damping, step coefficients and update sizes along a run, and its final
validation error: the measurements behind "Stable by default" in docs/RESULTS.md.

One ``natgrad train`` run per lambda_0 (same seed and batches; evaluation only at the
end, on the whole validation split), one thread. Every ``--every`` steps it prints the
mini-batch loss, the damping lambda, the reduction ratio rho of the latest adaptation,
the quadratic model's minimizer (alpha, mu) before any momentum restart and ||d||, the
norm of the update taken. ``--legacy`` runs the rules of
natgrad 0.1 (no momentum restart, no damping floor relative to the curvature's scale).
Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_adaptive_stability.py \
        --workload fmnist_cnn [--dampings 0.01 0.1 1] [--steps 300] [--legacy]
"""

from __future__ import annotations

import argparse
import math

import torch

from natgrad.optim.kfac_step_rules import DampingConfig
from natgrad.train.harness import CurveRun

BATCH_SIZES = {"fmnist_cnn": 256, "fmnist_vit": 128}


def update_norm(optimizer) -> float:
    """||d|| over the tracked layers (the latest update of the quadratic-model rule)."""
    total = 0.0
    for layer in optimizer.layers:
        update = optimizer.state[layer.weight].get("previous_update")
        if update is not None:
            total += float(update.float().pow(2).sum())
    return math.sqrt(total)


def validation_error(run: CurveRun) -> float:
    with torch.no_grad():
        run.model.eval()
        inputs, targets = run.data.val.inputs, run.data.val.targets
        wrong = sum(
            int((run.model(inputs[i : i + 1000]).argmax(1) != targets[i : i + 1000]).sum())
            for i in range(0, len(inputs), 1000)
        )
    return wrong / len(inputs)


def one_run(workload: str, damping: float, args: argparse.Namespace) -> None:
    run = CurveRun(
        workload, "kfac_adaptive", {"damping": damping}, BATCH_SIZES[workload], args.steps
    )
    optimizer = run.optimizer
    if args.legacy:
        optimizer.model_rule.restart_momentum = False
        optimizer.damping_rule.config = DampingConfig(relative_min_damping=0.0)
    print(f"{workload} lambda_0 {damping} {'legacy rules' if args.legacy else ''}")
    while not run.done:
        run.advance()
        step = len(run.curve.losses)
        if step % args.every and run.curve.status == "completed":
            continue
        alpha, mu = (float(c) for c in optimizer.model_rule.last_coefficients)
        print(
            f"  step {step:4d} loss {run.curve.losses[-1]:.4f} "
            f"damping {optimizer.param_groups[0]['damping']:.3g} "
            f"rho {getattr(optimizer, 'last_rho', float('nan')):.3g} "
            f"alpha {alpha:.3g} mu {mu:.3g} |d| {update_norm(optimizer):.3g}",
            flush=True,
        )
    print(
        f"  {run.curve.status} after {len(run.curve.losses)} steps, final damping "
        f"{optimizer.param_groups[0]['damping']:.3g}, validation error "
        f"{validation_error(run):.4f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=BATCH_SIZES, default="fmnist_cnn")
    parser.add_argument("--dampings", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--legacy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for damping in args.dampings:
        one_run(args.workload, damping, args)


if __name__ == "__main__":
    main()
