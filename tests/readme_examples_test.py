"""Every ```python example in the packages' READMEs runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

READMES = sorted(Path(".").glob("*/README.md")) + sorted(Path(".").glob("*/*/README.md"))
EXAMPLES = [
    pytest.param(block, id=f"{path}#{i}")
    for path in READMES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S))
]


def test_every_package_readme_has_an_example() -> None:
    documented = {str(p.parent) for p in READMES if "```python" in p.read_text()}
    packages = {
        "core",
        "models/vit",
        "models/mixer",
        "models/bit",
        "projects/lit",
        "projects/uvim",
        "projects/distill",
        "projects/sam",
    }
    assert packages <= documented, f"READMEs without a Python example: {sorted(packages - documented)}"


@pytest.mark.parametrize("code", EXAMPLES)
def test_readme_example_runs(code: str) -> None:
    exec(compile(code, "<README example>", "exec"), {"__name__": "__readme__"})
