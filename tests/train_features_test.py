"""One short run with EMA, a profile and epoch-based durations: what the workdir must hold afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bv.core import checkpoint, train
from bv.core.config import load_config
from bv.core.tree import flatten_with_names


def _config(workdir: Path):
    config = load_config("bv.vit.configs.mnist:runlocal")
    config.input.data.data_dir = str(workdir.parent / "tfds")
    config.ema = dict(decay=0.5, start_step=2)
    config.profile = dict(start_step=3, num_steps=2)
    # Given as a fraction of training: the config keeps the fraction, resolved.json the steps.
    config.schedule = dict(decay_type="cosine", warmup_percent=0.5)
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("run")
    final = train.train(_config(workdir), str(workdir))
    return workdir, final


def test_ema_is_evaluated_beside_the_params_and_checkpointed(run: tuple[Path, dict]) -> None:
    workdir, final = run
    assert 0.0 <= final["ema/test/prec@1"] <= 1.0 and 0.0 <= final["test/prec@1"] <= 1.0
    path = checkpoint.latest(str(workdir))
    assert path is not None
    params = dict(flatten_with_names(checkpoint.load_params(path)))
    average = dict(flatten_with_names(checkpoint.load_params(path, subtree="ema")))
    assert params.keys() == average.keys()
    # decay 0.5 over steps 3..6: the average lags the params, so they differ.
    assert any(not np.array_equal(params[k], average[k]) for k in params)


def test_the_profile_is_written_for_tensorboard_and_perfetto(run: tuple[Path, dict]) -> None:
    workdir, _ = run
    assert list((workdir / "profile").rglob("*.xplane.pb"))
    assert list((workdir / "profile").rglob("perfetto_trace.json.gz"))


def test_the_workdir_keeps_the_config_as_given_and_the_resolved_plan(run: tuple[Path, dict]) -> None:
    workdir, _ = run
    given = json.loads((workdir / "config.json").read_text())
    assert given["schedule"] == {"decay_type": "cosine", "warmup_percent": 0.5}
    plan = json.loads((workdir / "resolved.json").read_text())
    assert plan["total_steps"] == 6 and plan["schedule"] == {"decay_type": "cosine", "warmup_steps": 3}
    assert plan["log_every"] == 2 and plan["ckpt_every"] == 3


def test_the_config_object_is_not_changed_by_training(tmp_path: Path) -> None:
    config = load_config("bv.vit.configs.mnist:runlocal")
    config.input.data.data_dir = str(tmp_path / "tfds")
    config.total_steps = 1
    config.schedule = dict(decay_type="cosine", warmup_percent=0.5)
    before = config.to_json()
    train.train(config, None)
    assert config.to_json() == before


def test_a_finished_workdir_is_not_trained_or_evaluated_again(
    run: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    workdir, final = run
    before = {p: p.read_bytes() for p in (workdir / "metrics.jsonl", workdir / "checkpoints" / "LAST") if p.exists()}
    again = train.train(_config(workdir), str(workdir))
    assert "already at the last step (6); nothing to do" in capsys.readouterr().out
    assert again["test/prec@1"] == final["test/prec@1"] and again["ema/test/prec@1"] == final["ema/test/prec@1"]
    assert {p: p.read_bytes() for p in before} == before
