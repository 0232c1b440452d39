"""A UViM stage-I run killed with SIGKILL resumes to the same codebook and params, bit for bit.

The codebook (``state/dictionary``, ``state/counts``) is set by the task's ``after_step`` from
each step's batch and rng, not by the optimizer; its dead-code restarts draw random numbers.
A resumed run must therefore restore it with the params and replay the same batches and
rngs. The run uses a fast momentum and a high ``min_count`` so that restarts happen in the
steps that are replayed. Each run is a real ``python -m bv.core.train`` process; the kill
comes from ``BV_CRASH_AT`` (``bv.core.failpoints``), as in ``tests/train_resume_test.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bv.core import checkpoint, train
from bv.core.tree import flatten_with_names
from bv.uvim.configs import mnist

STEPS = 6
ARGS = [
    "--config",
    f"{mnist.__name__}:stage=1,runlocal,evals=False",  # imported: the sandbox must hold bv.uvim
    f"--config.total_steps={STEPS}",
    "--config.ckpt_steps=2",
    "--config.uvim.dict_momentum=0.5",  # a codeword unused for two steps falls below min_count
    "--config.uvim.min_count=0.3",
]


def _train(workdir: Path, data_dir: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
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
    return subprocess.run(
        [sys.executable, "-m", train.__name__, *ARGS, "--workdir", str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _final(workdir: Path) -> dict[str, np.ndarray]:
    path = checkpoint.latest(str(workdir))
    assert path is not None and checkpoint.read_metadata(path)["step"] == STEPS
    return dict(flatten_with_names(checkpoint.load_params(path)))


def _logged(workdir: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "training_loss" in r}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfds")


def test_sigkilled_stage1_resumes_bitwise(tmp_path: Path, data_dir: Path) -> None:
    reference = tmp_path / "uninterrupted"
    result = _train(reference, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]

    workdir = tmp_path / "interrupted"
    # Killed after step 5: it resumes from step 4's checkpoint, or step 2's if the asynchronous
    # write of step 4's was still in flight.
    result = _train(workdir, data_dir, crash_at="train.step_done@5")
    assert result.returncode == -9, f"expected a SIGKILL, got {result.returncode}\n{result.stderr[-3000:]}"
    latest = checkpoint.latest(str(workdir))
    assert latest is not None and checkpoint.read_metadata(latest)["step"] in (2, 4)
    result = _train(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout + result.stderr

    want, got = _final(reference), _final(workdir)
    assert sorted(want) == sorted(got) and "state/dictionary" in want and "state/counts" in want
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    ref_log, log = _logged(reference), _logged(workdir)
    assert sorted(log) == list(range(1, STEPS + 1))  # each step logged once
    assert sum(ref_log[s]["codebook_restarts"] for s in (5, 6)) > 0  # replayed steps restarted codewords
    for step in range(1, STEPS + 1):
        for key in ("training_loss", "codebook_restarts", "codebook_perplexity", "codebook_zeros_ratio"):
            assert log[step][key] == ref_log[step][key], (step, key)
