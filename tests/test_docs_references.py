"""Every citation of the reference document in the sources names a section it has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"(\S*)REFERENCES\.md (?:s\.|section )(\d+)")


def _citations() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for prefix, section in CITATION.findall(path.read_text()):
            found.append((str(path.relative_to(ROOT)), prefix.lstrip("(`"), section))
    return found


def test_cited_reference_sections_exist_in_docs_references():
    citations = _citations()
    assert len(citations) >= 15
    headings = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "REFERENCES.md").read_text(), re.M))
    wrong = [(path, prefix, section) for path, prefix, section in citations if prefix != "docs/"]
    missing = [(path, section) for path, _, section in citations if section not in headings]
    assert not wrong, f"citations without the docs/ path: {wrong}"
    assert not missing, f"sections that docs/REFERENCES.md does not have: {missing}"
