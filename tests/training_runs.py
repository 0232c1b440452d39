"""Real ``bv-train`` processes for the chaos and fault tests: start, watch, signal, compare.

Every run trains the MNIST-5k ViT of ``bv.vit.configs.mnist:runlocal`` for ``STEPS``
steps with a checkpoint every 2; :func:`assert_same_run` checks that a run that was
interrupted ended bitwise where the uninterrupted reference did, with each step
logged exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from bv.core import checkpoint
from bv.core.tree import flatten_with_names

STEPS = 12
ARGS = [
    "--config",
    "bv.vit.configs.mnist:runlocal",
    f"--config.total_steps={STEPS}",
    "--config.ckpt_steps=2",
    "--config.log_training_steps=1",
    f"--config.evals.test.log_steps={STEPS // 2}",
]


def _start(workdir: Path, data_dir: Path, fail_at: str | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "JAX_PLATFORMS": "cpu",
        "TFDS_DATA_DIR": str(data_dir),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop("BV_CRASH_AT", None)
    env.pop("BV_FAIL_AT", None)
    if fail_at:
        env["BV_FAIL_AT"] = fail_at
    return subprocess.Popen(
        [sys.executable, "-m", "bv.core.train", *ARGS, "--workdir", str(workdir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Run:
    """A training process whose output is read in the background; ``wait_for`` blocks until a line appears."""

    def __init__(self, workdir: Path, data_dir: Path, fail_at: str | None = None):
        self.proc = _start(workdir, data_dir, fail_at)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<exit>")
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 300) -> bool:
        """True once a line contains ``text``; False if the process ended first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(text in line for line in self.lines):
                    return True
                if self.lines and self.lines[-1] == "<exit>":
                    return False
                assert self._cond.wait(deadline - time.monotonic()), f"no {text!r} in time:\n{self.output}"

    def finish(self) -> int:
        code = self.proc.wait(timeout=600)
        self._reader.join(timeout=60)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines[-60:])


def final_params(workdir: Path) -> dict[str, np.ndarray]:
    path = checkpoint.latest(str(workdir))
    assert path is not None and checkpoint.read_metadata(path)["step"] == STEPS
    return {
        **{f"params/{k}": v for k, v in flatten_with_names(checkpoint.load_params(path))},
        **{f"ema/{k}": v for k, v in flatten_with_names(checkpoint.load_params(path, subtree="ema"))},
    }


def training_steps_logged(workdir: Path) -> list[int]:
    """The steps of the training-loss lines of ``metrics.jsonl``, in file order (duplicates kept)."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "training_loss" in r]


def assert_each_step_once(workdir: Path) -> None:
    steps = training_steps_logged(workdir)
    assert steps == list(range(1, STEPS + 1)), f"metrics.jsonl logs steps {steps}, not each of 1..{STEPS} once"


def assert_same_run(workdir: Path, reference: Path) -> None:
    expected, resumed = final_params(reference), final_params(workdir)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert resumed[name].tobytes() == expected[name].tobytes(), name
    assert_each_step_once(workdir)
