"""UViM's panoptic, depth and colorization configs build their whole pipeline and run on TFDS mock data.

``tfds.testing.mock_data`` stands in for COCO panoptic, NYU depth v2 and ImageNet (random
images with the real data sets' features). For each task, stage I trains three steps
through ``bv.core.train`` with its evaluators (one module fixture); stage II, loading that
stage I's workdir, has a loss on one fixed batch that is finite and decreasing under the
real train step; stage II of colorization is then evaluated (code perplexity, PSNR of its samples). A task adapter given images of
the wrong channel count says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import bv.pp
from bv.evaluators import build_evaluators
import bv.uvim  # noqa: F401  (registers the tasks, pp ops and evaluators)
from bv.core import train
from bv.core.config import load_config
from bv.core.data import input_pipeline
from bv.core.model_init import load_pretrained
from bv.core.optimizers import make_optimizer
from bv.core.sharding import make_mesh
from bv.core.tasks import get_task
from bv.core.train_state import make_train_step
from bv.uvim.adapters import InputShapeError
from bv.uvim.configs import coco_panoptic, imagenet_colorization, nyu_depth

TASKS = {
    "panoptic": (coco_panoptic, "coco_panoptic/pq"),
    "depth": (nyu_depth, "nyu_depth/rmse"),
    "colorization": (imagenet_colorization, "psnr_val/psnr"),
}


def _fake_coco_panoptic(builder, split, decoders=None, read_config=None, **kwargs) -> tf.data.Dataset:
    """COCO panoptic examples with consistent objects (TFDS's random ones can disagree in length).

    Each 40x48 example has three segments: two objects whose ids (in the RGB of
    ``panoptic_image``) and classes are listed in ``panoptic_objects``, and void.
    """
    del builder, split, read_config, kwargs
    rng = np.random.default_rng(0)
    examples = []
    for i in range(8):
        image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        ids = np.array([1000 + i, 70000 + 3 * i])
        pan = np.zeros((40, 48), np.int64)
        pan[:20, :24], pan[20:, 10:] = ids
        rgb = np.stack([pan % 256, pan // 256 % 256, pan // 65536], axis=-1).astype(np.uint8)
        encoded = tf.io.encode_png(image).numpy() if decoders and "image" in decoders else image
        examples.append(
            {
                "image": encoded,
                "panoptic_image": rgb,
                "panoptic_objects": {"id": ids, "label": np.array([i % 5, 80 + i])},
            }
        )
    return tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "image": (
                tf.TensorSpec([], tf.string)
                if decoders and "image" in decoders
                else tf.TensorSpec([40, 48, 3], tf.uint8)
            ),
            "panoptic_image": tf.TensorSpec([40, 48, 3], tf.uint8),
            "panoptic_objects": {"id": tf.TensorSpec([2], tf.int64), "label": tf.TensorSpec([2], tf.int64)},
        },
    ).apply(tf.data.experimental.assert_cardinality(len(examples)))


def _mock(kind: str):
    if kind == "panoptic":
        return tfds.testing.mock_data(num_examples=8, as_dataset_fn=_fake_coco_panoptic)
    return tfds.testing.mock_data(num_examples=8)


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _batch(config, n: int = 4) -> dict[str, jax.Array]:
    builder = input_pipeline.get_builder(config.input.data.name)
    ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.take(n).map(bv.pp.get_preprocess_fn(config.evals.val.pp_fn if "val" in config.evals else config.input.pp))
    return {k: jnp.asarray(v) for k, v in next(iter(tfds.as_numpy(ds.batch(n)))).items()}


@pytest.fixture(scope="module")
def stage1_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, float]]]:
    """Stage I of each task, three steps through the trainer with its evaluators, on mock data."""
    runs = {}
    for kind, (module, _) in TASKS.items():
        workdir = tmp_path_factory.mktemp(kind) / "stage1"
        with _mock(kind):
            runs[kind] = (workdir, train.train(load_config(f"{module.__name__}:stage=1,runlocal"), str(workdir)))
    return runs


@pytest.mark.parametrize("kind", list(TASKS))
def test_stage1_trains_and_evaluates_on_mock_data(kind: str, stage1_runs) -> None:
    workdir, final = stage1_runs[kind]
    assert np.isfinite(final["val/loss_rec"]) and np.isfinite(final[TASKS[kind][1]])
    steps = [r for r in _records(workdir) if "training_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(np.isfinite(r["training_loss"]) for r in steps)
    assert all(0 <= r["codebook_zeros_ratio"] <= 1 and r["codebook_perplexity"] >= 1 for r in steps)


@pytest.mark.parametrize("kind", list(TASKS))
def test_stage2_loss_is_finite_and_decreasing_on_mock_data(kind: str, stage1_runs) -> None:
    module, _ = TASKS[kind]
    config = load_config(f"{module.__name__}:stage=2,runlocal,oracle={stage1_runs[kind][0]}")
    task = get_task(config)
    with _mock(kind):
        batch = _batch(config)
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    params = load_pretrained(config.model_init, task.init(jax.random.PRNGKey(0), spec), config=config)
    config.lr = 3e-3
    tx, fns = make_optimizer(config, params, 20, schedule={"decay_type": "cosine", "warmup_steps": 1})
    step = jax.jit(make_train_step(task, tx, fns, total_steps=20))
    state = {"params": params, "opt": tx.init(params), "rng": jax.random.PRNGKey(1)}
    losses = []
    for i in range(1, 9):
        state, metrics = step(state, batch, jnp.int32(i))
        losses.append(float(metrics["training_loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    if kind == "colorization":  # stage II's evaluators on the trained params: code perplexity, PSNR of samples
        with _mock(kind):
            evaluators = build_evaluators(
                config.evals, task.predict_fns(), make_mesh(), batch_size=4, data_dir=None, workdir=None
            )
            results = {f"{e.name}/{k}": v for e in evaluators for k, v in e.evaluator.run(state["params"]).items()}
        assert results["perplexity/perplexity"] > 1 and np.isfinite(results["perplexity/loss"])
        assert np.isfinite(results["psnr_val/psnr"]) and np.isfinite(results["psnr_val/psnr_grey_input"])


@pytest.mark.parametrize("kind", list(TASKS))
def test_an_adapter_given_images_of_the_wrong_channel_count_says_so(kind: str) -> None:
    module, _ = TASKS[kind]
    task: Any = get_task(load_config(f"{module.__name__}:stage=1,runlocal"))
    spec = {
        "image": jax.ShapeDtypeStruct((4, 32, 32, 1), jnp.float32),  # grey, one channel: these tasks want RGB
        "labels": jax.ShapeDtypeStruct((4, 32, 32, task.adapter.label_channels), jnp.float32),
    }
    with pytest.raises(InputShapeError) as e:
        task.init(jax.random.PRNGKey(0), spec)
    assert f"the {kind} adapter expects images [batch, height, width, 3] (RGB), got 1 channel(s)" in str(e.value)
    assert "decode(channels=3)" in str(e.value)
