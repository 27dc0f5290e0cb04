"""``natgrad report FOLDER``: its options, and reading what it renders (results.json of
a ``natgrad compare`` folder or of the ``nqm`` and ``batch-scaling`` experiments, or the
studies of a ``natgrad tune`` folder)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from natgrad.folders import RESULTS

RESULTS_KEYS = ("config", "studies", "ranking", "inclusion", "rank_flips", "warnings")
SCALING_KEYS = ("optimizers", "curves", "critical", "target")


def read_results(folder: Path) -> dict:
    """results.json of ``folder`` as it is; ValueError if it is missing or unreadable."""
    path = Path(folder) / "results.json"
    if not path.exists():
        raise ValueError(
            f"{folder} holds no results.json; run `natgrad compare --out {folder}` first"
        )
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (not the results of natgrad)") from None
    if not isinstance(results, dict):
        raise ValueError(
            f"{path} holds a JSON {type(results).__name__}, not the object natgrad writes"
        )
    return results


def write_results_report(folder: Path) -> dict[str, Path]:
    """The report of a folder with results.json: a comparison or a scaling experiment."""
    from natgrad.report.document import write_report
    from natgrad.report.scaling import is_scaling_results, write_scaling_report

    results = read_results(folder)
    if is_scaling_results(results):
        missing = [key for key in SCALING_KEYS if key not in results]
        if missing:
            raise ValueError(
                f"{Path(folder) / 'results.json'} lacks {', '.join(missing)}: not the results "
                f"of `natgrad experiment {results['experiment']}`; run it again"
            )
        return write_scaling_report(results, folder)
    return write_report(load_results(folder), folder)


def load_results(folder: Path) -> dict:
    """results.json of a comparison folder; ValueError if it is missing, unreadable or
    lacks the keys that `natgrad compare` writes."""
    path = Path(folder) / "results.json"
    results = read_results(folder)
    missing = [key for key in RESULTS_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        raise ValueError(
            f"{path} is not the results of `natgrad compare` (it lacks {', '.join(missing)}); "
            f"run `natgrad compare --out {folder}` again"
        )
    return results


def add_report_parser(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="write report.md, report.html and figures of a `natgrad compare`, "
        "`natgrad tune` or `natgrad experiment nqm|batch-scaling` folder",
    )
    parser.add_argument("folder", help="the --out folder of `natgrad compare` or `natgrad tune`")
    parser.add_argument(
        "--storage",
        help="storage URL of a tune folder made with --storage (default: study.db in FOLDER)",
    )
    parser.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    """A comparison (results.json) or a tune folder (its studies); else one line."""
    folder = Path(args.folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass the --out folder of compare or tune")
    if (folder / RESULTS).exists():  # compare, or the nqm / batch-scaling experiments
        written = write_results_report(folder)
    else:
        from natgrad.tune.summary import is_study_folder, study_folder_summary

        if not is_study_folder(folder) and args.storage is None:
            raise ValueError(
                f"{folder} holds neither results.json (natgrad compare) nor studies "
                f"(natgrad tune); run one of them with --out {folder} first"
            )
        from natgrad.report.study import write_study_report

        written = write_study_report(study_folder_summary(folder, args.storage), folder)
    print(f"report: {written['markdown']} and {written['html']}")
    return 0


__all__ = ["add_report_parser", "run_report", "load_results", "write_results_report"]
