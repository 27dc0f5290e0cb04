"""natgrad.KFAC side by side with ASDL's K-FAC (PyPI asdfghjkl==0.1a5) on fmnist_autoencoder.

Optional: needs ``pip install --no-deps asdfghjkl==0.1a5`` (the ``bench`` extra; its
only dependencies, torch and numpy, are already installed, and ``--no-deps`` keeps pip
from touching torch). Same model (the workload's seeded autoencoder), same batches
(the runner's sampler), same batch size, same inverse period (``--inv-every``), the
same factored Tikhonov damping (ASDL also uses the trace-norm pi with
gamma = sqrt(damping); its damping is lambda + eta so that both damp alike) and
heavy-ball momentum 0.9 with weight decay 1e-5. ASDL's Fisher for a loss other than
cross-entropy or squared error can only be the empirical one ("fisher_emp"), with
statistics on the whole batch every step; natgrad runs as ``kfac`` and ``kfac_adaptive``
at their registry defaults (MC Fisher every 2 steps on 1/8 of the batch; ``kfac``
with the KL clip and inverses every 20 steps, ``kfac_adaptive`` every 5), and, for the
like-for-like cost, as ``kfac`` with the empirical Fisher on the whole batch every step
and ASDL's inverse period and statistics decay. All runs advance
round-robin (one step each per round) for ``--time-limit`` seconds of their own
training time; the script reports the median step time and the training loss (mean
of the last 10 mini-batch losses) after equal time.

Two adaptations to run ASDL 0.1a5 on torch 2.13 CPU, neither touching its maths: its
code wraps phases in ``torch.cuda.nvtx.range``, which raises on a CPU-only build, so
that function is replaced by a no-op context manager before ASDL is imported; and its
loss function must accept ``reduction=``, so the Bernoulli loss is wrapped. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_vs_asdfghjkl.py \
        [--batch 1000] [--inv-every 20] [--time-limit 60] [--asdl-lrs 1e-4 1e-3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from natgrad.train.harness import Curve, CurveRun, SteppedRun, run_interleaved
from natgrad.train.runner import load_workload_data
from natgrad.workloads import get_workload

WORKLOAD = "fmnist_autoencoder"
DAMPING = 3e-3
WEIGHT_DECAY = 1e-5


@contextmanager
def _no_range(message: str, *args, **kwargs):
    yield


def import_asdl():
    """ASDL with torch.cuda.nvtx.range made a no-op (it raises on CPU-only torch builds)."""
    torch.cuda.nvtx.range = _no_range
    import asdl

    return asdl


def bernoulli_loss(outputs: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Sigmoid cross-entropy summed over pixels; batch mean, sum or per example."""
    nll = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none").sum(dim=1)
    if reduction == "none":
        return nll
    return nll.sum() if reduction == "sum" else nll.mean()


class AsdlRun(SteppedRun):
    """ASDL K-FAC (empirical Fisher) plus torch SGD with momentum, stepped like a CurveRun."""

    def __init__(self, asdl, lr: float, batch_size: int, steps: int, args: argparse.Namespace):
        workload = get_workload(WORKLOAD)
        data = load_workload_data(workload, None, "cpu")
        super().__init__(data, Curve("asdl-kfac", {"lr": lr}, batch_size), batch_size, steps, 0)
        torch.manual_seed(0)  # the runner's seed: the same initial weights as natgrad's runs
        self.model = workload.build_model()
        config = asdl.PreconditioningConfig(
            data_size=batch_size,
            damping=args.asdl_damping + WEIGHT_DECAY,
            preconditioner_upd_interval=args.inv_every,
            curvature_upd_interval=1,
            ema_decay=1.0 - args.stat_decay,
        )
        self.maker = asdl.KfacGradientMaker(self.model, config, fisher_type=asdl.FISHER_EMP)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=lr, momentum=0.9, weight_decay=WEIGHT_DECAY
        )

    def train_on(self, inputs: Tensor, targets: Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        dummy = self.maker.setup_model_call(self.model, inputs)
        self.maker.setup_loss_call(bernoulli_loss, dummy, targets)
        _, loss = self.maker.forward_and_backward()
        self.optimizer.step()
        return float(loss.detach())


def loss_at(curve: Curve, seconds: float) -> float | None:
    """Smoothed training loss at the last step finished within ``seconds`` of training."""
    smoothed = curve.smoothed()
    inside = [value for value, t in zip(smoothed, curve.wall_times, strict=True) if t <= seconds]
    return inside[-1] if inside else None


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--inv-every", type=int, default=20)
    parser.add_argument("--stat-decay", type=float, default=0.95)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--asdl-lrs", type=float, nargs="+", default=[1e-4, 1e-3])
    parser.add_argument(
        "--asdl-damping", type=float, default=DAMPING, help="ASDL's lambda (natgrad: 3e-3)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/kfac_vs_asdfghjkl"))
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    asdl = import_asdl()
    print(
        f"asdfghjkl {asdl.__version__}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, batch {args.batch}"
    )
    steps = 100_000
    like_asdl = {
        "inv_every": args.inv_every,
        "stat_decay": args.stat_decay,
        "fisher": "empirical",
        "stat_fraction": 1.0,
        "stat_every": 1,
    }
    runs = {
        "natgrad kfac (defaults)": CurveRun(WORKLOAD, "kfac", {}, args.batch, steps),
        "natgrad kfac_adaptive (defaults)": CurveRun(
            WORKLOAD, "kfac_adaptive", {}, args.batch, steps
        ),
        "natgrad kfac (empirical, whole batch, every step)": CurveRun(
            WORKLOAD, "kfac", like_asdl, args.batch, steps
        ),
    }
    for lr in args.asdl_lrs:
        runs[f"asdl kfac (empirical) + SGD momentum lr={lr:g}"] = AsdlRun(
            asdl, lr, args.batch, steps, args
        )
    run_interleaved(list(runs.values()), time_limit=args.time_limit)
    report = {}
    for label, run in runs.items():
        curve = run.curve
        times = [
            b - a for a, b in zip([0.0, *curve.wall_times[:-1]], curve.wall_times, strict=True)
        ]
        report[label] = {
            "status": curve.status,
            "steps": len(curve.losses),
            "median_step_ms": 1e3 * statistics.median(times) if times else None,
            "mean_step_ms": 1e3 * statistics.fmean(times) if times else None,
            "loss_at_time_limit": loss_at(curve, args.time_limit),
        }
        r = report[label]
        print(
            f"{label:52s} {r['status']:9s} steps {r['steps']:4d}  median step "
            f"{r['median_step_ms'] or float('nan'):6.0f} ms  mean {r['mean_step_ms'] or 0:6.0f} ms"
            f"  loss after {args.time_limit:g} s: {r['loss_at_time_limit'] or float('nan'):.1f}"
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
