"""Reading what ``natgrad report`` renders: results.json of a ``natgrad compare`` folder."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_KEYS = ("config", "studies", "ranking", "inclusion", "rank_flips", "warnings")


def load_results(folder: Path) -> dict:
    """results.json of a comparison folder; ValueError if it is missing, unreadable or
    lacks the keys that `natgrad compare` writes."""
    path = Path(folder) / "results.json"
    if not path.exists():
        raise ValueError(
            f"{folder} holds no results.json; run `natgrad compare --out {folder}` first"
        )
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    missing = [key for key in RESULTS_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        raise ValueError(
            f"{path} is not the results of `natgrad compare` (it lacks {', '.join(missing)}); "
            f"run `natgrad compare --out {folder}` again"
        )
    return results
