"""A study folder's marker file: which workload it belongs to, checked before any write."""

from __future__ import annotations

import json
from pathlib import Path

MARKER_FILE = "natgrad-study.json"


def check_study_folder(out_dir: Path, workload: str) -> None:
    """Raise ValueError if ``out_dir`` holds studies of another workload (nothing written)."""
    marker = Path(out_dir) / MARKER_FILE
    if not marker.exists():
        return
    stored = json.loads(marker.read_text()).get("workload")
    if stored != workload:
        raise ValueError(
            f"{out_dir} holds studies of workload {stored!r}, not {workload!r}; "
            "use another --out folder"
        )


def mark_study_folder(out_dir: Path, workload: str) -> None:
    """Create ``out_dir`` and record its workload (idempotent)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / MARKER_FILE
    if not marker.exists():
        marker.write_text(json.dumps({"workload": workload}, indent=2) + "\n")
