"""The published Mixer configs build their whole pipeline and train two steps on fake data.

``tfds.testing.mock_data`` stands in for ImageNet (random images with the real data set's
features); ``runlocal`` shrinks the model so that each run takes seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest
import tensorflow_datasets as tfds

from bv.core import checkpoint, train
from bv.core.config import load_config
from bv.core.optimizers import make_optimizer
from bv.core.run_plan import resolve_schedule
from bv.core.tasks import get_task


@pytest.mark.parametrize(
    "spec",
    ["bv.mixer.configs.mlp_mixer_i1k:runlocal", "bv.mixer.configs.mlp_mixer_i1k:gpu8,runlocal,variant=S/32"],
)
def test_config_trains_two_steps_on_mock_data(spec: str, tmp_path: Path) -> None:
    config = load_config(spec)
    with tfds.testing.mock_data(num_examples=16):
        final = train.train(config, str(tmp_path))
    latest = checkpoint.latest(str(tmp_path))
    assert latest is not None and checkpoint.read_metadata(latest)["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("training_loss" in r for r in records)
    eval_names = [k for k in final if k.endswith("prec@1")]
    assert eval_names and all(0.0 <= final[k] <= 1.0 for k in eval_names)


@pytest.mark.parametrize(
    "spec, batch, epochs, blocks, shape",
    [
        ("bv.mixer.configs.mlp_mixer_i1k", 4096, 300, 12, (224, 224, 3)),
        ("bv.mixer.configs.mlp_mixer_i1k:gpu8", 512, 60, 12, (224, 224, 3)),
        ("bv.mixer.configs.mlp_mixer_i1k:variant=L/16", 4096, 300, 24, (224, 224, 3)),
        ("bv.mixer.configs.mnist", 128, 20, 4, (28, 28, 1)),
    ],
)
def test_full_size_config_builds_its_model_and_optimizer(
    spec: str, batch: int, epochs: int, blocks: int, shape: tuple[int, int, int]
) -> None:
    config = load_config(spec)
    assert config.input.batch_size == batch and config.total_epochs == epochs
    if "i1k" in spec:  # The paper's recipe: RandAugment(2, 15) and mixup 0.5.
        assert "|randaug(2, 15)|" in config.input.pp and config.mixup.p == 0.5
    task = get_task(config)
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0), {"image": jax.ShapeDtypeStruct((2, *shape), "float32")})
    assert params["head"]["kernel"].shape == (params["stem"]["kernel"].shape[-1], config.num_classes)
    assert len([k for k in params if k.startswith("MixerBlock_")]) == blocks
    schedule = resolve_schedule(config.get("schedule"), data_size=100_000, batch_size=batch, total_steps=100_000)
    tx, schedules = make_optimizer(config, params, total_steps=100_000, schedule=schedule)
    assert schedules and schedules[0][0] == "lr"
    jax.eval_shape(tx.init, params)
