"""Tests for the extra general pp ops, eagerly and inside tf.data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import bv.pp  # noqa: F401  (registers the ops)
from bv.core.registry import pp_ops
from bv.pp import ops_more


def run(spec: str, data: dict) -> dict:
    return tf.nest.map_structure(np.asarray, pp_ops.call(spec)(dict(data)))


def run_in_dataset(spec: str, data: dict) -> dict:
    (out,) = tf.data.Dataset.from_tensors(data).map(pp_ops.call(spec)).as_numpy_iterator()
    return tf.nest.map_structure(np.asarray, out)  # scalar strings come back as bytes


def both(spec: str, data: dict) -> list[dict]:
    """The op's output eagerly and traced by tf.data; the caller checks both."""
    return [run(spec, data), run_in_dataset(spec, data)]


# ---------------------------------------------------------------- image ops


def test_clip_value_range_uses_clip_statistics():
    image = np.array([[[0, 128, 255]]], np.uint8)
    expected = (image.astype(np.float32) - np.array(ops_more.CLIP_MEAN)) / np.array(ops_more.CLIP_STD)
    for out in both("clip_value_range", {"image": image}):
        assert out["image"].dtype == np.float32
        np.testing.assert_allclose(out["image"], expected, rtol=1e-6)
    # The mean colour maps to zero.
    mean_pixel = np.array(ops_more.CLIP_MEAN, np.float32)[None, None]
    np.testing.assert_allclose(run("clip_value_range", {"image": mean_pixel})["image"], 0, atol=1e-6)


def test_convert_to_video_pads_black_frames():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) + 1
    for out in both("convert_to_video(4)", {"image": image}):
        video = out["image"]
        assert video.shape == (4, 2, 3, 3) and video.dtype == np.uint8
        np.testing.assert_array_equal(video[0], image)
        assert not video[1:].any()
    with pytest.raises(ValueError, match="num_frames"):
        pp_ops.call("convert_to_video(0)")


# ---------------------------------------------------------------- shapes


def test_squeeze_last_dim():
    for out in both("squeeze_last_dim(key='mask')", {"mask": np.ones((3, 4, 1), np.int32)}):
        assert out["mask"].shape == (3, 4)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        run("squeeze_last_dim", {"image": np.ones((3, 4, 2))})


def test_reshape_keeps_dtype_and_values():
    x = np.arange(12, dtype=np.int16)
    for out in both("reshape((3, -1), key='x')", {"x": x}):
        assert out["x"].dtype == np.int16
        np.testing.assert_array_equal(out["x"], x.reshape(3, 4))
    np.testing.assert_array_equal(run("reshape(12, inkey='x', outkey='y')", {"x": x.reshape(3, 4)})["y"], x)
    with pytest.raises(ValueError, match="at most one"):
        pp_ops.call("reshape((-1, -1))")
    with pytest.raises(ValueError, match="non-negative ints"):
        pp_ops.call("reshape((2, 'a'))")


@pytest.mark.parametrize(
    "where, rows",
    [("after", [1, 2, 9, 9, 9]), ("before", [9, 9, 9, 1, 2]), ("both", [9, 1, 2, 9, 9])],
)
def test_pad_to_shape_where(where, rows):
    x = np.array([[1, 1], [2, 2]], np.int32)
    for out in both(f"pad_to_shape((5, None), pad_value=9, where={where!r}, key='x')", {"x": x}):
        np.testing.assert_array_equal(out["x"][:, 0], rows)
        assert out["x"].shape == (5, 2)


