"""Step time of natgrad.KFAC against heavy-ball Momentum on the MNIST autoencoder shape.

The 784-1000-500-250-30-250-500-1000-784 tanh autoencoder (Martens & Grosse 2015) with
the Bernoulli likelihood, on random inputs in [0, 1] (the timing does not depend on
the data). One timed step is the whole update: forward, backward and optimizer step
(K-FAC: its closure, statistics when due, inverses when due, preconditioning). The two
optimizers alternate step by step so that both see the same machine load. K-FAC's
inverses come every ``inv_every`` steps, so the amortized cost is the mean over a
whole number of periods; the script prints medians, means and their ratios. Usage::

    .venv/bin/python benchmarks/bench_kfac_step.py [--batch 1000] [--steps 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from natgrad.curvature.likelihoods import get_likelihood
from natgrad.optim.first_order import Momentum
from natgrad.optim.kfac import KFAC

SIZES = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)


def autoencoder() -> nn.Sequential:
    """Tanh hidden units, a linear 30-unit code and linear output logits."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index not in (3, len(SIZES) - 2):
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=40, help="timed steps (multiple of inv_every)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--stat-fraction", type=float, default=0.125)
    parser.add_argument("--stat-every", type=int, default=1)
    parser.add_argument("--inv-every", type=int, default=20)
    parser.add_argument("--fisher", default="mc")
    parser.add_argument("--inverse", default="cholesky")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    inputs = torch.rand(args.batch, SIZES[0], device=device)
    likelihood = get_likelihood("bernoulli")
    kfac_model = autoencoder().to(device)
    sgd_model = copy.deepcopy(kfac_model)
    kfac = KFAC(
        kfac_model,
        lr=1e-3,
        momentum=0.9,
        damping=1e-2,
        weight_decay=1e-5,
        likelihood=likelihood,
        fisher=args.fisher,
        stat_fraction=args.stat_fraction,
        stat_every=args.stat_every,
        inv_every=args.inv_every,
        inverse=args.inverse,
    )
    sgd = Momentum(sgd_model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-5)

    def kfac_step() -> None:
        def closure():
            outputs = kfac_model(inputs)
            return likelihood.loss(outputs, inputs), outputs

        kfac.step(closure)

    def sgd_step() -> None:
        sgd.zero_grad(set_to_none=True)
        likelihood.loss(sgd_model(inputs), inputs).backward()
        sgd.step()

    for _ in range(args.warmup):
        kfac_step()
        sgd_step()
    kfac.steps = 0  # restart the periods so the timed window holds whole inverse periods
    kfac_times, sgd_times = [], []
    for _ in range(args.steps):
        kfac_times.append(timed(kfac_step, device))
        sgd_times.append(timed(sgd_step, device))
    k_med, s_med = statistics.median(kfac_times), statistics.median(sgd_times)
    k_mean, s_mean = statistics.fmean(kfac_times), statistics.fmean(sgd_times)
    print(
        f"device={device} batch={args.batch} steps={args.steps} threads={torch.get_num_threads()}"
    )
    print(
        f"kfac: fisher={args.fisher} stat_fraction={args.stat_fraction} "
        f"stat_every={args.stat_every} inv_every={args.inv_every} inverse={args.inverse}"
    )
    print(f"momentum  median {s_med * 1e3:8.1f} ms   mean {s_mean * 1e3:8.1f} ms")
    print(f"kfac      median {k_med * 1e3:8.1f} ms   mean {k_mean * 1e3:8.1f} ms (amortized)")
    print(f"ratio kfac/momentum: median {k_med / s_med:.2f}x   mean {k_mean / s_mean:.2f}x")


if __name__ == "__main__":
    main()
