"""Faults around a real ``bv-train`` run: SIGTERM, a full disk, a second run on the workdir, a damaged checkpoint.

Each leaves the workdir usable: the run that follows ends bitwise where an
uninterrupted run did, or (when nothing can be resumed) nothing is changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest
from training_runs import STEPS, Run, assert_same_run

from bv.core import checkpoint


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run = Run(workdir, data_dir)
    assert run.finish() == 0, run.output
    return workdir


def test_sigterm_checkpoints_and_exits_then_resumes_bitwise(uninterrupted, data_dir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "preempted"
    run = Run(workdir, data_dir)
    assert run.wait_for("[step 3]"), run.output
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 128 + signal.SIGTERM, run.output
    latest = checkpoint.latest(str(workdir))
    assert latest is not None
    stopped_at = checkpoint.read_metadata(latest)["step"]
    assert 3 <= stopped_at < STEPS  # the step it stopped at was saved, not only an older one
    assert f"Received SIGTERM at step {stopped_at}" in run.output and "Run the same command to resume" in run.output
    resumed = Run(workdir, data_dir)
    assert resumed.finish() == 0, resumed.output
    assert f"Resuming from {latest} at step {stopped_at}" in resumed.output
    assert_same_run(workdir, uninterrupted)


def test_a_second_run_is_refused_and_a_full_disk_stops_the_first_cleanly(
    uninterrupted, data_dir: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "busy"
    # The first run will find the disk full when it writes checkpoint 8 (an injected ENOSPC).
    first = Run(workdir, data_dir, fail_at="checkpoint.write@8")
    assert first.wait_for("[step 1]"), first.output
    first.proc.send_signal(signal.SIGSTOP)  # keep it alive, holding the workdir, while the second one starts
    try:
        second = Run(workdir, data_dir)
        assert second.finish() == 2, second.output
        assert f"is in use by another bv-train run (pid {first.proc.pid} on host" in second.output
        assert "Traceback" not in second.output
    finally:
        first.proc.send_signal(signal.SIGCONT)
    assert first.finish() == 2, first.output
    assert "Checkpoint 8 could not be written" in first.output and "the disk is full" in first.output
    assert "ckpt-000000006) is intact: run again to resume from it" in first.output
    kept = checkpoint.latest(str(workdir))
    assert kept is not None and checkpoint.read_metadata(kept)["step"] == 6
    # Space freed: the same command resumes from step 6 and ends where an uninterrupted run did.
    resumed = Run(workdir, data_dir)
    assert resumed.finish() == 0, resumed.output
    assert "at step 6" in resumed.output
    assert_same_run(workdir, uninterrupted)


def test_a_damaged_only_checkpoint_stops_the_run_and_nothing_is_changed(
    uninterrupted, data_dir: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "damaged"
    shutil.copytree(uninterrupted, workdir)
    (path,) = checkpoint.list_checkpoints(str(workdir))  # keep_ckpt=1: the only one kept
    shards = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(path, "params")) for n in names]
    largest = max(shards, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)
    before = _snapshot(workdir)
    run = Run(workdir, data_dir)
    assert run.finish() == 2, run.output
    assert f"No checkpoint of {workdir} can be read" in run.output and "nothing was changed" in run.output
    assert "Traceback" not in run.output
    assert _snapshot(workdir) == before  # metrics.jsonl not cut back, the checkpoint not overwritten
