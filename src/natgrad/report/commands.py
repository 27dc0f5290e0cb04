"""Reading what ``natgrad report`` renders: results.json of a ``natgrad compare`` folder,
or of the ``nqm`` and ``batch-scaling`` experiments."""

from __future__ import annotations

import json
from pathlib import Path

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
