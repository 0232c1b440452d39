"""Trainer inputs: shapes from real batches whatever the pp leaves static; mixtures of data sets."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from bv.core import checkpoint, train
from bv.core.tree import flatten_with_names
from bv.core.config import load_config

COMMON = "value_range(-1, 1)|onehot(10, key='label', key_result='labels')|keep('image', 'labels')"


def test_pp_without_resize_trains(tmp_path: Path) -> None:
    # decode() alone gives images of unknown static size; the model must still be built.
    config = load_config("bv.vit.configs.mnist:runlocal")
    config.input.data.data_dir = str(tmp_path / "tfds")
    config.input.pp = f"decode(channels=1)|{COMMON}"
    config.evals.test.pp_fn = f"decode(channels=1)|{COMMON}"
    final = train.train(config, str(tmp_path / "run"))
    assert 0.0 <= final["test/prec@1"] <= 1.0
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def _mixture_config(data_dir: Path) -> Any:
    """MNIST-5k mixed with scikit-learn's 8x8 digits, each source with its own pp (digits are upsampled)."""
    config = load_config("bv.vit.configs.mnist:runlocal")
    config.total_steps, config.ckpt_steps, config.keep_ckpt_steps = 4, 2, 2
    config.evals.test.log_steps = 4
    config.evals.test.data.data_dir = str(data_dir)
    config.input.data = {"mnist": 0.7, "digits": 0.3}
    config.input.mnist = dict(data=dict(name="mnist5k", split="train", data_dir=str(data_dir)))  # pp: input.pp
    config.input.digits = dict(
        data=dict(name="digits", split="train", data_dir=str(data_dir)),
        pp=f"decode(channels=1)|resize(28)|{COMMON}",
    )
    return config


def test_mixture_trains_and_resumes_to_bitwise_equal_params(tmp_path: Path) -> None:
    config = _mixture_config(tmp_path / "tfds")
    full = tmp_path / "full"
    final = train.train(config, str(full))
    assert 0.0 <= final["test/prec@1"] <= 1.0
    steps = [checkpoint.read_metadata(p)["step"] for p in checkpoint.list_checkpoints(str(full))]
    assert steps == [2, 4]
    # A run stopped after step 2 (its later checkpoint gone) resumes to the same params.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(checkpoint.list_checkpoints(str(resumed))[-1])
    assert checkpoint.read_metadata(checkpoint.latest(str(resumed)) or "")["step"] == 2
    train.train(_mixture_config(tmp_path / "tfds"), str(resumed))
    want = dict(flatten_with_names(checkpoint.load_params(checkpoint.list_checkpoints(str(full))[-1])))
    got = dict(flatten_with_names(checkpoint.load_params(checkpoint.latest(str(resumed)) or "")))
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(want[name], got[name], err_msg=name)
