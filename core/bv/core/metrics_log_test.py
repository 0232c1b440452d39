"""Tests for bv.core.metrics_log: after a resume, metrics.jsonl reads as one run, whatever a kill left."""

from __future__ import annotations

import json
import os

import pytest

from bv.core.metrics_log import METRICS_FILE, MetricLog, MetricsWriteError


def _steps(workdir) -> list[int]:
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line)["step"] for line in f]


def test_a_resume_drops_the_steps_after_the_checkpoint(tmp_path):
    log = MetricLog(str(tmp_path), quiet=True)
    for step in range(1, 6):
        log.write(step, {"training_loss": 1.0 / step})
    MetricLog(str(tmp_path), resume_step=3, quiet=True).write(4, {"training_loss": 0.2})
    assert _steps(tmp_path) == [1, 2, 3, 4]


def test_a_line_cut_by_a_kill_is_dropped_with_a_warning(tmp_path, caplog):
    log = MetricLog(str(tmp_path), quiet=True)
    for step in (1, 2):
        log.write(step, {"training_loss": 0.5})
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 3, "training_lo')  # killed in the middle of the write
    with caplog.at_level("WARNING"):
        resumed = MetricLog(str(tmp_path), resume_step=2, quiet=True)
    assert "last line was cut short" in caplog.text
    resumed.write(3, {"training_loss": 0.25})
    assert _steps(tmp_path) == [1, 2, 3] and [r["step"] for r in resumed.read()] == [1, 2, 3]
    assert not [n for n in os.listdir(tmp_path) if "damaged" in n]  # a cut last line is expected, not damage


def test_a_damaged_line_in_the_middle_is_kept_aside(tmp_path, caplog):
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\n\x00\x00garbage\n{"step": 2}\n')
    with caplog.at_level("WARNING"):
        MetricLog(str(tmp_path), resume_step=2, quiet=True)
    assert "lines 2 are not JSON records" in caplog.text
    assert _steps(tmp_path) == [1, 2]
    copies = [n for n in os.listdir(tmp_path) if n.startswith(f"{METRICS_FILE}.damaged-")]
    assert len(copies) == 1 and "garbage" in (tmp_path / copies[0]).read_text()


def test_a_failed_write_is_a_clear_error(tmp_path):
    log = MetricLog(str(tmp_path), quiet=True)
    os.chmod(tmp_path, 0o500)
    (tmp_path / METRICS_FILE).unlink(missing_ok=True)
    try:
        if os.access(tmp_path, os.W_OK):  # root ignores permissions: simulate with a folder in the way
            os.chmod(tmp_path, 0o700)
            os.mkdir(tmp_path / METRICS_FILE)
        with pytest.raises(MetricsWriteError, match="Could not append to .*metrics.jsonl.*run again to resume"):
            log.write(1, {"training_loss": 1.0})
    finally:
        os.chmod(tmp_path, 0o700)
