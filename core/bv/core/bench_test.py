"""``bv bench`` and the progress bars."""

from __future__ import annotations

import pytest

from bv.core import bench, command, progress


def test_bench_times_a_fresh_model(capsys: pytest.CaptureFixture) -> None:
    command.main(["bench", "vit(variant='mu/4', resolution=16, num_classes=10)", "--batch-size", "4", "--steps", "3"])
    out = capsys.readouterr().out
    assert "vit (" in out and "images/s" in out and "batch 4 at 16x16" in out


def test_bench_errors_are_one_paragraph(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command.main(["bench", "vit(variant='mu/4', resolution=16)", "--steps", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("bv bench: error: ") and "must be positive" in err
    with pytest.raises(bench.BenchError, match="as keywords"):
        bench.load_for_bench("vit('mu/4')")


def test_progress_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BV_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "true")
    items = [1, 2, 3]
    assert progress.bar(items) is items  # CI: no bar, the iterable itself
    monkeypatch.setenv("BV_PROGRESS", "1")
    shown = progress.bar(items, total=3)
    assert shown is not items and list(shown) == items
    monkeypatch.setenv("BV_PROGRESS", "0")
    monkeypatch.delenv("CI")
    assert progress.bar(items) is items
