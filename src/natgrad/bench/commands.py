"""``natgrad bench NAME [options] [--json]``: run one registered benchmark."""

from __future__ import annotations

import argparse
import json

from natgrad.bench.benchmark import load_benchmarks


def add_bench_parser(commands) -> None:
    parser = commands.add_parser(
        "bench", help="benchmarks on this machine (inversion, step, time-to-target)"
    )
    names = parser.add_subparsers(dest="benchmark", required=True, metavar="NAME")
    for benchmark in load_benchmarks().values():
        sub = names.add_parser(benchmark.name, help=benchmark.description)
        benchmark.add_arguments(sub)
        sub.add_argument(
            "--json",
            action="store_true",
            help="print the figures as one JSON line (default: a table)",
        )
        sub.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    benchmark = load_benchmarks().lookup(args.benchmark)
    results = benchmark.run(args)
    if args.json:
        print(json.dumps(results, default=str))
    elif benchmark.report is not None:
        print(benchmark.report(results))
    return 0


__all__ = ["add_bench_parser", "run_bench"]
