"""The worked examples of docs/add-a-model.md and docs/add-a-task.md run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

GUIDES = ["docs/add-a-model.md", "docs/add-a-task.md"]


def _example(path: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", Path(path).read_text(), flags=re.S)
    assert len(blocks) == 1, f"{path} should hold one worked example, found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfds")  # MNIST-5k is built here once, for both guides


@pytest.mark.parametrize("guide", GUIDES)
def test_the_guides_example_runs(
    guide: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    code = _example(guide)
    assert len(code.strip().splitlines()) <= 45, "keep the worked example short"
    # A real module: Flax's dataclasses look their module up in sys.modules.
    module = types.ModuleType(f"guide_{Path(guide).stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, guide, "exec"), module.__dict__)
    out = capsys.readouterr().out
    assert "test accuracy" in out
    if guide.endswith("add-a-model.md"):
        assert "{'pre_logits': (2, 16)}" in out
