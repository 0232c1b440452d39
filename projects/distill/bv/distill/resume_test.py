"""Kill a distillation run with SIGKILL, between and during checkpoint writes; the resumed run must end bitwise
equal to an uninterrupted one, and no checkpoint may hold the teacher.

The teacher is loaded when the task is built and closed over by the jitted step: it is not part
of the training state, so a resumed run must load it again (from its folder) and its
checkpoints must hold only the student's params, optimizer state and rng. Each run is a real
``python -m bv.core.train`` process; crashes are injected with ``BV_CRASH_AT`` (see
``bv.core.failpoints``), as in ``tests/train_resume_test.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.core import checkpoint, train
from bv.core.config import load_config
from bv.core.optimizers import make_optimizer
from bv.core.tasks import get_model
from bv.core.tree import flatten_with_names
from bv.distill.configs import distill_mnist
from bv.vit import ViT

TOTAL_STEPS = 6
OVERRIDES = [
    f"--config.total_steps={TOTAL_STEPS}",
    "--config.ckpt_steps=2",
    "--config.log_training_steps=1",
    f"--config.evals.test.log_steps={TOTAL_STEPS}",
    f"--config.evals.teacher_distance.log_steps={TOTAL_STEPS}",
]
# Saves are asynchronous: a crash while the step-4 checkpoint is written in the background must
# find the step-2 one; a crash after every process wrote step 4 but before it was renamed, too.
CRASHES = [("checkpoint.writing@4", 2), ("checkpoint.written@4", 2)]


def _config_arg(teacher: Path) -> str:
    # Imported, not only named: the test's sandbox must hold bv.distill for the training processes.
    return f"{distill_mnist.__name__}:runlocal,teacher={teacher}"


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


def _train(workdir: Path, teacher: Path, data_dir: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            train.__name__,  # imported, not only named: the test's sandbox must hold the trainer
            "--config",
            _config_arg(teacher),
            *OVERRIDES,
            "--workdir",
            str(workdir),
        ],
        env=_env(data_dir, crash_at),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _final_params(workdir: Path) -> dict[str, np.ndarray]:
    path = checkpoint.latest(str(workdir))
    assert path is not None
    assert checkpoint.read_metadata(path)["step"] == TOTAL_STEPS
    return dict(flatten_with_names(checkpoint.load_params(path)))


def _losses(workdir: Path) -> dict[int, float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["training_loss"] for r in map(json.loads, lines) if "training_loss" in r}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("teacher")
    ViT.create(
        patch_size=(7, 7),
        width=32,
        depth=1,
        num_heads=2,
        mlp_dim=64,
        pool_type="gap",
        num_classes=10,
        resolution=28,
        channels=1,
        pp="decode(channels=1)|value_range(-1, 1)",
    ).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, teacher: Path, data_dir: Path) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _train(workdir, teacher, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Final test/prec@1" in result.stdout
    return workdir


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, teacher: Path, data_dir: Path) -> Path:
    workdir = tmp_path_factory.mktemp("interrupted")
    for crash, resume_step in CRASHES:
        result = _train(workdir, teacher, data_dir, crash_at=crash)
        assert result.returncode == -9, f"{crash}: expected a SIGKILL, got {result.returncode}\n{result.stderr[-3000:]}"
        latest = checkpoint.latest(str(workdir))
        assert latest is not None and ".tmp" not in latest
        assert checkpoint.read_metadata(latest)["step"] == resume_step, crash
    result = _train(workdir, teacher, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout + result.stderr
    return workdir


def test_a_killed_distillation_resumes_to_bitwise_equal_params(uninterrupted: Path, interrupted: Path) -> None:
    expected, resumed = _final_params(uninterrupted), _final_params(interrupted)
    assert expected.keys() == resumed.keys()
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
    # The log reads as one run: every step once, with the same losses (the teacher, loaded
    # again by each restart, gave the same targets).
    assert _losses(interrupted) == _losses(uninterrupted)
    assert sorted(_losses(interrupted)) == list(range(1, TOTAL_STEPS + 1))


def _student_state_shapes(teacher: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the training state the student alone makes: its params, their optimizer state, the rng."""
    config = load_config(_config_arg(teacher))
    model = get_model(config)
    images = jnp.zeros((1, 28, 28, 1), jnp.float32)
    params = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, images)["params"])
    tx, _ = make_optimizer(config, params, TOTAL_STEPS)
    state = {"params": params, "opt": jax.eval_shape(tx.init, params), "rng": jax.eval_shape(jax.random.PRNGKey, 0)}
    return {name: tuple(leaf.shape) for name, leaf in flatten_with_names(state)}


def test_checkpoints_hold_only_the_student(uninterrupted: Path, interrupted: Path, teacher: Path) -> None:
    expected = _student_state_shapes(teacher)
    assert {name.split("/")[0] for name in expected} == {"params", "opt", "rng"}
    paths = checkpoint.list_checkpoints(str(uninterrupted)) + checkpoint.list_checkpoints(str(interrupted))
    assert paths
    for path in paths:
        assert checkpoint.top_level_entries(path) == ["opt", "params", "rng"], path
        stored = {name: tuple(np.shape(v)) for name, v in flatten_with_names(checkpoint.load_params(path, None))}
        assert stored == expected, path
        # Nothing else: no teacher params (nor any other frozen input) went into the training state.
        assert not any(name.startswith("teacher") for name in stored), path
