"""A JSON parser that refuses NaN, Infinity and -Infinity, as jq and browsers do."""

from __future__ import annotations

import json
from pathlib import Path


def refuse(token: str):
    raise ValueError(f"non-standard JSON token {token}")


def loads(text: str):
    return json.loads(text, parse_constant=refuse)


def load_file(path: Path):
    return loads(Path(path).read_text())


def load_lines(path: Path) -> list:
    return [loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
