"""``natgrad workloads`` and ``natgrad optimizers``: what the two catalogs hold.

The optimizer list can show the tuner's search spaces (``--spaces``), so these listings
sit at the command line's level, above optim/, workloads/ and tune/, not inside one of them.
"""

from __future__ import annotations

import argparse

from natgrad.commands import add_switch


def add_workloads_parser(commands) -> None:
    parser = commands.add_parser("workloads", help="list the workloads")
    parser.set_defaults(handler=run_workloads)


def run_workloads(args: argparse.Namespace) -> int:
    """Each workload's name, description, likelihood, budget, weight decay and target."""
    from natgrad.workloads import WORKLOADS

    for workload in WORKLOADS.values():
        print(f"{workload.name:20s} {workload.description}")
        print(
            f"{'':20s} likelihood={workload.likelihood_name} batch_size={workload.batch_size} "
            f"steps={workload.steps} weight_decay={workload.weight_decay} target={workload.target}"
        )
    return 0


def add_optimizers_parser(commands) -> None:
    parser = commands.add_parser("optimizers", help="list optimizers and their hyperparameters")
    add_switch(parser, "--spaces", "also show the search spaces")
    parser.set_defaults(handler=run_optimizers)


def run_optimizers(args: argparse.Namespace) -> int:
    """Each optimizer's kind, description and hyperparameters with their defaults."""
    from natgrad.optim import OPTIMIZERS

    for spec in OPTIMIZERS.values():
        kind = "second-order, closure" if spec.second_order else "first-order"
        print(f"{spec.name} ({kind}): {spec.description}")
        for hyper in spec.hyperparameters:
            print(f"    {hyper.name} = {hyper.default!r}  {hyper.help}")
        if args.spaces:
            print_spaces(spec.name)
    return 0


def print_spaces(optimizer: str) -> None:
    from natgrad.tune.spaces import list_spaces, load_space

    for space_name in list_spaces().get(optimizer, []):
        print(f"  search space '{space_name}':")
        for line in load_space(optimizer, space_name).describe().splitlines():
            print(f"      {line}")


__all__ = ["add_workloads_parser", "run_workloads", "add_optimizers_parser", "run_optimizers"]
