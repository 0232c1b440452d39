"""Tests for the general pp ops, eagerly and inside tf.data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import bv.pp  # noqa: F401  (registers the ops)
from bv.core.registry import pp_ops


def run(spec: str, data: dict) -> dict:
    return tf.nest.map_structure(np.asarray, pp_ops.call(spec)(data))


def run_in_dataset(spec: str, data: dict) -> dict:
    (out,) = tf.data.Dataset.from_tensors(data).map(pp_ops.call(spec)).as_numpy_iterator()
    return out


# ---------------------------------------------------------------- value_range


def test_value_range_defaults_map_0_255_to_minus1_1():
    img = tf.constant([0, 51, 255], tf.uint8)
    out = run("value_range", {"image": img})["image"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, -0.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(run("value_range(0, 1)", {"image": img})["image"], [0.0, 0.2, 1.0], rtol=1e-6)


def test_value_range_custom_input_range_per_channel_and_clip():
    x = tf.constant([[0.0, 10.0], [5.0, 20.0]])  # two pixels, two channels
    out = run("value_range(0, 1, in_min=(0, 10), in_max=(10, 20))", {"image": x})["image"]
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 1.0]])
    wide = tf.constant([-50.0, 300.0])
    np.testing.assert_allclose(run("value_range(-1, 1)", {"image": wide})["image"], [-1 - 100 / 255, 1 + 90 / 255])
    np.testing.assert_allclose(run("value_range(-1, 1, clip_values=True)", {"image": wide})["image"], [-1.0, 1.0])


def test_value_range_on_another_key():
    out = run("value_range(0, 2, 0, 4, key='depth')", {"image": tf.constant([8]), "depth": tf.constant([1.0])})
    np.testing.assert_array_equal(out["image"], [8])
    np.testing.assert_allclose(out["depth"], [0.5])


# ---------------------------------------------------------------- onehot


def test_onehot_scalar_label():
    out = run("onehot(4)", {"labels": tf.constant(2)})["labels"]
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.0, 0.0])
    assert out.dtype == np.float32


def test_onehot_key_result_and_on_off():
    out = run("onehot(3, key='label', key_result='labels', on=0.9, off=0.05)", {"label": tf.constant(0, tf.int64)})
    np.testing.assert_array_equal(out["label"], 0)  # the input stays
    np.testing.assert_allclose(out["labels"], [0.9, 0.05, 0.05])


def test_onehot_multi_label_merges_into_one_vector():
    labels = tf.constant([3, 0, 3])
    np.testing.assert_array_equal(run("onehot(5)", {"labels": labels})["labels"], [1, 0, 0, 1, 0])
    np.testing.assert_allclose(run("onehot(4, on=2.0, off=-1.0)", {"labels": labels})["labels"], [2, -1, -1, 2])
    separate = run("onehot(4, multi=False)", {"labels": labels})["labels"]
    np.testing.assert_array_equal(separate, np.eye(4)[[3, 0, 3]])
    none = run("onehot(3)", {"labels": tf.zeros([0], tf.int32)})["labels"]
    np.testing.assert_array_equal(none, [0, 0, 0])


def test_onehot_errors():
    with pytest.raises(ValueError, match="positive int"):
        pp_ops.call("onehot(0)")
    with pytest.raises(KeyError, match=r"onehot reads data\['labels'\].*\['label'\]"):
        pp_ops.call("onehot(3)")({"label": tf.constant(1)})


# ---------------------------------------------------------------- keep, drop, copy


def test_keep_and_drop():
    data = {"image": tf.constant(1), "labels": tf.constant(2), "id": tf.constant(3)}
    assert sorted(run("keep('image', 'labels')", data)) == ["image", "labels"]
    assert sorted(run("keep('image', 'absent')", data)) == ["image"]
    assert sorted(run("drop('id')", data)) == ["image", "labels"]
    assert sorted(run("drop('id', 'absent', 'labels')", data)) == ["image"]
    assert sorted(data) == ["id", "image", "labels"], "ops must not change their input dict"


def test_keep_retains_the_rng_so_later_random_ops_stay_seeded():
    out = run("keep('image')", {"image": tf.constant(1), "labels": tf.constant(2), "_rng": tf.constant([1, 2])})
    assert sorted(out) == ["_rng", "image"]
    np.testing.assert_array_equal(out["_rng"], [1, 2])


def test_copy_copies_structure_and_shares_tensors():
    inner = {"a": tf.constant([1, 2]), "b": [tf.constant(3)]}
    out = pp_ops.call("copy('objects', 'objects2')")({"objects": inner})
    assert out["objects2"] is not inner and out["objects2"]["b"] is not inner["b"]
    assert out["objects2"]["a"] is inner["a"]
    out["objects2"]["c"] = tf.constant(0)
    assert "c" not in inner
    with pytest.raises(KeyError, match="copy reads"):
        pp_ops.call("copy('nope', 'x')")({"objects": inner})


# ---------------------------------------------------------------- graph mode


@pytest.mark.parametrize(
    "spec",
    [
        "value_range(-1, 1)",
        "value_range(0, 1, in_min=(0, 0, 10), in_max=(255, 255, 20), clip_values=True)",
        "onehot(5, key='label', key_result='labels', on=0.8, off=0.1)",
        "onehot(6, key='tags')",
        "onehot(6, key='tags', multi=False)",
        "keep('image', 'label')",
        "drop('tags')",
        "copy('label', 'label2')",
    ],
)
def test_graph_mode_matches_eager(spec):
    data = {
        "image": tf.constant(np.arange(12).reshape(2, 2, 3) * 20, tf.uint8),
        "label": tf.constant(3),
        "tags": tf.constant([1, 5, 1]),
    }
    eager, graph = run(spec, data), run_in_dataset(spec, data)
    assert sorted(eager) == sorted(graph)
    for k in eager:
        np.testing.assert_array_equal(eager[k], graph[k])
