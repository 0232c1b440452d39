from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from bv.core import registry
from bv.evaluators import EvaluatorConfigError, ImageNetV2Evaluator, RealEvaluator

MESH = Mesh(np.asarray(jax.devices()[:1]), ("data",))

# ReaL labels of the ten crafted validation images; image i is the constant i, and the model predicts class i.
REAL_LABELS = [[0], [5, 1], [], [4], [], [7, 5], [9], [], [1, 2], [3, 9]]
# Right: images 0, 1, 5, 9 (4); wrong: 3, 6, 8 (3); no labels, so not counted: 2, 4, 7.
REAL_PREC1 = 4 / 7
V2_LABELS = [0, 1, 2, 3, 4, 5, 6, 0, 0, 0]  # top-1 right for images 0-6 (7 of 10)


def _predict(params: dict, images: jax.Array) -> tuple[jax.Array, dict]:
    return params["scale"] * jax.nn.one_hot(images[:, 0, 0, 0].astype(jnp.int32), 1000), {}


def _png(value: int) -> bytes:
    return tf.io.encode_png(tf.fill([4, 4, 3], tf.constant(value, tf.uint8))).numpy()  # type: ignore[no-any-return]


def _crafted(self: tfds.core.DatasetBuilder, split: Any, **kwargs: Any) -> tf.data.Dataset:
    """The ten examples above, for whichever of the two data sets is asked for."""
    if self.name == "imagenet2012_real":
        examples = [
            {"image": _png(i), "original_label": i, "real_label": np.asarray(labels, np.int64)}
            for i, labels in enumerate(REAL_LABELS)
        ]
        signature = {
            "image": tf.TensorSpec([], tf.string),
            "original_label": tf.TensorSpec([], tf.int64),
            "real_label": tf.TensorSpec([None], tf.int64),
        }
        ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)
        return ds.apply(tf.data.experimental.assert_cardinality(len(examples)))
    assert self.name == "imagenet_v2"
    return tf.data.Dataset.from_tensor_slices({"image": [_png(i) for i in range(10)], "label": V2_LABELS})


REAL_PP = "decode|onehot(1000, key='real_label', key_result='labels')|keep('image', 'labels')"
V2_PP = "decode|onehot(1000, key='label', key_result='labels')|keep('image', 'labels')"


@pytest.mark.parametrize("batch_size", [3, 10])
def test_real_leaves_out_images_without_labels(batch_size: int) -> None:
    with tfds.testing.mock_data(as_dataset_fn=_crafted):
        evaluator = RealEvaluator({"predict": _predict}, pp_fn=REAL_PP, batch_size=batch_size, mesh=MESH)
        metrics = evaluator.run({"scale": jnp.float32(1.0)})
    assert metrics == {"prec@1": pytest.approx(REAL_PREC1)}


def test_imagenet_v2_is_top1_on_its_test_split() -> None:
    with tfds.testing.mock_data(as_dataset_fn=_crafted):
        evaluator = ImageNetV2Evaluator({"predict": _predict}, pp_fn=V2_PP, batch_size=4, mesh=MESH, name="v2")
        metrics = evaluator.run({"scale": jnp.float32(1.0)})
    assert metrics["prec@1"] == pytest.approx(0.7)
    right, wrong = np.log(np.e + 999) - 1, np.log(np.e + 999)  # softmax_xent of one-hot logits
    assert metrics["loss"] == pytest.approx((7 * right + 3 * wrong) / 10, rel=1e-5)


def test_random_mock_data_runs_and_errors_name_the_fix() -> None:
    assert registry.evaluators.get("real") is RealEvaluator
    assert registry.evaluators.get("imagenet_v2") is ImageNetV2Evaluator
    with tfds.testing.mock_data(num_examples=4):  # TFDS's random examples of the real features
        pp = REAL_PP.replace("decode|", "decode|resize(4)|")  # random images have random sizes
        metrics = RealEvaluator({"predict": _predict}, pp_fn=pp, batch_size=2, mesh=MESH).run({"scale": 1.0})
        assert 0.0 <= metrics["prec@1"] <= 1.0
        with pytest.raises(EvaluatorConfigError, match=r"'real' \(real\).*multi-hot.*onehot\(1000, key='real_label'"):
            RealEvaluator(
                {"predict": _predict}, pp_fn="decode|keep('image', 'original_label')", batch_size=2, mesh=MESH
            )
        with pytest.raises(EvaluatorConfigError, match="pred='logits' is not a predict function"):
            RealEvaluator({"predict": _predict}, pp_fn=REAL_PP, batch_size=2, mesh=MESH, pred="logits")
