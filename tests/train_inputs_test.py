"""The trainer takes its input shapes from real batches, whatever the pp string leaves static."""

from __future__ import annotations

from pathlib import Path

from bv.core import train
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
