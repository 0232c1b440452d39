"""The trainer stops with a clear message on bad input, and writes nothing when the config is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from bv.core import checkpoint, registry, train
from bv.core.config import load_config
from bv.evaluators import EvaluatorConfigError


@pytest.fixture()
def config(tmp_path: Path):
    config = load_config("bv.vit.configs.mnist:runlocal")
    config.input.data.data_dir = str(tmp_path / "tfds")
    return config


def test_nan_loss_stops_the_run_naming_the_step(config, tmp_path: Path) -> None:
    # A broken input range (in_max == in_min) divides by zero: every image is NaN.
    config.input.pp = config.input.pp.replace("value_range(-1, 1)", "value_range(-1, 1, in_min=0, in_max=0)")
    with pytest.raises(train.NonFiniteLossError, match=r"The training loss is nan at step 1; stopping"):
        train.train(config, str(tmp_path / "run"))
    assert checkpoint.latest(str(tmp_path / "run")) is None  # no NaN checkpoint was written


def test_unknown_evaluator_fails_before_the_workdir_is_touched(config, tmp_path: Path) -> None:
    config.evals.test.type = "clasification"
    with pytest.raises(
        EvaluatorConfigError, match="config.evals.test: Unknown evaluator .* Did you mean 'classification'"
    ):
        train.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unknown_model_name_lists_the_known_models(config, tmp_path: Path) -> None:
    config.model_name = "vitt"
    with pytest.raises(registry.UnknownNameError, match="Unknown model 'vitt'. Did you mean 'vit'"):
        train.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_workdir_of_the_old_checkpoint_format_says_how_to_convert_it(tmp_path: Path, capsys) -> None:
    old = tmp_path / "run" / "checkpoints" / "ckpt-000000002"
    old.mkdir(parents=True)
    (old / "checkpoint.json").write_text('{"format": "bv-checkpoint", "version": 1, "step": 2}')
    (old / "state.safetensors").write_bytes(b"\0" * 16)
    before = _files(tmp_path / "run")
    argv = ["--config", "bv.vit.configs.mnist:runlocal", "--workdir", str(tmp_path / "run")]
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_info:
        mp.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
        train.main(argv)
    assert exit_info.value.code == 2  # a user error: one paragraph on stderr, no traceback
    err = capsys.readouterr().err
    assert "checkpoint format 1" in err and f"bv-convert-checkpoints {tmp_path / 'run'}" in err
    assert _files(tmp_path / "run") == before  # started over? no: nothing was written or deleted
