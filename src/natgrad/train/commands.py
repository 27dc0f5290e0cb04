"""``natgrad train``: one workload with one optimizer into a run folder, on one process or
on ``--nproc`` data-parallel ranks launched with torchrun."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from natgrad.commands import UsageError, add_switch
from natgrad.jsonio import dumps as json_dumps

DIST_TIMEOUT_RANGE_S = (1.0, 7 * 24 * 3600.0)
# options that are RunConfig fields of the same name
RUN_CONFIG_OPTIONS = (
    "workload",
    "optimizer",
    "steps",
    "batch_size",
    "seed",
    "eval_every",
    "checkpoint_every",
    "data_dir",
    "device",
)
EXIT_STATUS = {"completed": 0, "diverged": 0, "interrupted": 130}


def add_train_parser(commands) -> None:
    parser = commands.add_parser("train", help="train one workload with one optimizer")
    parser.add_argument(
        "--workload", required=True, help="workload name, required (see `natgrad workloads`)"
    )
    parser.add_argument(
        "--optimizer", required=True, help="optimizer name, required (see `natgrad optimizers`)"
    )
    parser.add_argument("--steps", type=int, help="number of optimizer steps (default: workload's)")
    parser.add_argument("--out", required=True, help="run folder, required")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter value, repeatable (default: the optimizer's defaults, "
        "see `natgrad optimizers`)",
    )
    parser.add_argument(
        "--batch-size", type=int, help="examples per step (default: the workload's)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the model and the batches (default: 0)"
    )
    parser.add_argument(
        "--eval-every", type=int, help="steps between evaluations (default: the workload's)"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="steps between checkpoints (default: 0 = only at the end and on a signal)",
    )
    parser.add_argument(
        "--data-dir",
        help="folder holding the dataset files, the only place looked at when given "
        "(default: $NATGRAD_DATA, system packages, ~/.cache/natgrad)",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps (default: cpu)"
    )
    add_switch(parser, "--resume", "continue the run in --out")
    add_switch(parser, "--overwrite", "replace the run in --out")
    add_switch(parser, "--json", "print the summary as JSON", default="a text line")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel ranks on this machine, launched with torchrun; each takes "
        "1/N of every batch (default: %(default)s)",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="with several ranks: a rank waiting this long for the others stops "
        "(default: %(default)s)",
    )
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Train here, on this torchrun rank, or launch ``--nproc`` ranks (``args.argv`` is
    the command line they repeat)."""
    from natgrad.distributed import launch

    check_dist_timeout(args.dist_timeout)
    config = train_config(args)
    if launch.launched_by_torchrun():
        return train_on_this_rank(args, config)
    if args.nproc < 1:
        raise UsageError(f"--nproc must be an integer >= 1, got {args.nproc}")
    if args.nproc > 1:
        return launch_ranks(args, config)
    return train_and_report(args, config)


def check_dist_timeout(seconds: float) -> None:
    """UsageError unless ``seconds`` is a finite time torch's process group can wait."""
    low, high = DIST_TIMEOUT_RANGE_S
    if not low <= seconds <= high:  # False for NaN as well
        raise UsageError(
            f"--dist-timeout must be a finite number of seconds from {low:g} to {high:g} "
            f"(one week), got {seconds}"
        )


def train_config(args: argparse.Namespace):
    """The RunConfig of the parsed options, ``--set`` typed by the optimizer's defaults."""
    from natgrad.optim.optimizer_spec import get_optimizer_spec, parse_assignments
    from natgrad.train import RunConfig

    spec = get_optimizer_spec(args.optimizer)
    same_names = {name: getattr(args, name) for name in RUN_CONFIG_OPTIONS}
    return RunConfig(**same_names, hyperparameters=parse_assignments(spec, args.set))


def launch_ranks(args: argparse.Namespace, config) -> int:
    """Check everything a rank would refuse, then start ``--nproc`` ranks with torchrun."""
    from natgrad.distributed import launch
    from natgrad.optim.optimizer_spec import get_optimizer_spec
    from natgrad.train.runner import check_run_folder, check_shardable

    resolved = config.resolved()
    check_shardable(resolved, get_optimizer_spec(config.optimizer), args.nproc)
    check_run_folder(Path(args.out), resolved, args.resume, args.overwrite)
    return launch.launch(args.nproc, args.argv)  # each rank sees torchrun's variables


def train_on_this_rank(args: argparse.Namespace, config) -> NoReturn:
    """One rank of a torchrun launch: join the process group, train, leave, and end the
    process with the run's exit status (:func:`natgrad.distributed.launch.exit_rank`)."""
    from natgrad.distributed import launch

    launch.stop_when_launcher_dies()
    launch.join_process_group(launch.rank_device(config.device), args.dist_timeout)
    try:
        status = train_and_report(args, config, quiet=launch.environment_rank() != 0)
    finally:
        launch.leave_process_group()
    launch.exit_rank(status)


def train_and_report(args: argparse.Namespace, config, quiet: bool = False) -> int:
    """Train, print the summary (unless ``quiet``) and return the exit status."""
    from natgrad.train import train

    result = train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=True)
    if quiet:
        return EXIT_STATUS[result.status]
    summary = {"status": result.status, "step": result.step, "final": result.final}
    if result.diverged_at_step is not None:
        summary["diverged_at_step"] = result.diverged_at_step
    if args.json:
        print(json_dumps(summary, indent=2, sort_keys=True))
    else:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.final.items() if isinstance(v, float))
        print(f"{result.status} at step {result.step}: {shown}")
        print(f"run folder: {args.out}")
    return EXIT_STATUS[result.status]


__all__ = ["add_train_parser", "run_train", "check_dist_timeout", "train_config"]
