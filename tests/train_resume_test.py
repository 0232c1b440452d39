"""Kill training with SIGKILL between and during checkpoint writes; the resumed run must end bitwise equal
(params and their EMA).

Each run is a real ``python -m bv.core.train`` process. Crashes are injected with
``BV_CRASH_AT`` (see ``bv.core.failpoints``): the process SIGKILLs itself at the
named point, as a pre-empted machine would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bv.core import checkpoint
from bv.core.tree import flatten_with_names

ARGS = [
    "--config",
    "bv.vit.configs.mnist:runlocal",
    "--config.total_steps=8",
    "--config.ckpt_steps=2",
    "--config.log_training_steps=1",
    "--config.evals.test.log_steps=8",
]


def _env(data_dir: Path, crash_at: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "JAX_PLATFORMS": "cpu",
        "TFDS_DATA_DIR": str(data_dir),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop("BV_CRASH_AT", None)
    if crash_at:
        env["BV_CRASH_AT"] = crash_at
    return env


def _train(
    workdir: Path, data_dir: Path, crash_at: str | None = None, extra: list[str] = []
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bv.core.train", *ARGS, "--workdir", str(workdir), *extra],
        env=_env(data_dir, crash_at),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _final_params(workdir: Path) -> dict[str, np.ndarray]:
    """The final params and their EMA (the mnist config averages the params), by name."""
    path = checkpoint.latest(str(workdir))
    assert path is not None
    assert checkpoint.read_metadata(path)["step"] == 8
    params = {f"params/{k}": v for k, v in flatten_with_names(checkpoint.load_params(path))}
    average = {f"ema/{k}": v for k, v in flatten_with_names(checkpoint.load_params(path, subtree="ema"))}
    assert len(average) == len(params)
    return {**params, **average}


def _losses(workdir: Path) -> list[tuple[int, float]]:
    """(step, training loss) of each training line of metrics.jsonl, in file order: a duplicate shows."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["training_loss"]) for r in map(json.loads, lines) if "training_loss" in r]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _train(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Final test/prec@1" in result.stdout
    return workdir


def test_killed_runs_resume_to_bitwise_equal_params(uninterrupted: Path, data_dir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "interrupted"
    # Saves are asynchronous: the save of step N is committed once the save of step N+2 starts.
    # Between checkpoints (the save of step 2 may still be in flight), during the background write
    # of step 4, after every process wrote step 6 but before its folder was renamed into place, and
    # after step 8 was committed but before older checkpoints were pruned.
    crashes = ["train.step_done@3", "checkpoint.writing@4", "checkpoint.written@6", "checkpoint.committed@8"]
    expected_resume_steps = [(None, 2), (2,), (4,), (8,)]
    for crash, resume_steps in zip(crashes, expected_resume_steps):
        result = _train(workdir, data_dir, crash_at=crash)
        assert result.returncode == -9, f"{crash}: expected a SIGKILL, got {result.returncode}\n{result.stderr[-3000:]}"
        latest = checkpoint.latest(str(workdir))
        step = None if latest is None else checkpoint.read_metadata(latest)["step"]
        assert step in resume_steps, crash
        assert latest is None or "tmp" not in os.path.basename(latest)
    result = _train(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout + result.stderr

    expected, resumed = _final_params(uninterrupted), _final_params(workdir)
    assert expected.keys() == resumed.keys()
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
    # The log reads as one run: every step once, with the same losses.
    assert _losses(workdir) == _losses(uninterrupted)
    assert [step for step, _ in _losses(workdir)] == list(range(1, 9))  # each step once, in order


def test_a_workdir_of_another_model_is_refused_and_left_unchanged(uninterrupted: Path, data_dir: Path) -> None:
    before = _snapshot(uninterrupted)
    result = _train(uninterrupted, data_dir, extra=["--config.model.width=48"])
    assert result.returncode == 2
    assert "holds a checkpoint of a different model or optimizer" in result.stderr
    assert "Nothing was changed" in result.stderr
    assert _snapshot(uninterrupted) == before
