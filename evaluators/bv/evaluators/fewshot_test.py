from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from bv.core import registry
from bv.core.data import build_from_arrays
from bv.evaluators import EvaluatorConfigError, FewshotEvaluator
from bv.evaluators.fewshot import linear_probe_accuracy, ridge_weights

MESH = Mesh(np.asarray(jax.devices()[:1]), ("data",))
PP = "decode(channels=1)|keep('image', 'label')"


def _label_predict(params: dict, images: jax.Array) -> tuple[jax.Array, dict]:
    """pre_logits are a fixed linear map of the label, which is the first pixel's value; logits say nothing."""
    label = images[:, 0, 0, 0].astype(jnp.int32)
    rep = jax.nn.one_hot(label, params["map"].shape[0]) @ params["map"]
    return jnp.zeros((images.shape[0], 3)), {"pre_logits": rep, "other": -rep}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes; train: 10 per class, test: 4 per class; every image is its label, as a constant."""
    folder = tmp_path_factory.mktemp("tfds")
    splits: dict[str, dict[str, np.ndarray]] = {}
    for split, n in (("train", 30), ("test", 12)):
        labels = np.arange(n) % 3
        images = np.broadcast_to(labels[:, None, None, None], (n, 4, 4, 1)).astype(np.uint8)
        splits[split] = {"image": images, "label": labels}
    build_from_arrays("three_constants", splits, str(folder), label_names=("a", "b", "c"))
    return folder


def _evaluator(data_dir: Path, **kw: Any) -> FewshotEvaluator:
    config: dict[str, Any] = dict(
        datasets={"three_constants": ("train", "test")}, pp=PP, batch_size=8, mesh=MESH, data_dir=str(data_dir)
    )
    return FewshotEvaluator({"predict": _label_predict}, **{**config, **kw})


def test_ridge_weights_match_least_squares_in_both_forms() -> None:
    rng = np.random.default_rng(0)
    for n, d in ((20, 5), (5, 20)):  # primal and dual form
        x, y, l2 = rng.normal(size=(n, d)), rng.normal(size=(n, 3)), 0.7
        # Ridge is least squares on x stacked over sqrt(l2) I, with y stacked over zeros.
        stacked_x = np.concatenate([x, np.sqrt(l2) * np.eye(d)])
        stacked_y = np.concatenate([y, np.zeros((d, 3))])
        expected = np.linalg.lstsq(stacked_x, stacked_y, rcond=None)[0]
        np.testing.assert_allclose(ridge_weights(x, y, l2), expected, rtol=1e-9, atol=1e-12)


def test_linear_probe_separates_separable_points_and_is_chance_on_noise() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 6)) * 5
    train_y, test_y = np.repeat(np.arange(4), 3), np.repeat(np.arange(4), 10)
    train_x = centers[train_y] + rng.normal(size=(12, 6)) * 0.1
    test_x = centers[test_y] + rng.normal(size=(40, 6)) * 0.1
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y, 4, 2.0**10) == 1.0
    assert linear_probe_accuracy(train_x, train_y, test_x, (test_y + 1) % 4, 4, 2.0**10) == 0.0


def test_known_representation_gives_full_accuracy(data_dir: Path) -> None:
    params = {"map": jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), jnp.float32)}
    evaluator = _evaluator(data_dir, shots=(1, 5), seeds=(0, 1), per_seed=True)
    metrics = evaluator.run(params)
    assert metrics == {f"three_constants_{k}shot{s}": 1.0 for k in (1, 5) for s in ("", "_seed0", "_seed1")}
    other = _evaluator(data_dir, shots=(2,), seeds=(3,), representation="other").run(params)
    assert other == {"three_constants_2shot": 1.0}


def test_missing_representation_too_few_shots_and_bad_config_are_clear_errors(data_dir: Path) -> None:
    params = {"map": jnp.eye(3)}
    with pytest.raises(EvaluatorConfigError, match=r"'fewshot'.*does not output 'prelogits'.*other, pre_logits"):
        _evaluator(data_dir, shots=(1,), representation="prelogits").run(params)
    with pytest.raises(EvaluatorConfigError, match=r"fewer than 11 train examples in 3 of its 3 classes.*at most 10"):
        _evaluator(data_dir, shots=(1, 11)).run(params)
    with pytest.raises(EvaluatorConfigError, match="no pp for data set 'three_constants'. Set pp_eval"):
        _evaluator(data_dir, pp=None, pp_train=PP)
    with pytest.raises(EvaluatorConfigError, match=r"pp_train has entries for \['mnist'\]"):
        _evaluator(data_dir, pp_train={"mnist": PP})
    with pytest.raises(EvaluatorConfigError, match="without \\['label'\\]"):
        _evaluator(data_dir, pp="decode(channels=1)|keep('image')")
    with pytest.raises(EvaluatorConfigError, match="l2_reg must be a positive number"):
        _evaluator(data_dir, l2_reg=0)
    assert registry.evaluators.get("fewshot_lsr") is FewshotEvaluator


def _png(value: int) -> bytes:
    return tf.io.encode_png(tf.fill([4, 4, 3], tf.constant(value, tf.uint8))).numpy()  # type: ignore[no-any-return]


def _mock_as_dataset(self: tfds.core.DatasetBuilder, split: Any, **kwargs: Any) -> tf.data.Dataset:
    """Every class twice in train and once in test, each image a constant equal to its label."""
    num_classes = self.info.features["label"].num_classes
    n = num_classes * (2 if "train" in str(split) else 1)  # split may come as a ReadInstruction
    labels = np.arange(n) % num_classes
    return tf.data.Dataset.from_tensor_slices({"image": [_png(v) for v in labels], "label": labels})


def test_tfds_names_under_mock_data(tmp_path: Path) -> None:
    params = {"map": jnp.eye(128)}
    pp = {
        "cifar100": "decode|resize(8)|keep('image', 'label')",
        "pets": "decode|resize(6)|keep('image', 'label')",
    }
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        evaluator = FewshotEvaluator(
            {"predict": _label_predict},
            datasets={"cifar100": ("train", "test"), "pets": ("oxford_iiit_pet", "train", "test")},
            pp_train=pp,
            pp_eval=pp,
            shots=(1, 2),
            seeds=(0,),
            batch_size=16,
            mesh=MESH,
            data_dir=str(tmp_path),
        )
        assert [ds.num_classes for ds in evaluator.datasets] == [100, 37]
        metrics = evaluator.run(params)
    assert metrics == {f"{d}_{k}shot": 1.0 for d in ("cifar100", "pets", "mean") for k in (1, 2)}


def test_digits_with_a_random_tiny_vit(tmp_path: Path) -> None:
    from bv.vit import create_model

    model = create_model(num_classes=10, patch_size=(4, 4), width=16, depth=1, num_heads=2, mlp_dim=32)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]

    def predict(params: Any, images: jax.Array) -> Any:
        return model.apply({"params": params}, images)

    evaluator = FewshotEvaluator(
        {"predict": predict},
        datasets={"digits": ("train", "test")},
        pp="decode(channels=1)|value_range(-1, 1)|keep('image', 'label')",
        shots=(1, 5),
        seeds=(0, 1),
        batch_size=128,
        mesh=MESH,
        data_dir=str(tmp_path),
    )
    metrics = evaluator.run(params)
    assert set(metrics) == {"digits_1shot", "digits_5shot"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["digits_5shot"] > 0.2  # random features of digits still beat chance (0.1)
