"""bf16 end to end: a run with bfloat16 matmuls and bfloat16 Adam moments saves and resumes bitwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bv.core import checkpoint, train
from bv.core.config import load_config
from bv.core.tree import flatten_with_names


def _config(data_dir: Path):
    config = load_config("bv.vit.configs.mnist:runlocal")
    config.input.data.data_dir = str(data_dir)
    config.evals.test.data.data_dir = str(data_dir)
    config.total_steps, config.ckpt_steps, config.keep_ckpt_steps = 4, 2, 2
    config.evals.test.log_steps = 4
    config.model.dtype_mm = "bfloat16"  # stem and encoder matmuls in bf16
    config.optax_name = "scale_by_adam"
    config.optax = dict(mu_dtype="bfloat16")  # a bf16 leaf in the checkpointed state
    return config


def _state(workdir: Path) -> dict[str, np.ndarray]:
    return dict(flatten_with_names(checkpoint.load_params(checkpoint.latest(str(workdir)) or "", None)))


def test_bf16_run_resumes_to_bitwise_equal_state(tmp_path: Path) -> None:
    full = tmp_path / "full"
    train.train(_config(tmp_path / "tfds"), str(full))
    state = _state(full)
    moments = {name: v.dtype.name for name, v in state.items() if "/mu/" in name}
    assert moments and set(moments.values()) == {"bfloat16"}, moments

    # A run stopped after step 2 (its step-4 checkpoint gone) resumes to the same bits.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(checkpoint.list_checkpoints(str(resumed))[-1])
    assert checkpoint.read_metadata(checkpoint.latest(str(resumed)) or "")["step"] == 2
    train.train(_config(tmp_path / "tfds"), str(resumed))
    got = _state(resumed)
    assert got.keys() == state.keys()
    for name in state:
        assert got[name].dtype == state[name].dtype, name
        assert got[name].tobytes() == state[name].tobytes(), name
