"""Chaos: SIGKILL a real training run at 5 random (seeded) moments, resuming each time.

The final params (and their EMA) must be bitwise those of an uninterrupted run, and
``metrics.jsonl`` must hold each step exactly once, in order.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from training_runs import STEPS, Run, assert_each_step_once, assert_same_run

from bv.core import checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run = Run(workdir, data_dir)
    assert run.finish() == 0, run.output
    assert_each_step_once(workdir)
    return workdir


def test_the_metrics_check_fails_on_a_planted_duplicate(uninterrupted, tmp_path: Path) -> None:
    reference = uninterrupted
    lines = (reference / "metrics.jsonl").read_text().splitlines(keepends=True)
    third = next(i for i, line in enumerate(lines) if '"step": 3,' in line and "training_loss" in line)
    (tmp_path / "metrics.jsonl").write_text("".join(lines[: third + 1] + [lines[third]] + lines[third + 1 :]))
    with pytest.raises(AssertionError, match=r"logs steps \[1, 2, 3, 3, 4"):
        assert_each_step_once(tmp_path)


def test_five_random_sigkills_resume_to_bitwise_equal_params(uninterrupted, data_dir: Path, tmp_path: Path) -> None:
    reference = uninterrupted
    workdir = tmp_path / "chaos"
    rng = random.Random(1234)
    kills = []
    for _ in range(5):
        latest = checkpoint.latest(str(workdir))
        resumed_from = checkpoint.read_metadata(latest)["step"] if latest else 0
        # A random moment of the loop: just after step k is logged, plus a random part of a step
        # (the next step, a log line, an eval, a checkpoint's background write or its commit).
        k, extra = rng.randint(resumed_from + 1, STEPS - 1), rng.uniform(0.0, 0.2)
        run = Run(workdir, data_dir)
        assert run.wait_for(f"[step {k}]"), run.output
        time.sleep(extra)
        run.proc.send_signal(signal.SIGKILL)
        code = run.finish()
        kills.append((k, round(extra, 3), resumed_from, code))
        assert code in (-signal.SIGKILL, 0), run.output
        if code == 0:  # it finished within the extra delay: nothing left to kill
            break
    print("kills (after step, extra s, resumed from, exit code):", kills)
    assert sum(code == -signal.SIGKILL for *_, code in kills) >= 3, kills
    final = Run(workdir, data_dir)
    assert final.finish() == 0, final.output
    assert_same_run(workdir, reference)
