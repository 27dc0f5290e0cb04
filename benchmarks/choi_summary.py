"""Summarise a `natgrad compare` folder against Choi et al.'s qualitative findings.

Usage: .venv/bin/python benchmarks/choi_summary.py runs/choi_fmnist_mlp

Prints the per-space table (mean test error over the re-run seeds, 95% Student-t
interval, best validation error of the study, failed trials) and checks:
- restricted spaces: Adam/NAdam need not beat Momentum/Nesterov (reported either way);
- full spaces: Adam and NAdam at least as good as Momentum (and Nesterov), which is at
  least as good as SGD, "within the intervals" meaning the first is not worse than the
  second with the two intervals apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def not_worse(results: dict, space: str, first: str, second: str) -> tuple[bool, str]:
    """first is not worse than second unless first's interval lies entirely above second's."""
    a = results["studies"][first][space]["test"]
    b = results["studies"][second][space]["test"]
    holds = not a["interval"][0] > b["interval"][1]
    shown = f"{first} {a['mean']:.4f} vs {second} {b['mean']:.4f}"
    return holds, shown


def strictly_better(results: dict, space: str, first: str, second: str) -> bool:
    a = results["studies"][first][space]["test"]
    b = results["studies"][second][space]["test"]
    return a["interval"][1] < b["interval"][0]


def print_table(results: dict, space: str) -> None:
    print(f"\n{space} space")
    print("| rank | optimizer | mean test error | 95% interval | best val error | failed |")
    print("|---|---|---|---|---|---|")
    for entry in results["ranking"][space]:
        study = results["studies"][entry["optimizer"]][space]
        low, high = entry["interval"]
        print(
            f"| {entry['rank']} | {entry['optimizer']} | {entry['mean']:.4f} | "
            f"[{low:.4f}, {high:.4f}] | {study['best']['value']:.4f} | "
            f"{study['failed']}/{len(study['trials'])} |"
        )


def main(folder: str) -> None:
    results = json.loads((Path(folder) / "results.json").read_text())
    for space in results["config"]["spaces"]:
        print_table(results, space)
    print("\nrestricted: does an adaptive method beat its momentum method beyond the intervals?")
    for adaptive, base in (("adam", "momentum"), ("nadam", "nesterov"), ("adam", "sgd")):
        print(
            f"  {adaptive} beats {base}: {strictly_better(results, 'restricted', adaptive, base)}"
        )
    print("\nfull: the inclusion order within the intervals")
    for first, second in (
        ("adam", "momentum"),
        ("nadam", "momentum"),
        ("nadam", "nesterov"),
        ("momentum", "sgd"),
        ("nesterov", "sgd"),
        ("rmsprop", "momentum"),
    ):
        holds, shown = not_worse(results, "full", first, second)
        print(f"  {first} not worse than {second}: {holds} ({shown})")
    print("\nrank flips restricted -> full:", results["rank_flips"] or "none")
    for message in results["warnings"]:
        print(f"warning: {message}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/choi_fmnist_mlp")