def test_pad_to_shape_static_shape_and_errors():
    ds = tf.data.Dataset.from_tensors({"x": tf.zeros([3], tf.float32)})
    ds = ds.map(lambda d: {"x": tf.boolean_mask(d["x"], d["x"] >= 0)})  # unknown length
    spec = ds.map(pp_ops.call("pad_to_shape((8,), key='x')")).element_spec
    assert spec["x"].shape.as_list() == [8]
    with pytest.raises(tf.errors.InvalidArgumentError, match="too big"):
        run("pad_to_shape((2,), key='x')", {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="has 2 dims"):
        run("pad_to_shape((2, 2), key='x')", {"x": np.zeros(1)})
    with pytest.raises(ValueError, match="where='middle'"):
        pp_ops.call("pad_to_shape((2,), where='middle')")


def test_concat_default_and_named_outkey():
    data = {"a": np.ones((2, 1), np.float32), "b": np.zeros((2, 2), np.float32)}
    for out in both("concat(['a', 'b'])", data):
        np.testing.assert_array_equal(out["a"], [[1, 0, 0], [1, 0, 0]])
    for out in both("concat(('b', 'a'), outkey='ab', axis=1)", data):
        np.testing.assert_array_equal(out["ab"], [[0, 0, 1], [0, 0, 1]])
        np.testing.assert_array_equal(out["a"], data["a"])
    with pytest.raises(KeyError, match="'c'"):
        run("concat(['a', 'c'])", data)


def test_rag_tensor_wraps_one_row():
    out = pp_ops.call("rag_tensor(key='t')")({"t": tf.constant([1, 2, 3])})["t"]
    assert isinstance(out, tf.RaggedTensor)
    assert out.to_list() == [[1, 2, 3]]
    ds = tf.data.Dataset.from_tensor_slices({"t": tf.ragged.constant([[1, 2], [3]])}).map(lambda d: {"t": d["t"]})
    rows = ds.map(pp_ops.call("rag_tensor(key='t')")).ragged_batch(2)  # variable lengths batch as ragged
    (batch,) = list(rows)
    assert batch["t"].to_list() == [[[1, 2]], [[3]]]


# ---------------------------------------------------------------- dict structure


def test_flatten_nested_dicts():
    data = {"image": np.zeros(2), "objects": {"bbox": np.ones((1, 4)), "label": np.array([3])}}
    for out in both("flatten", data):
        assert sorted(out) == ["image", "objects/bbox", "objects/label"]
        np.testing.assert_array_equal(out["objects/label"], [3])


def test_setdefault_missing_empty_and_present():
    for out in both("setdefault('label', 7)", {"image": np.zeros(1)}):
        assert out["label"] == 7
    for out in both("setdefault('texts', 'none')", {"texts": tf.constant([], tf.string)}):
        assert out["texts"].tolist() == [b"none"]
    for out in both("setdefault('texts', 'none')", {"texts": tf.constant(["a", "b"])}):
        assert out["texts"].tolist() == [b"a", b"b"]
    for out in both("setdefault('x', 1.5)", {"x": np.zeros((0, 2), np.float32)}):
        np.testing.assert_array_equal(out["x"], [[1.5, 1.5]])  # zero sizes become 1


# ---------------------------------------------------------------- choice


def seeded(data: dict, seed: int) -> dict:
    return {**data, "_rng": tf.constant([seed, 5], tf.int64)}


def test_choice_single_picks_one_entry_from_all_keys_consistently():
    data = {"texts": tf.constant(["a", "b", "c", "d"]), "ids": tf.constant([0, 1, 2, 3])}
    outs = [run("choice(key=['texts', 'ids'])", seeded(data, seed)) for seed in range(12)]
    outs.append(run_in_dataset("choice(key=['texts', 'ids'])", seeded(data, 0)))
    for out in outs:
        assert out["texts"].shape == () and out["ids"].shape == ()
        assert out["texts"].item().decode() == "abcd"[out["ids"]]  # the same index for both keys
    assert outs[-1]["ids"] == outs[0]["ids"]  # tf.data and eager agree for one seed
    assert len({int(out["ids"]) for out in outs}) >= 3  # seeds lead to different picks


def test_choice_is_a_pure_function_of_the_seed():
    data = {"x": tf.range(50)}
    a = [run("choice(5, key='x')", seeded(data, s))["x"] for s in range(4)]
    b = [run_in_dataset("choice(5, key='x')", seeded(data, s))["x"] for s in range(4)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert len({x.tobytes() for x in a}) == 4


def test_choice_n_keeps_order_and_static_shape():
    data = {"boxes": tf.reshape(tf.range(20), [10, 2]), "labels": tf.range(10)}
    out = run("choice(4, key=['boxes', 'labels'], outkey=['{key}_sub', 'lab'])", seeded(data, 1))
    labels = out["lab"]
    assert labels.shape == (4,) and len(set(labels.tolist())) == 4
    assert (np.diff(labels) > 0).all()  # original order kept
    np.testing.assert_array_equal(out["boxes_sub"], np.stack([2 * labels, 2 * labels + 1], axis=1))
    spec = tf.data.Dataset.from_tensors(seeded(data, 1)).map(pp_ops.call("choice(4, key='labels')")).element_spec
    assert spec["labels"].shape.as_list() == [4]


def test_choice_range_and_fewer_ok():
    data = {"x": tf.range(10)}
    sizes = {len(run("choice([2, 5], key='x')", seeded(data, s))["x"]) for s in range(20)}
    assert sizes <= {2, 3, 4, 5} and len(sizes) >= 2
    short = {"x": tf.range(3)}
    np.testing.assert_array_equal(run("choice(5, key='x', fewer_ok=True)", seeded(short, 0))["x"], [0, 1, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="fewer than 5"):
        run("choice(5, key='x')", seeded(short, 0))


def test_choice_no_replacement_cycles_through_all_entries_per_example():
    texts = np.array([b"a", b"b", b"c"])
    ids = np.array([b"0", b"1", b"2"])

    def picks(example_id: int, epochs: range, runner) -> list[tuple[bytes, int]]:
        out = []
        for epoch in epochs:
            data = {"texts": texts, "ids": ids, "_id": np.int32(example_id), "_epoch": np.int64(epoch)}
            r = runner("choice_no_replacement(key=['texts', 'ids'])", data)
            out.append((r["texts"].item(), int(r["ids"].item())))
        return out

    first = picks(7, range(6), run)
    assert first == picks(7, range(6), run_in_dataset)  # eager and in tf.data alike
    assert all(t == texts[i] for t, i in first)  # the same entry of every key
    # Every entry once per cycle of 3 epochs; the two cycles use different orders for some example.
    assert sorted(t for t, _ in first[:3]) == sorted(t for t, _ in first[3:]) == [b"a", b"b", b"c"]
    orders = {tuple(t for t, _ in picks(i, range(3), run)) for i in range(8)}
    assert len(orders) > 1  # the order depends on the example
    with pytest.raises(KeyError, match="needs the example's _id and _epoch"):
        run("choice_no_replacement(key='texts')", {"texts": texts, "_id": np.int32(1)})


def test_training_examples_carry_their_epoch(tmp_path):
    from bv.core.data import custom, input_pipeline as ip

    builder = custom.build_from_arrays("epochs", {"train": {"x": np.arange(5)}}, str(tmp_path))
    seen = []

    def pp(data):
        return {"x": data["x"], "epoch": data["_epoch"], "has_id": tf.constant("_id" in data)}

    ds = ip.make_for_train(builder, "train", 5, pp, seed=0, skip_decode=(), start_index=5)  # resumes in epoch 1
    for batch in ds.take(2).as_numpy_iterator():
        seen.append(batch)
    assert [b["epoch"].tolist() for b in seen] == [[1] * 5, [2] * 5] and seen[0]["has_id"].all()
    assert "_epoch" not in seen[0]


def test_choice_without_rng_and_argument_errors():
    out = run("choice(key='x')", {"x": tf.constant([4, 4, 4])})
    assert out["x"] == 4
    with pytest.raises(ValueError, match="n must be"):
        pp_ops.call("choice(n='two', key='x')")
    with pytest.raises(ValueError, match="needs key or inkey"):
        pp_ops.call("choice()")
    with pytest.raises(ValueError, match="2 inkeys"):
        pp_ops.call("choice(inkey=['a', 'b'], outkey=['c'])")
    with pytest.raises(tf.errors.InvalidArgumentError, match="length differs"):
        run("choice(key=['a', 'b'])", {"a": tf.range(3), "b": tf.range(4), "_rng": tf.constant([1, 2])})


# ---------------------------------------------------------------- lookup


def test_lookup_from_dict_and_text_files(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("cat\t10\ndog\t20\n")
    data = {"name": tf.constant(["dog", "fish", "cat"])}
    for out in both(f"lookup({str(names)!r}, key='name')", data):
        np.testing.assert_array_equal(out["name"], [1, -1, 0])
    for out in both(f"lookup({str(pairs)!r}, sep='\\t', inkey='name', outkey='id')", data):
        np.testing.assert_array_equal(out["id"], [20, -1, 10])
    for out in both("lookup({'cat': 3, 'dog': 4}, default=0, key='name')", data):
        np.testing.assert_array_equal(out["name"], [4, 0, 3])
    for out in both("lookup({5: 1, 6: 2}, key='n')", {"n": tf.constant([6, 5, 7], tf.int32)}):
        np.testing.assert_array_equal(out["n"], [2, 1, -1])


def test_lookup_from_npz_and_errors(tmp_path):
    path = tmp_path / "files.npz"
    np.savez(path, fnames=np.array(["x.jpg", "y.jpg"]), other=np.array(["q"]))
    for out in both(f"lookup({str(path)!r}, key='f')", {"f": tf.constant(["y.jpg", "x.jpg"])}):
        np.testing.assert_array_equal(out["f"], [1, 0])
    np.testing.assert_array_equal(run(f"lookup({str(path)!r}, npzkey='other', key='f')", {"f": ["q"]})["f"], [0])
    with pytest.raises(ValueError, match="no array 'missing'"):
        pp_ops.call(f"lookup({str(path)!r}, npzkey='missing')")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pp_ops.call(f"lookup({str(tmp_path / 'nope.txt')!r})")
    bad = tmp_path / "bad.txt"
    bad.write_text("a,1\nb\n")
    with pytest.raises(ValueError, match="line 2"):
        pp_ops.call(f"lookup({str(bad)!r}, sep=',')")
