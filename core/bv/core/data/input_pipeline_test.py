"""Train and eval pipelines: shapes, determinism, bitwise resume, per-example rngs, eval padding."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bv.core.data import custom, input_pipeline as ip

N_TRAIN, N_TEST = 40, 23


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> tfds.core.DatasetBuilder:
    """Each example's image is filled with its index, and ``idx`` holds it too."""

    def split(n: int, offset: int) -> dict[str, np.ndarray]:
        idx = np.arange(offset, offset + n)
        return {
            "image": np.broadcast_to(idx[:, None, None, None], (n, 4, 4, 1)).astype(np.uint8),
            "idx": idx.astype(np.int64),
            "label": idx % 3,
        }

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return custom.build_from_arrays("indexed", {"train": split(N_TRAIN, 0), "test": split(N_TEST, 100)}, data_dir)


def pp_random(data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Decodes, then adds noise drawn from the example's ``_rng`` (a random pp op)."""
    image = tf.cast(tf.io.decode_png(data["image"]), tf.float32)
    noise = tf.random.stateless_uniform(tf.shape(image), seed=data["_rng"])
    return {"image": image + noise, "idx": data["idx"], "label": data["label"]}


def pp_plain(data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"image": tf.cast(tf.io.decode_png(data["image"]), tf.float32), "idx": data["idx"]}


def take(ds: tf.data.Dataset, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(tfds.as_numpy(ds), n))


def assert_batches_equal(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_num_examples_takes_split_strings(builder: tfds.core.DatasetBuilder) -> None:
    assert ip.num_examples(builder, "train") == N_TRAIN
    assert ip.num_examples(builder, "train[:25%]") == N_TRAIN // 4
    assert ip.num_examples(builder, "train+test") == N_TRAIN + N_TEST
    with pytest.raises(ValueError, match="Unknown split"):
        ip.num_examples(builder, "validation")


def test_train_shapes_and_epochs(builder: tfds.core.DatasetBuilder) -> None:
    ds = ip.make_for_train(builder, "train", 8, pp_random, seed=0, shuffle_buffer_size=100)
    batches = take(ds, 2 * N_TRAIN // 8)
    assert batches[0]["image"].shape == (8, 4, 4, 1) and batches[0]["image"].dtype == np.float32
    assert set(batches[0]) == {"image", "idx", "label"}  # No _rng or _id leaks out.
    idx = np.concatenate([b["idx"] for b in batches])
    # Each epoch visits every example once, in a different order each time.
    assert sorted(idx[:N_TRAIN]) == list(range(N_TRAIN)) == sorted(idx[N_TRAIN:])
    assert list(idx[:N_TRAIN]) != list(idx[N_TRAIN:])
    assert list(idx[:N_TRAIN]) != list(range(N_TRAIN))
    # The pixels are the example's index plus uniform [0, 1) noise.
    image = batches[0]["image"]
    base = batches[0]["idx"][:, None, None, None]
    assert ((image >= base) & (image < base + 1)).all() and (image > base).any()


def test_train_is_deterministic_per_seed(builder: tfds.core.DatasetBuilder) -> None:
    def run(seed: int) -> list[dict[str, np.ndarray]]:
        return take(ip.make_for_train(builder, "train", 4, pp_random, seed=seed, shuffle_buffer_size=16), 12)

    first = run(3)
    assert_batches_equal(first, run(3))
    other = run(4)
    assert any(not np.array_equal(a["idx"], b["idx"]) for a, b in zip(first, other))
    assert not np.array_equal(first[0]["image"] - first[0]["idx"][:, None, None, None], other[0]["image"])


def test_resume_is_bitwise_identical(builder: tfds.core.DatasetBuilder) -> None:
    kw: dict[str, Any] = dict(seed=7, shuffle_buffer_size=16, num_parallel_calls=4)
    full = take(ip.make_for_train(builder, "train", 4, pp_random, **kw), 28)
    for start_batch in (3, 10, 23):  # Within the first epoch, at its end, and in the third.
        resumed = take(ip.make_for_train(builder, "train", 4, pp_random, start_index=start_batch * 4, **kw), 5)
        assert_batches_equal(full[start_batch : start_batch + 5], resumed)


def test_resume_does_not_preprocess_skipped_examples(builder: tfds.core.DatasetBuilder) -> None:
    calls = []

    def counting_pp(data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        tf.py_function(lambda: calls.append(1), [], [])
        return pp_plain(data)

    ds = ip.make_for_train(builder, "train", 4, counting_pp, seed=0, start_index=1001, num_parallel_calls=1, prefetch=0)
    take(ds, 1)
    assert len(calls) < 12  # One batch of 4, plus what tf.data reads ahead; not the 1001 skipped.


def test_preprocess_sees_per_example_rng(builder: tfds.core.DatasetBuilder) -> None:
    def pp(data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        assert data["_rng"].shape == (2,) and data["_rng"].dtype == tf.int64
        return {"rng": data["_rng"], "_rng": data["_rng"], "idx": data["idx"]}  # _rng is dropped after pp.

    batches = take(ip.make_for_train(builder, "train", 10, pp, seed=1), 8)
    assert all(set(b) == {"rng", "idx"} for b in batches)
    rngs = np.concatenate([b["rng"] for b in batches])
    assert len({tuple(r) for r in rngs}) == len(rngs)  # Distinct for every example, across epochs too.


def test_preprocess_must_return_a_dict(builder: tfds.core.DatasetBuilder) -> None:
    with pytest.raises(TypeError, match="must return a dict"):
        ip.make_for_train(builder, "train", 4, lambda d: d["idx"], seed=0)


def test_hosts_read_disjoint_parts(builder: tfds.core.DatasetBuilder) -> None:
    seen = []
    for host in range(2):
        ds = ip.make_for_train(builder, "train", 8, pp_plain, seed=0, process_index=host, process_count=2)
        batches = take(ds, 5)  # 5 batches of 4 = one epoch of this host's 20 examples.
        assert batches[0]["idx"].shape == (4,)
        seen.append(set(np.concatenate([b["idx"] for b in batches])))
    assert len(seen[0]) == len(seen[1]) == N_TRAIN // 2
    assert seen[0] | seen[1] == set(range(N_TRAIN))
    with pytest.raises(ValueError, match="multiple of the number of hosts"):
        ip.make_for_train(builder, "train", 7, pp_plain, seed=0, process_count=2, process_index=0)


def test_train_split_string_and_cache(builder: tfds.core.DatasetBuilder) -> None:
    kw: dict[str, Any] = dict(seed=5, shuffle_buffer_size=8)
    plain = take(ip.make_for_train(builder, "train[:50%]", 5, pp_plain, **kw), 8)
    cached = take(ip.make_for_train(builder, "train[:50%]", 5, pp_plain, cache_raw=True, **kw), 8)
    assert_batches_equal(plain, cached)
    assert set(np.concatenate([b["idx"] for b in plain])) == set(range(N_TRAIN // 2))


def test_eval_covers_each_example_once(builder: tfds.core.DatasetBuilder) -> None:
    images_by_idx = []
    for batch_size, hosts in [(5, 1), (6, 3)]:  # Neither divides the 23 test examples.
        results = [
            ip.make_for_eval(builder, "test", batch_size, pp_random, process_index=h, process_count=hosts)
            for h in range(hosts)
        ]
        assert len({steps for _, steps in results}) == 1  # Equal on every host.
        batches = []
        for ds, steps in results:
            host_batches = list(tfds.as_numpy(ds))
            assert len(host_batches) == steps
            batches += host_batches
        assert all(b["image"].shape[0] == batch_size // hosts for b in batches)
        mask, ids, idx, images = (np.concatenate([b[k] for b in batches]) for k in ("_mask", "_id", "idx", "image"))
        assert mask.dtype == bool and mask.sum() == N_TEST
        assert sorted(idx[mask]) == list(range(100, 100 + N_TEST))
        assert len(set(ids[mask])) == N_TEST
        assert not images[~mask].any() and not idx[~mask].any()  # Padding is zeros.
        images_by_idx.append(images[mask][np.argsort(idx[mask])])
    # The same examples get the same random pp, whatever the number of hosts.
    np.testing.assert_array_equal(images_by_idx[0], images_by_idx[1])


def test_eval_cache_replays(builder: tfds.core.DatasetBuilder) -> None:
    ds, steps = ip.make_for_eval(builder, "test[:10]", 4, pp_plain, cache=True)
    assert steps == 3
    first, second = list(tfds.as_numpy(ds)), list(tfds.as_numpy(ds))
    assert_batches_equal(first, second)
    assert [int(b["_mask"].sum()) for b in first] == [4, 4, 2]


def test_to_global_arrays() -> None:
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    n = 2 * len(jax.devices())
    batch = {"image": tf.ones([n, 3]), "label": np.arange(n)}
    out = ip.to_global_arrays(batch, sharding)
    assert isinstance(out["image"], jax.Array) and out["image"].shape == (n, 3)
    assert out["label"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(out["label"]), np.arange(n))
    with pytest.raises(ValueError, match="'name' holds strings"):
        ip.to_global_arrays({"name": np.array(["a", "b"] * len(jax.devices()))}, sharding)


def test_works_under_tfds_mock_data(tmp_path: Path) -> None:
    def pp(data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"image": tf.cast(tf.io.decode_png(data["image"]), tf.float32), "label": data["label"]}

    with tfds.testing.mock_data(num_examples=6):
        builder = ip.get_builder("cifar10", str(tmp_path))
        assert ip.num_examples(builder, "test") == 6
        batch = take(ip.make_for_train(builder, "train", 4, pp, seed=0), 1)[0]
        assert batch["image"].shape == (4, 32, 32, 3)
        ds, steps = ip.make_for_eval(builder, "test", 4, pp)
        assert steps == 2 and sum(int(b["_mask"].sum()) for b in tfds.as_numpy(ds)) == 6


def test_unprepared_dataset_is_a_clear_error(tmp_path: Path) -> None:
    builder = ip.get_builder("cifar10", str(tmp_path))
    with pytest.raises(ValueError, match="no prepared data"):
        ip.num_examples(builder, "train")


# ---------------------------------------------------------------------------
# host_invariant: the global batches do not depend on the number of hosts
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tfds.core.DatasetBuilder:
    return ip.get_builder("digits", str(tmp_path_factory.mktemp("tfds_digits")))


def digits_pp() -> ip.PreprocessFn:
    """Real random pp ops (crop and flip from ``_rng``), plus the ``_rng`` itself and ``_id`` to compare."""
    import bv.pp

    ops = bv.pp.get_preprocess_fn("decode(1)|random_crop(6)|flip_lr|value_range(0, 1)")

    def pp(data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = ops(dict(data))
        return {"image": out["image"], "label": out["label"], "id": data["_id"], "rng": data["_rng"]}

    return pp


def global_batches(
    builder: tfds.core.DatasetBuilder, split: str, hosts: int, steps: int, start_step: int = 0, **kw: Any
) -> list[dict[str, np.ndarray]]:
    """The hosts' local batches of ``steps`` steps from ``start_step``, concatenated in host order."""
    batch_size = kw.pop("batch_size", 8)
    local = batch_size // hosts
    per_host = [
        take(
            ip.make_for_train(
                builder,
                split,
                batch_size,
                digits_pp(),
                host_invariant=True,
                start_index=start_step * local,
                process_index=h,
                process_count=hosts,
                **kw,
            ),
            steps,
        )
        for h in range(hosts)
    ]
    for batches in per_host:
        assert len(batches) == steps and all(b["image"].shape == (local, 6, 6, 1) for b in batches)
    return [{k: np.concatenate([b[s][k] for b in per_host]) for k in per_host[0][s]} for s in range(steps)]


def test_host_invariant_global_batches_match_one_host(digits: tfds.core.DatasetBuilder) -> None:
    kw: dict[str, Any] = dict(seed=11, shuffle_buffer_size=64)
    one = global_batches(digits, "train[:30]", 1, 6, **kw)  # 48 examples: crosses an epoch boundary.
    for hosts in (2, 4):
        assert_batches_equal(one, global_batches(digits, "train[:30]", hosts, 6, **kw))
    ids = np.concatenate([b["id"] for b in one])
    assert len(set(ids[:30])) == 30  # One epoch visits each example once.
    rngs = np.concatenate([b["rng"] for b in one])
    assert len({tuple(r) for r in rngs}) == len(rngs)
    # The pp is really random: crops and flips differ for the same example across epochs.
    images = np.concatenate([b["image"] for b in one])
    first_epoch = dict(zip(ids[:30].tolist(), images[:30]))
    assert any(not np.array_equal(first_epoch[i], img) for i, img in zip(ids[30:].tolist(), images[30:]))
    # Without host_invariant, host 0 of 2 starts differently (it reads only its half of the split).
    default = take(ip.make_for_train(digits, "train[:30]", 8, digits_pp(), process_index=0, process_count=2, **kw), 1)
    assert not np.array_equal(default[0]["id"], one[0]["id"][:4])


def test_host_invariant_resume(digits: tfds.core.DatasetBuilder) -> None:
    kw: dict[str, Any] = dict(seed=3, shuffle_buffer_size=32, num_parallel_calls=2)
    full = global_batches(digits, "train[:20]", 2, 7, **kw)  # 56 examples: into the third epoch of 20.
    # Step 3 is global example 24: skips one whole epoch and 4 examples, then crosses into the third epoch.
    resumed = global_batches(digits, "train[:20]", 2, 4, start_step=3, **kw)
    assert_batches_equal(full[3:7], resumed)
    # Host 1 resumed after 6 examples (mid-batch) continues with its 7th, in the middle of step 1.
    host1 = {k: np.concatenate([b[k][4:] for b in full]) for k in full[0]}
    mid = ip.make_for_train(
        digits, "train[:20]", 8, digits_pp(), start_index=6, process_index=1, process_count=2, host_invariant=True, **kw
    )
    got = take(mid, 2)
    for k, v in host1.items():
        np.testing.assert_array_equal(np.concatenate([b[k] for b in got]), v[6:14], err_msg=k)


def test_host_invariant_preprocesses_only_own_examples(digits: tfds.core.DatasetBuilder) -> None:
    calls = []

    def counting_pp(data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        tf.py_function(lambda: calls.append(1), [], [])
        return {"id": data["_id"]}

    kw: dict[str, Any] = dict(seed=0, process_index=3, process_count=4, host_invariant=True)
    ds = ip.make_for_train(digits, "train", 16, counting_pp, num_parallel_calls=1, prefetch=0, start_index=1001, **kw)
    take(ds, 3)
    assert len(calls) < 20  # Three batches of 4, plus read-ahead; not the 48 raw examples of 3 global batches.
