"""Command-line front of the tuning lab: ``natgrad tune`` and ``natgrad compare``."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from natgrad.tune.folder import check_study_folder, mark_study_folder


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `natgrad tune` and `natgrad compare` share: the workload, K trials of S
    steps, where the studies live and who runs them."""
    parser.add_argument(
        "--workload", required=True, help="workload name, required (see `natgrad workloads`)"
    )
    parser.add_argument(
        "--trials", type=int, required=True, help="total trials per study (K), required"
    )
    parser.add_argument(
        "--steps", type=int, required=True, help="training steps per trial, required"
    )
    parser.add_argument(
        "--out", required=True, help="study folder, required (holds study.db by default)"
    )
    parser.add_argument(
        "--storage",
        help="SQLAlchemy URL of a shared storage, e.g. postgresql://user@host/db "
        "(default: sqlite study.db in --out)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="local worker processes (default: 1)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the Halton sequence (default: 0)"
    )
    parser.add_argument("--batch-size", type=int, help="batch size (default: workload's)")


def add_tune_parser(commands) -> None:
    parser = commands.add_parser(
        "tune", help="quasi-random search of one optimizer's space (an Optuna study)"
    )
    add_study_arguments(parser)
    parser.add_argument(
        "--optimizer", required=True, help="optimizer name, required (see `natgrad optimizers`)"
    )
    parser.add_argument(
        "--space", default="full", help="search space: restricted or full (default: full)"
    )
    parser.set_defaults(handler=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from natgrad.tune.launch import check_workers, run_studies
    from natgrad.tune.storage import redact, storage_url
    from natgrad.tune.study import StudySpec, check_trials, trial_records

    spec = StudySpec(
        args.workload, args.optimizer, args.space, args.steps, args.seed, args.batch_size
    )
    spec.validate()
    check_trials(args.trials)
    check_workers(args.workers)
    out_dir = Path(args.out)
    check_study_folder(out_dir, args.workload)
    if args.storage is None:
        mark_study_folder(out_dir, args.workload)
    url = storage_url(out_dir, args.storage)
    (study,) = run_studies(url, [spec], args.trials, args.workers)
    if args.storage is not None:
        mark_study_folder(out_dir, args.workload)
    records = trial_records(study, args.trials)
    print_study_summary(spec, records, recovered_trials(study))
    print(f"study {spec.name!r} in {redact(url)}")
    print(f"browse it with: optuna-dashboard {redact(url)}")
    return 0


def recovered_trials(study) -> int:
    """Trials whose process stopped (killed, interrupted) and whose point ran again."""
    from natgrad.tune.study import trial_status

    return sum(trial_status(t) in ("lost", "interrupted") for t in study.get_trials(deepcopy=False))


def print_study_summary(spec, records: list[dict], recovered: int = 0) -> None:
    completed = [r for r in records if r["value"] is not None]
    failed = len(records) - len(completed)
    recovered_text = (
        f", {recovered} recovered from stopped processes (run again)" if recovered else ""
    )
    print(f"{spec.name}: {len(records)} trials, {failed} failed{recovered_text}")
    if completed:
        best = min(completed, key=lambda r: r["value"])
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in best["hyperparameters"].items()
        )
        print(f"best {spec.metric} {best['value']:.4g} (point {best['point_index']}): {shown}")


def add_compare_parser(commands) -> None:
    parser = commands.add_parser(
        "compare", help="tune several optimizers in both spaces, re-run the best, analyse"
    )
    add_study_arguments(parser)
    parser.add_argument(
        "--optimizers",
        default="sgd,momentum,nesterov,rmsprop,adam,nadam",
        help="comma-separated optimizer names (default: %(default)s)",
    )
    parser.add_argument(
        "--space", default="restricted,full", help="comma-separated spaces (default: %(default)s)"
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="re-runs of each best trial (default: 3)"
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)"
    )
    parser.set_defaults(handler=run_compare_command)


def split_names(text: str, what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"{what} must name at least one entry, got {text!r}")
    return list(dict.fromkeys(names))


def compare_config(args: argparse.Namespace):
    """The CompareConfig the options give: each option sets the field of its name, the
    comma-separated lists are split."""
    from natgrad.tune.compare import CompareConfig

    lists = {
        "optimizers": split_names(args.optimizers, "--optimizers"),
        "spaces": split_names(args.space, "--space"),
    }
    plain = {f.name: getattr(args, f.name) for f in fields(CompareConfig) if f.name not in lists}
    return CompareConfig(**plain, **lists)


def run_compare_command(args: argparse.Namespace) -> int:
    from natgrad.tune.compare import run_compare

    config = compare_config(args)
    results = run_compare(config, Path(args.out), storage=args.storage, workers=args.workers)
    print_ranking(results)
    print(
        f"results in {Path(args.out) / 'results.json'}; write the report with: "
        f"natgrad report {args.out}"
    )
    return 0


def print_ranking(results: dict) -> None:
    metric = results["config"]["test_metric"]
    for space in results["config"]["spaces"]:
        print(f"\n{space} space, {metric} of the best trial re-run (mean, 95% interval):")
        for entry in results["ranking"][space]:
            low, high = entry["interval"]
            print(
                f"  {entry['rank']}. {entry['optimizer']:10s} {entry['mean']:.4f} "
                f"[{low:.4f}, {high:.4f}]  rank interval {entry['rank_interval']}"
            )
    for message in results["warnings"]:
        print(f"warning: {message}")
