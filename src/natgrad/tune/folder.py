"""A study folder's marker file: which workload it belongs to, checked before any write."""

from __future__ import annotations

import json
from pathlib import Path

from natgrad.folders import STUDY_MARKER, check_folder_kind
from natgrad.jsonio import write_json

MARKER_FILE = STUDY_MARKER


def check_study_folder(out_dir: Path, workload: str) -> None:
    """Raise ValueError if ``out_dir`` is a training run or holds studies of another
    workload (nothing written)."""
    out_dir = Path(out_dir)
    check_folder_kind(out_dir, "study")
    marker = out_dir / MARKER_FILE
    if not marker.exists():
        return
    try:
        stored = json.loads(marker.read_text()).get("workload")
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"{marker} is unreadable; use another --out folder") from None
    if stored != workload:
        raise ValueError(
            f"{out_dir} holds studies of workload {stored!r}, not {workload!r}; "
            "use another --out folder"
        )


def mark_study_folder(out_dir: Path, workload: str) -> None:
    """Create ``out_dir`` and record its workload (idempotent, atomic)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / MARKER_FILE
    if not marker.exists():
        write_json(marker, {"workload": workload})
