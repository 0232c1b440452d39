"""The published ViT configs build their whole pipeline and train two steps on fake data.

``tfds.testing.mock_data`` stands in for ImageNet and CIFAR-10 (random images
with the real data sets' features); the model is shrunk with a ``variant``
argument so that each run takes seconds on a CPU.
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
    [
        "bv.vit.configs.vit_s16_i1k:runlocal,variant=mu/32",
        "bv.vit.configs.vit_s16_i1k:gpu8,runlocal,variant=mu/32",
        "bv.vit.configs.transfer:runlocal,variant=mu/16,res=64,dataset=cifar10",
        "bv.vit.configs.transfer:runlocal,variant=mu/16,res=64,dataset=cifar10,crop=resize_crop",
        "bv.vit.configs.flexivit_i1k:runlocal",
    ],
)
def test_config_trains_two_steps_on_mock_data(spec: str, tmp_path: Path) -> None:
    config = load_config(spec)
    with tfds.testing.mock_data(num_examples=200):
        final = train.train(config, str(tmp_path))
    latest = checkpoint.latest(str(tmp_path))
    assert latest is not None and checkpoint.read_metadata(latest)["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("training_loss" in r for r in records)
    eval_names = [k for k in final if k.endswith("prec@1")]
    assert eval_names and all(0.0 <= final[k] <= 1.0 for k in eval_names)


@pytest.mark.parametrize(
    "spec, num_classes",
    [
        ("bv.vit.configs.vit_s16_i1k", 1000),
        ("bv.vit.configs.vit_s16_i1k:gpu8", 1000),
        ("bv.vit.configs.vit_i21k:variant=B/16", 21843),
        ("bv.vit.configs.transfer:dataset=oxford_iiit_pet", 37),
        ("bv.vit.configs.mnist", 10),
        ("bv.vit.configs.flexivit_i1k", 1000),
        ("bv.vit.configs.flexivit_i1k:gpu8", 1000),
    ],
)
def test_full_size_configs_build_their_model_and_optimizer(spec: str, num_classes: int) -> None:
    config = load_config(spec)
    task = get_task(config)
    size = 28 if "mnist" in spec else 224
    batch = {"image": jax.ShapeDtypeStruct((2, size, size, 1 if "mnist" in spec else 3), "float32")}
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
    assert params["head"]["kernel"].shape[-1] == num_classes
    schedule = resolve_schedule(config.get("schedule"), data_size=1_000_000, batch_size=1024, total_steps=100_000)
    tx, schedules = make_optimizer(config, params, total_steps=100_000, schedule=schedule)
    assert schedules and schedules[0][0] == "lr"
    jax.eval_shape(tx.init, params)


def test_transfer_rejects_unknown_dataset_and_crop() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; known: cifar10"):
        load_config("bv.vit.configs.transfer:dataset=mnist")
    with pytest.raises(ValueError, match="unknown crop 'center'"):
        load_config("bv.vit.configs.transfer:crop=center")


def test_flexivit_i1k_stores_one_kernel_and_evaluates_at_four_patch_sizes() -> None:
    config = load_config("bv.vit.configs.flexivit_i1k")
    task = get_task(config)
    params = jax.eval_shape(
        task.init, jax.random.PRNGKey(0), {"image": jax.ShapeDtypeStruct((2, 240, 240, 3), "float32")}
    )
    assert params["embedding"]["kernel"].shape == (32, 32, 3, 768)  # PI-resized to each patch size
    assert params["pos_embedding"].shape == (1, 49, 768)  # 7x7, resized to each token grid
    assert all(240 % p == 0 for p in config.flexi.patch_sizes) and len(config.flexi.patch_sizes) == 10
    assert sorted(e.pred for e in config.evals.values()) == sorted(f"predict_p{p}" for p in (48, 30, 16, 8))
    assert set(task.predict_fns()) >= {"predict_p48", "predict_p30", "predict_p16", "predict_p8"}
