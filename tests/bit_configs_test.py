"""The published BiT configs build their whole pipeline and train two steps on fake data.

``tfds.testing.mock_data`` stands in for ImageNet (random images with the real data set's
features); ``runlocal`` shrinks the model to a ResNet-26x0.5 at 64 px so that a run takes seconds.
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


def test_bit_i1k_runlocal_trains_two_steps_on_mock_data(tmp_path: Path) -> None:
    config = load_config("bv.bit.configs.bit_i1k:runlocal")
    assert config.model_name == "bit" and dict(config.model) == {"depth": 26, "width": 0.5}
    with tfds.testing.mock_data(num_examples=40):
        final = train.train(config, str(tmp_path))
    latest = checkpoint.latest(str(tmp_path))
    assert latest is not None and checkpoint.read_metadata(latest)["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["training_loss"] for r in records if "training_loss" in r]
    assert losses and all(0.0 < loss < 20.0 for loss in losses)
    assert 0.0 <= final["val/prec@1"] <= 1.0


@pytest.mark.parametrize(
    "spec, depth, width, pre_logits",
    [
        ("bv.bit.configs.bit_i1k", 50, 1.0, 2048),
        ("bv.bit.configs.bit_i1k:depth=101,width=2", 101, 2.0, 4096),
        ("bv.bit.configs.mnist", [1, 1, 1, 1], 0.5, 1024),
    ],
)
def test_full_size_configs_build_their_model_and_optimizer(
    spec: str, depth: int | list[int], width: float, pre_logits: int
) -> None:
    config = load_config(spec)
    assert (config.model.depth, config.model.width) == (depth, width)
    task = get_task(config)
    mnist = "mnist" in spec
    image = jax.ShapeDtypeStruct((2, 28, 28, 1) if mnist else (2, 224, 224, 3), "float32")
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0), {"image": image})
    assert params["head"]["kernel"].shape == (pre_logits, 10 if mnist else 1000)
    schedule = resolve_schedule(
        config.get("schedule"), data_size=1_281_167, batch_size=config.input.batch_size, total_steps=100_000
    )
    tx, schedules = make_optimizer(config, params, total_steps=100_000, schedule=schedule)
    assert schedules and schedules[0][0] == "lr"
    jax.eval_shape(tx.init, params)


def test_bit_i1k_follows_the_linear_scaling_rule() -> None:
    config = load_config("bv.bit.configs.bit_i1k")
    assert config.input.batch_size == 4096 and config.total_epochs == 90
    assert config.lr == pytest.approx(1.6) and config.wd == pytest.approx(0.0016)
    assert config.optax_name == "big_vision.momentum_hp"
