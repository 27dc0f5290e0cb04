"""The natgrad command line: train, tune, compare, report, experiment, demo, data, lists."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from natgrad.jsonio import dumps as json_dumps


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


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
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out (default: off)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (default: off)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as JSON (default: a text line)"
    )
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


DIST_TIMEOUT_RANGE_S = (1.0, 7 * 24 * 3600.0)


def check_dist_timeout(seconds: float) -> None:
    """UsageError unless ``seconds`` is a finite time torch's process group can wait."""
    low, high = DIST_TIMEOUT_RANGE_S
    if not low <= seconds <= high:  # False for NaN as well
        raise UsageError(
            f"--dist-timeout must be a finite number of seconds from {low:g} to {high:g} "
            f"(one week), got {seconds}"
        )


def train_config(args: argparse.Namespace):
    from natgrad.optim.optimizer_spec import get_optimizer_spec, parse_assignments
    from natgrad.train import RunConfig

    spec = get_optimizer_spec(args.optimizer)
    return RunConfig(
        workload=args.workload,
        optimizer=args.optimizer,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        hyperparameters=parse_assignments(spec, args.set),
        data_dir=args.data_dir,
        device=args.device,
    )


def launch_ranks(args: argparse.Namespace, config) -> int:
    """Check everything a rank would refuse, then start ``--nproc`` ranks with torchrun."""
    from natgrad.distributed import launch
    from natgrad.optim.optimizer_spec import get_optimizer_spec
    from natgrad.train.runner import check_run_folder, check_shardable

    resolved = config.resolved()
    check_shardable(resolved, get_optimizer_spec(config.optimizer), args.nproc)
    check_run_folder(Path(args.out), resolved, args.resume, args.overwrite)
    return launch.launch(args.nproc, args.argv)  # each rank sees torchrun's variables


def train_on_this_rank(args: argparse.Namespace, config) -> int:
    """One rank of a torchrun launch: join the process group, train, leave."""
    from natgrad.distributed import launch

    launch.stop_when_launcher_dies()
    launch.join_process_group(launch.rank_device(config.device), args.dist_timeout)
    try:
        return train_and_report(args, config, quiet=launch.environment_rank() != 0)
    finally:
        launch.leave_process_group()


def train_and_report(args: argparse.Namespace, config, quiet: bool = False) -> int:
    from natgrad.train import train

    result = train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=True)
    if quiet:
        return {"completed": 0, "diverged": 0, "interrupted": 130}[result.status]
    summary = {"status": result.status, "step": result.step, "final": result.final}
    if result.diverged_at_step is not None:
        summary["diverged_at_step"] = result.diverged_at_step
    if args.json:
        print(json_dumps(summary, indent=2, sort_keys=True))
    else:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.final.items() if isinstance(v, float))
        print(f"{result.status} at step {result.step}: {shown}")
        print(f"run folder: {args.out}")
    return {"completed": 0, "diverged": 0, "interrupted": 130}[result.status]


def add_workloads_parser(commands) -> None:
    parser = commands.add_parser("workloads", help="list the workloads")
    parser.set_defaults(handler=run_workloads)


def run_workloads(args: argparse.Namespace) -> int:
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
    parser.add_argument(
        "--spaces", action="store_true", help="also show the search spaces (default: off)"
    )
    parser.set_defaults(handler=run_optimizers)


def run_optimizers(args: argparse.Namespace) -> int:
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


def add_experiment_parser(commands) -> None:
    """``natgrad experiment [NAME [options]]``: one subparser per experiment, with its own
    options (a flag two experiments share is defined by each)."""
    from natgrad.experiments.experiment import EXPERIMENTS

    parser = commands.add_parser("experiment", help="run one of the seed's experiments")
    names = parser.add_subparsers(
        dest="name", metavar="NAME", help="experiment name (omit to list them)"
    )
    for experiment in EXPERIMENTS.values():
        sub = names.add_parser(experiment.name, help=experiment.description)
        sub.add_argument("--out", help=f"output folder (default: runs/{experiment.name})")
        sub.add_argument(
            "--quick", action="store_true", help="a smaller, faster version (default: off)"
        )
        for option in experiment.options:
            sub.add_argument(option.flag, type=option.type, help=option.help)
    parser.set_defaults(handler=run_experiment, name=None)


def run_experiment(args: argparse.Namespace) -> int:
    from natgrad.experiments.experiment import EXPERIMENTS

    if args.name is None:
        for experiment in EXPERIMENTS.values():
            print(f"{experiment.name:28s} {experiment.description}")
        return 0
    experiment = EXPERIMENTS.lookup(args.name)
    given = {option.dest: getattr(args, option.dest) for option in experiment.options}
    options = {dest: value for dest, value in given.items() if value is not None}
    out_dir = Path(args.out or f"runs/{args.name}")
    if not experiment.options:
        out_dir.mkdir(parents=True, exist_ok=True)
    results = experiment.run(out_dir, args.quick, **options)
    print(json_dumps(_without_long_lists(results), indent=2, sort_keys=True, default=str))
    print(f"figures and results.json (with every curve) in {out_dir}")
    return 0


def reject_unrecognized(parser: argparse.ArgumentParser, args, unrecognized: list[str]) -> None:
    """argparse's error for arguments no parser took; for an experiment, one line naming
    the flags it does not take and those it does (a ValueError)."""
    if getattr(args, "command", None) == "experiment" and args.name is not None:
        from natgrad.experiments.experiment import EXPERIMENTS, chosen_options

        flags = [text.partition("=")[0] for text in unrecognized if text.startswith("--")]
        if flags:
            given = {flag.removeprefix("--").replace("-", "_"): True for flag in flags}
            chosen_options(EXPERIMENTS.lookup(args.name), given)  # raises, naming them
    parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")


def _without_long_lists(value, limit: int = 20):
    """``value`` with every list longer than ``limit`` replaced by a note of its length."""
    if isinstance(value, dict):
        return {key: _without_long_lists(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        if len(value) > limit:
            return f"[{len(value)} values, see results.json]"
        return [_without_long_lists(item, limit) for item in value]
    return value


def add_demo_parser(commands) -> None:
    from natgrad.demo import DEFAULT_WORKLOAD

    parser = commands.add_parser("demo", help="a short comparison of optimizers, with a report")
    parser.add_argument(
        "--out", default="runs/demo", help="folder of the demo's report (default: runs/demo)"
    )
    parser.add_argument(
        "--workload", default=None, help=f"workload to compare on (default: {DEFAULT_WORKLOAD})"
    )
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from natgrad.demo import run_demo as demo

    demo(Path(args.out), workload=args.workload)
    return 0


from natgrad.bench.commands import add_bench_parser  # noqa: E402
from natgrad.report.commands import add_report_parser  # noqa: E402
from natgrad.tune.commands import add_compare_parser, add_tune_parser  # noqa: E402

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
    parser = argparse.ArgumentParser(prog="natgrad", description=__doc__)
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
