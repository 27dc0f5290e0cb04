"""``natgrad experiment [NAME [options]]``: list the experiments or run one.

Each experiment has its own subparser with its own options, so a flag two experiments
share is parsed by each one's definition.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from natgrad.commands import add_switch
from natgrad.folders import check_folder_kind
from natgrad.jsonio import dumps as json_dumps


def add_experiment_parser(commands) -> None:
    """One subparser per registered experiment: ``--out``, ``--quick`` and its options."""
    from natgrad.experiments.experiment import EXPERIMENTS

    parser = commands.add_parser("experiment", help="run one of the seed's experiments")
    names = parser.add_subparsers(
        dest="name", metavar="NAME", help="experiment name (omit to list them)"
    )
    for experiment in EXPERIMENTS.values():
        sub = names.add_parser(experiment.name, help=experiment.description)
        sub.add_argument("--out", help=f"output folder (default: runs/{experiment.name})")
        add_switch(sub, "--quick", "a smaller, faster version")
        for option in experiment.options:
            sub.add_argument(option.flag, type=option.type, help=option.help)
    parser.set_defaults(
        handler=run_experiment, name=None, reject_unrecognized=reject_unknown_options
    )


def run_experiment(args: argparse.Namespace) -> int:
    """Run ``args.name`` and print its results (long curves summarized); no name: list."""
    from natgrad.experiments.experiment import EXPERIMENTS

    if args.name is None:
        for experiment in EXPERIMENTS.values():
            print(f"{experiment.name:28s} {experiment.description}")
        return 0
    experiment = EXPERIMENTS.lookup(args.name)
    given = {option.dest: getattr(args, option.dest) for option in experiment.options}
    options = {dest: value for dest, value in given.items() if value is not None}
    out_dir = Path(args.out or f"runs/{args.name}")
    check_folder_kind(out_dir, experiment.folder_kind)  # before anything is written
    if not experiment.options:
        out_dir.mkdir(parents=True, exist_ok=True)
    results = experiment.run(out_dir, args.quick, **options)
    print(json_dumps(_without_long_lists(results), indent=2, sort_keys=True, default=str))
    print(f"figures and results.json (with every curve) in {out_dir}")
    return 0


def reject_unknown_options(args: argparse.Namespace, unrecognized: list[str]) -> None:
    """ValueError, one line naming the flags experiment ``args.name`` does not take and
    those it does; nothing for arguments that are not flags (argparse reports those)."""
    from natgrad.experiments.experiment import EXPERIMENTS, chosen_options

    if args.name is None:
        return
    flags = [text.partition("=")[0] for text in unrecognized if text.startswith("--")]
    if flags:
        given = {flag.removeprefix("--").replace("-", "_"): True for flag in flags}
        chosen_options(EXPERIMENTS.lookup(args.name), given)  # raises, naming them


def _without_long_lists(value, limit: int = 20):
    """``value`` with every list longer than ``limit`` replaced by a note of its length."""
    if isinstance(value, dict):
        return {key: _without_long_lists(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        if len(value) > limit:
            return f"[{len(value)} values, see results.json]"
        return [_without_long_lists(item, limit) for item in value]
    return value


__all__ = ["add_experiment_parser", "run_experiment", "reject_unknown_options"]
