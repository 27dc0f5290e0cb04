"""``natgrad data list`` and ``natgrad data fetch NAME``: the datasets and their download."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_data_parser(commands) -> None:
    parser = commands.add_parser("data", help="datasets: list, fetch")
    data_commands = parser.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("fetch", help="download a dataset with SHA-256 checks")
    fetch.add_argument("name", help="fashion-mnist or mnist")
    fetch.add_argument("--dest", help="target folder (default: ~/.cache/natgrad/NAME)")
    fetch.add_argument(
        "--mirror",
        help="base URL to download from (default: the official one, or $NATGRAD_DATA_MIRROR)",
    )
    fetch.set_defaults(handler=run_data_fetch)
    listing = data_commands.add_parser("list", help="list the datasets")
    listing.set_defaults(handler=run_data_list)


def run_data_fetch(args: argparse.Namespace) -> int:
    from natgrad.data import fetch_dataset

    path = fetch_dataset(
        args.name, Path(args.dest) if args.dest else None, args.mirror, report=print
    )
    print(f"{args.name} is in {path}")
    return 0


def run_data_list(args: argparse.Namespace) -> int:
    from natgrad.data import DATASETS

    for name, description in DATASETS.items():
        print(f"{name:15s} {description}")
    return 0


__all__ = ["add_data_parser", "run_data_fetch", "run_data_list"]
