"""docs/reliability.md stays true: at least 30 rows, each linked to a test that exists.

The rows' tests themselves run with the rest of the suite; this checks that no row
points at a test that was renamed or removed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
_LINK = re.compile(r"\[(test_\w+)\]\(\.\./([^)]+_test\.py)\)")


def _rows() -> list[tuple[int, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        found = re.match(r"\| (\d+) \|", line)
        if found:
            rows.append((int(found.group(1)), line))
    return rows


def test_the_catalogue_has_at_least_30_numbered_rows() -> None:
    numbers = [n for n, _ in _rows()]
    assert len(numbers) >= 30
    assert numbers == list(range(1, len(numbers) + 1)), "rows are numbered 1, 2, 3, ... without gaps"


def test_every_row_links_to_a_test_that_exists() -> None:
    missing = []
    for number, line in _rows():
        links = _LINK.findall(line)
        assert links, f"row {number} links to no test: {line}"
        for name, path in links:
            source = ROOT / path
            if not source.is_file() or not re.search(rf"^def {name}\(", source.read_text(), flags=re.M):
                missing.append(f"row {number}: {path}::{name}")
    assert not missing, "tests named in docs/reliability.md that do not exist: " + ", ".join(missing)
