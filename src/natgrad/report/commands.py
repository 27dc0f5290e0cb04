"""Command-line front of the report: ``natgrad report DIR``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_report_parser(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="write report.md, report.html and figures of a `natgrad compare` folder "
        "(or of `natgrad experiment nqm|batch-scaling`)",
    )
    parser.add_argument("folder", help="the --out folder of `natgrad compare` or the experiment")
    parser.set_defaults(handler=run_report)


def load_results(folder: Path) -> dict:
    """results.json of a comparison folder; ValueError if it is missing or unreadable."""
    path = Path(folder) / "results.json"
    if not path.exists():
        raise ValueError(
            f"{folder} holds no results.json; run `natgrad compare --out {folder}` first"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def run_report(args: argparse.Namespace) -> int:
    from natgrad.report.document import write_report
    from natgrad.report.scaling import is_scaling_results, write_scaling_report

    results = load_results(Path(args.folder))
    write = write_scaling_report if is_scaling_results(results) else write_report
    written = write(results, Path(args.folder))
    print(f"report: {written['markdown']} and {written['html']}")
    return 0
