"""Standard JSON for every file natgrad writes: no NaN or Infinity tokens.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which jq,
browsers and most other languages refuse. Here a non-finite float becomes ``null``; in
a dict it also gets a reason under the key ``"non_finite"`` (``{"val_loss": "NaN"}``),
so a reader can tell a diverged value from one that was never measured. In a list the
position keeps its ``null`` (a list has no place for a reason).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

NON_FINITE_KEY = "non_finite"


def non_finite_name(value: float) -> str:
    """The JSON5/JavaScript spelling of a non-finite float: NaN, Infinity or -Infinity."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def is_non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def standard(value: Any) -> Any:
    """``value`` with each non-finite float replaced by None (and its reason in dicts).

    Tuples become lists and numpy scalars become Python numbers; anything else that
    json cannot write raises TypeError as usual.
    """
    if isinstance(value, dict):
        converted, reasons = {}, {}
        for key, item in value.items():
            item = _plain_number(item)
            if is_non_finite(item):
                reasons[str(key)] = non_finite_name(item)
                converted[key] = None
            else:
                converted[key] = standard(item)
        if reasons:
            previous = converted.get(NON_FINITE_KEY)
            converted[NON_FINITE_KEY] = {**(previous or {}), **reasons}
        return converted
    if isinstance(value, (list, tuple)):
        return [
            None if is_non_finite(item) else standard(item) for item in map(_plain_number, value)
        ]
    value = _plain_number(value)
    return None if is_non_finite(value) else value


def _plain_number(value: Any) -> Any:
    """numpy and torch scalars as Python numbers (others unchanged)."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` of :func:`standard` (value), refusing any non-finite token."""
    return json.dumps(standard(value), allow_nan=False, **options)


def write_json(path: Path, value: Any, indent: int | None = 2) -> None:
    """Write ``value`` as standard JSON to ``path`` atomically (temporary file, rename)."""
    write_text_atomically(Path(path), dumps(value, indent=indent, sort_keys=True) + "\n")


def replace_atomically(
    path: Path, write: Callable[[IO], Any], binary: bool = False, suffix: str = ".tmp"
) -> None:
    """Let ``write`` fill a temporary file beside ``path``, fsync it, then rename it over
    ``path``: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` beside ``path``, fsync, then rename over ``path``."""
    replace_atomically(path, lambda stream: stream.write(text))
