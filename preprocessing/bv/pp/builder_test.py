"""Tests for compiling pp strings into functions."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf

from bv.core.registry import UnknownNameError, pp_ops
from bv.pp import get_preprocess_fn
from bv.pp.utils import next_seed

PIPELINE = "decode|resize(6)|value_range(-1, 1)|onehot(10, key='label', key_result='labels')|keep('image', 'labels')"
RANDOM_PIPELINE = "decode|inception_crop(6, area_min=30)|flip_lr|random_crop(4)|value_range(0, 1)"


def example(seed: int | None = None) -> dict:
    img = np.arange(12 * 10 * 3).reshape(12, 10, 3).astype(np.uint8)
    data = {"image": tf.io.encode_png(img), "label": tf.constant(7, tf.int64), "id": tf.constant(0)}
    if seed is not None:
        data["_rng"] = tf.constant([seed, 1], tf.int64)
    return data


def in_dataset(fn, data: dict) -> dict:
    (out,) = tf.data.Dataset.from_tensors(data).map(fn).as_numpy_iterator()
    return out


@pytest.mark.parametrize("pipeline", [None, "", "|", " | "])
def test_empty_pipeline_is_identity(pipeline):
    data = {"image": tf.constant([1, 2])}
    out = get_preprocess_fn(pipeline)(data)
    assert list(out) == ["image"] and out["image"] is data["image"]


def test_pipeline_runs_ops_in_order():
    out = get_preprocess_fn(PIPELINE)(example())
    assert sorted(out) == ["image", "labels"]
    assert out["image"].shape == (6, 6, 3) and out["image"].dtype == tf.float32
    assert -1.0 <= float(tf.reduce_min(out["image"])) < float(tf.reduce_max(out["image"])) <= 1.0
    np.testing.assert_array_equal(out["labels"], np.eye(10)[7])
    # "||" and spaces around ops are tolerated, and give the same function.
    again = get_preprocess_fn(PIPELINE.replace("|", " || "))(example())
    np.testing.assert_array_equal(out["image"], again["image"])


def test_pipeline_does_not_mutate_its_input():
    data = example(seed=3)
    get_preprocess_fn(RANDOM_PIPELINE)(data)
    assert sorted(data) == ["_rng", "id", "image", "label"]
    np.testing.assert_array_equal(data["_rng"], [3, 1])


@pytest.mark.parametrize("pipeline", [PIPELINE, RANDOM_PIPELINE])
def test_dataset_map_matches_eager(pipeline):
    fn = get_preprocess_fn(pipeline)
    eager, graph = fn(example(seed=5)), in_dataset(fn, example(seed=5))
    assert sorted(eager) == sorted(graph)
    for k in eager:
        np.testing.assert_array_equal(eager[k], graph[k])


def test_rng_is_consumed_and_removed():
    out = get_preprocess_fn(RANDOM_PIPELINE)(example(seed=1))
    assert "_rng" not in out and out["image"].shape == (4, 4, 3)
    assert "_rng" not in get_preprocess_fn("keep('image')")(example(seed=1))


def test_random_pipeline_is_a_function_of_the_rng():
    fn = get_preprocess_fn(RANDOM_PIPELINE)
    first = [fn(example(seed=s))["image"].numpy() for s in range(6)]
    second = [in_dataset(fn, example(seed=s))["image"] for s in range(6)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    distinct = {a.tobytes() for a in first}
    assert len(distinct) >= 5, "different seeds must give different augmentations"


def test_without_rng_random_ops_fall_back_to_stateful_random():
    outs = {
        get_preprocess_fn("random_crop(2)")({"image": tf.reshape(tf.range(64), [8, 8, 1])})["image"].numpy().tobytes()
        for _ in range(12)
    }
    assert len(outs) > 1


def test_two_random_ops_get_different_seeds():
    img = tf.reshape(tf.range(16 * 16, dtype=tf.int32), [16, 16, 1])
    fn = get_preprocess_fn("random_crop(4, key='a')|random_crop(4, key='b')")
    same = 0
    for s in range(10):
        rng = tf.constant([s, 7], tf.int64)
        out = fn({"a": img, "b": img, "_rng": rng})
        # Op 2 sees exactly the seed that op 1 carried forward, not op 1's seed.
        carried = {"_rng": rng}
        next_seed(carried)
        alone = pp_ops.call("random_crop(4, key='b')")({"b": img, "_rng": carried["_rng"]})
        np.testing.assert_array_equal(out["b"], alone["b"])
        same += int(np.array_equal(out["a"], out["b"]))
    assert same <= 1, f"{same} of 10 pipelines cropped a and b at the same place"


def test_unknown_op_lists_known_ops():
    with pytest.raises(UnknownNameError) as info:
        get_preprocess_fn("decode|resise(224)")
    message = str(info.value)
    assert "'resise'" in message and "Did you mean 'resize'" in message
    for name in ("decode", "flip_lr", "inception_crop", "onehot", "value_range"):
        assert name in message
    assert "decode|resise(224)" in message


@pytest.mark.parametrize(
    "pipeline, bad, detail",
    [
        ("decode|resize(224, foo=1)", "resize(224, foo=1)", "unexpected keyword argument 'foo'"),
        ("resize('big')", "resize('big')", "int or a \\(height, width\\)"),
        ("decode|onehot()", "onehot()", "depth"),
        ("decode|resize(224", "resize(224", "Cannot parse"),
    ],
)
def test_bad_arguments_name_the_op(pipeline, bad, detail):
    with pytest.raises(ValueError, match=detail) as info:
        get_preprocess_fn(pipeline)
    assert f"Bad pp op {bad!r}" in str(info.value)


def test_bad_arguments_show_the_signature():
    with pytest.raises(
        ValueError, match=r"Its arguments are resize\(size, method='bilinear', antialias=False, \*, key=None"
    ):
        get_preprocess_fn("resize(1, 2, 3, 4)")


def test_non_dict_input_is_an_error():
    with pytest.raises(TypeError, match="dict"):
        get_preprocess_fn("decode")(tf.constant(1))  # type: ignore[arg-type]


def test_log_data_logs_once(caplog):
    fn = get_preprocess_fn("value_range(0, 1)", log_data=True)
    with caplog.at_level(logging.INFO, logger="bv.pp.builder"):
        fn({"image": tf.zeros([2, 2, 3], tf.uint8)})
        fn({"image": tf.zeros([2, 2, 3], tf.uint8)})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "before" in messages[0] and "image: uint8 (2, 2, 3)" in messages[0]
    assert "after" in messages[1] and "image: float32 (2, 2, 3)" in messages[1]
