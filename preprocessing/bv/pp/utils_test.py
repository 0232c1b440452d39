"""Tests for the key decorator and the per-op seed helper."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import tensorflow as tf

from bv.pp import utils


@utils.inkey_outkey()
def get_add(amount: int = 1):
    return lambda x: x + amount


@utils.inkey_outkey(indefault="labels", outdefault="out", with_seed=True)
def get_noise():
    def noise(x, seed):
        if seed is None:
            return x + tf.random.uniform([], 0, 1000, tf.int32)
        return x + tf.random.stateless_uniform([], seed, 0, 1000, tf.int32)

    return noise


def test_key_defaults_and_overrides():
    data = {"image": tf.constant(1), "other": tf.constant(10)}
    assert int(get_add()(data)["image"]) == 2
    assert int(get_add(5, key="other")(data)["other"]) == 15
    out = get_add(inkey="other", outkey="new")(data)
    assert (int(out["image"]), int(out["other"]), int(out["new"])) == (1, 10, 11)


def test_op_does_not_mutate_its_input():
    data = {"image": tf.constant(1)}
    get_add()(data)
    assert int(data["image"]) == 1


def test_missing_key_names_the_available_keys():
    with pytest.raises(KeyError, match=r"pp op add reads data\['image'\].*\['labels'\]"):
        get_add()({"labels": tf.constant(1)})


def test_signature_shows_factory_and_key_arguments():
    params = inspect.signature(get_add).parameters
    assert list(params) == ["amount", "key", "inkey", "outkey"]
    assert params["inkey"].default == "image"
    assert inspect.signature(get_noise).parameters["outkey"].default == "out"


def test_next_seed_without_rng_is_none():
    data: dict = {"image": tf.constant(0)}
    assert utils.next_seed(data) is None
    assert "_rng" not in data


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_next_seed_splits_and_advances(dtype):
    rng = tf.constant([3, 4], dtype)
    data = {"_rng": rng}
    first = utils.next_seed(data)
    carried = data["_rng"]
    second = utils.next_seed(data)
    expected = tf.random.experimental.stateless_split(rng, num=2, alg="philox").numpy()
    np.testing.assert_array_equal(carried, expected[0])
    np.testing.assert_array_equal(first, expected[1])
    assert first.dtype == carried.dtype == dtype
    seeds = {tuple(rng.numpy()), tuple(first.numpy()), tuple(second.numpy()), tuple(data["_rng"].numpy())}
    assert len(seeds) == 4, "every seed handed out or carried must be new"


def test_next_seed_rejects_float_rng():
    with pytest.raises(ValueError, match="int32 or int64"):
        utils.next_seed({"_rng": tf.constant([1.0, 2.0])})


def test_seeded_op_is_reproducible_and_advances_rng():
    op = get_noise()
    data = {"labels": tf.constant(0), "_rng": tf.constant([7, 8])}
    a, b = op(data), op(data)
    assert int(a["out"]) == int(b["out"])
    assert not np.array_equal(a["_rng"], data["_rng"])
    c = op({"labels": tf.constant(0), "_rng": tf.constant([7, 9])})
    d = op(a)  # same op again on the advanced seed
    assert len({int(a["out"]), int(c["out"]), int(d["out"])}) == 3
