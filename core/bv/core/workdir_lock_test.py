"""Tests for bv.core.workdir_lock: a live holder refuses a second run; a killed holder's lock is taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from bv.core import workdir_lock

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from bv.core import workdir_lock
    with workdir_lock.hold(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
)


def _start_holder(workdir: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, workdir], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_while_the_first_holds_the_workdir(tmp_path):
    workdir = str(tmp_path / "run")
    holder = _start_holder(workdir)
    try:
        with pytest.raises(workdir_lock.WorkdirLockedError) as err:
            with workdir_lock.hold(workdir):
                pytest.fail("the lock was granted twice")
        message = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()!r}" in message
        assert "in use by another bv-train run" in message and "another --workdir" in message
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    holder = _start_holder(workdir)
    os.kill(holder.pid, signal.SIGKILL)  # no chance to release anything
    holder.wait()
    with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
        assert json.load(f)["pid"] == holder.pid  # the dead run's record is still there
    with caplog.at_level(logging.INFO, logger="bv.train"):
        with workdir_lock.hold(workdir):
            with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
                assert json.load(f)["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))  # released and removed
    with workdir_lock.hold(workdir):
        pass


def test_a_run_leaves_no_trace_of_the_lock(tmp_path):
    fresh = tmp_path / "fresh"
    with workdir_lock.hold(str(fresh)):
        assert (fresh / workdir_lock.LOCK_FILE).exists()
    assert not fresh.exists()  # created for the run, which wrote nothing: removed again
    with workdir_lock.hold(str(fresh)):
        (fresh / "metrics.jsonl").write_text("{}\n")
    assert os.listdir(fresh) == ["metrics.jsonl"]  # what the run wrote is kept


def test_a_workdir_that_is_a_file_is_refused_clearly(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(workdir_lock.WorkdirUnusableError, match="is a file, not a folder.*--workdir"):
        with workdir_lock.hold(str(path)):
            pass
    assert path.read_text() == "keep me"
    with workdir_lock.hold(None):  # no workdir: nothing to lock
        time.sleep(0)
