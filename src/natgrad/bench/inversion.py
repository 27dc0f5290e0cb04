"""Preconditioner refresh time of one very large layer: doubly-factored against full K-FAC.

A Linear layer with ``--in`` inputs (a ``--channels`` x locations map, plus a bias)
and ``--out`` outputs, as AlexNet's fc6 (9216 = 256 x 6 x 6 inputs, 4096 outputs).
Full K-FAC refreshes the damped inverses of A ((in + 1)^2) and G (out^2);
the doubly-factored layer those of K (channels^2), Psi (locations^2) and G. The
factors are random positive definite matrices of the right sizes (a Cholesky
factorization's cost does not depend on the values). Both refreshes alternate,
``--repeats`` times after ``--warmup`` rounds; the figures are medians, and also the
time to apply each preconditioner to one gradient.
"""

from __future__ import annotations

import argparse
import os

import torch

from natgrad.bench.arguments import (
    check_fits_in_memory,
    finite_non_negative_float,
    non_negative_int,
    positive_int,
)
from natgrad.bench.benchmark import Benchmark, register_benchmark
from natgrad.bench.timing import alternating_times, check_device, default_device, summary
from natgrad.precondition.doubly_factored import DoublyFactoredPreconditioner
from natgrad.precondition.kronecker import KroneckerPreconditioner

_RANK = 256  # random factors: identity plus a rank-256 Gram, cheap to build


def random_factor(size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    rows = torch.randn(size, min(_RANK, size), generator=generator).to(device)
    factor = rows @ rows.T / rows.shape[1]
    factor.diagonal().add_(0.1)
    return factor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--in", dest="inputs", type=int, default=9216, help="inputs (default %(default)s)"
    )
    parser.add_argument(
        "--out", dest="outputs", type=int, default=4096, help="outputs (default %(default)s)"
    )
    parser.add_argument(
        "--channels", type=int, default=256, help="channels of the input map (default %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed refreshes of each (default %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds first (default %(default)s)"
    )
    parser.add_argument(
        "--damping", type=float, default=1e-3, help="damping lambda (default %(default)s)"
    )
    parser.add_argument(
        "--device",
        default=default_device(),
        help="cpu or cuda (default: %(default)s, cuda when present)",
    )


def _check(args: argparse.Namespace) -> tuple[int, int]:
    options = {"inputs": "--in", "outputs": "--out", "channels": "--channels"}
    for name, option in {**options, "repeats": "--repeats"}.items():
        positive_int(option, getattr(args, name))
    non_negative_int("--warmup", args.warmup)
    finite_non_negative_float("--damping", args.damping)
    if args.inputs % args.channels:
        raise ValueError(
            f"--in {args.inputs} is not a whole number of --channels {args.channels} maps"
        )
    return args.channels, args.inputs // args.channels


def estimated_bytes(inputs: int, outputs: int, channels: int, locations: int) -> int:
    """float32 bytes the benchmark holds at once: A, G and their inverses or Cholesky
    factors (with a workspace each), K, Psi and G again for the doubly-factored layer,
    and a gradient V with the two preconditioned copies."""
    full = 3 * (inputs + 1) ** 2 + 3 * outputs**2
    doubly = 3 * (channels**2 + locations**2) + 3 * outputs**2
    gradients = 3 * outputs * (inputs + 1)
    return 4 * (full + doubly + gradients)


def run(args: argparse.Namespace) -> dict:
    channels, locations = _check(args)
    device = check_device(args.device)
    check_fits_in_memory(
        f"a layer of --in {args.inputs} and --out {args.outputs}",
        estimated_bytes(args.inputs, args.outputs, channels, locations),
        device,
    )
    generator = torch.Generator().manual_seed(0)
    G = random_factor(args.outputs, generator, device)
    full = KroneckerPreconditioner("cholesky")
    full.update(random_factor(args.inputs + 1, generator, device), G, 0.0)
    doubly = DoublyFactoredPreconditioner("cholesky")
    doubly.factors = {
        "K": random_factor(channels, generator, device),
        "Psi": random_factor(locations, generator, device),
        "G": G.clone(),
    }
    gamma = args.damping**0.5
    refresh = alternating_times(
        {"full": lambda: full.refresh(gamma), "doubly_factored": lambda: doubly.refresh(gamma)},
        args.repeats,
        args.warmup,
        device,
    )
    V = torch.randn(args.outputs, args.inputs + 1, generator=generator).to(device)
    apply = alternating_times(
        {"full": lambda: full.apply(V, gamma), "doubly_factored": lambda: doubly.apply(V, gamma)},
        args.repeats,
        1,
        device,
    )
    full_s, doubly_s = (summary(refresh[k])["median_s"] for k in ("full", "doubly_factored"))
    return {
        "full_s": full_s,
        "doubly_factored_s": doubly_s,
        "speedup": full_s / doubly_s,
        "apply_full_s": summary(apply["full"])["median_s"],
        "apply_doubly_factored_s": summary(apply["doubly_factored"])["median_s"],
        "refresh_samples": refresh,
        "inputs": args.inputs,
        "outputs": args.outputs,
        "channels": channels,
        "locations": locations,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }


def report(results: dict) -> str:
    return (
        f"layer {results['inputs']} ({results['channels']} x {results['locations']}) -> "
        f"{results['outputs']} on {results['device']}, {results['threads']} threads:\n"
        f"  refresh  full K-FAC {results['full_s']:.3f} s  doubly-factored "
        f"{results['doubly_factored_s']:.3f} s  ({results['speedup']:.1f}x)\n"
        f"  apply    full K-FAC {results['apply_full_s']:.3f} s  doubly-factored "
        f"{results['apply_doubly_factored_s']:.3f} s"
    )


register_benchmark(Benchmark("inversion", __doc__.splitlines()[0], add_arguments, run, report))
