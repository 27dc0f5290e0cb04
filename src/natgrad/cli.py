"""The natgrad command line: train, tune, compare, report, experiment, demo, data, lists.

Each subcommand is owned by its package's ``commands`` module (``add_<name>_parser``
adds it and sets its handler); this module composes them, applies ``--threads`` and
maps errors to one line and an exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from natgrad.bench.commands import add_bench_parser
from natgrad.commands import UsageError
from natgrad.data.commands import add_data_parser
from natgrad.demo import add_demo_parser
from natgrad.experiments.commands import add_experiment_parser
from natgrad.listings import add_optimizers_parser, add_workloads_parser
from natgrad.report.commands import add_report_parser
from natgrad.train.commands import add_train_parser
from natgrad.tune.commands import add_compare_parser, add_tune_parser

PARSER_BUILDERS: list[Callable] = [
    add_train_parser,
    add_tune_parser,
    add_compare_parser,
    add_report_parser,
    add_workloads_parser,
    add_optimizers_parser,
    add_data_parser,
    add_experiment_parser,
    add_bench_parser,
    add_demo_parser,
]


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` to this process and, through OMP_NUM_THREADS, to its workers."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    import os

    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natgrad", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads, also for worker processes (default: torch's choice; "
        "1 is fastest for small models or when other processes share the cores)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add_parser in PARSER_BUILDERS:
        add_parser(commands)
    return parser


def reject_unrecognized(parser: argparse.ArgumentParser, args, unrecognized: list[str]) -> None:
    """argparse's error for arguments no parser took, after the subcommand's own check
    (``reject_unrecognized`` in its defaults: one line, a ValueError) where it has one."""
    own_check = getattr(args, "reject_unrecognized", None)
    if own_check is not None:
        own_check(args, unrecognized)
    parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unrecognized = parser.parse_known_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    from natgrad.distributed import RankFailure
    from natgrad.train.runner import RunFolderError, RunWriteError

    try:
        if unrecognized:
            reject_unrecognized(parser, args, unrecognized)
        set_threads(args.threads)
        return args.handler(args)
    except (ValueError, UsageError, RunFolderError, OSError) as error:
        print(f"natgrad {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RunWriteError as failure:
        print(f"natgrad {args.command}: error: {failure}", file=sys.stderr)
        return 1
    except RankFailure as failure:
        print(f"natgrad {args.command}: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        # Commands that keep partial work say what was kept (tune, compare).
        text = str(interrupt) if str(interrupt).startswith("interrupted") else "interrupted"
        print(f"natgrad {args.command}: {text}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
