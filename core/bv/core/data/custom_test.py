"""Users' own data -> TFDS data sets: round trips, layouts and clear errors on bad input."""

from __future__ import annotations

import logging

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bv.core.data import custom, input_pipeline


def _all(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
    return tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False, batch_size=-1))


def _arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8),
        "label": rng.integers(0, 3, size=n),
        "score": rng.normal(size=(n, 2)).astype(np.float32),
    }


def test_build_from_arrays_round_trip(tmp_path: Path) -> None:
    splits = {"train": _arrays(30, 0), "test": _arrays(7, 1)}
    builder = custom.build_from_arrays("toy", splits, str(tmp_path), label_names=["cat", "dog", "emu"])
    assert builder.info.features["label"].names == ["cat", "dog", "emu"]
    assert builder.info.features["image"].shape == (5, 4, 1)
    assert builder.info.supervised_keys == ("image", "label")
    for split, arrays in splits.items():
        got = _all(builder, split)
        np.testing.assert_array_equal(got["image"][..., 0], arrays["image"])  # Order is kept.
        np.testing.assert_array_equal(got["label"], arrays["label"])
        np.testing.assert_array_equal(got["score"], arrays["score"])

    # Reloads without this module: by name through tfds, and from its folder.
    again = input_pipeline.get_builder("toy", str(tmp_path))
    np.testing.assert_array_equal(_all(again, "test")["label"], splits["test"]["label"])
    folder = tfds.builder_from_directory(custom.dataset_dir("toy", str(tmp_path)))
    assert folder.info.splits["train"].num_examples == 30


def test_build_from_arrays_infers_classes_and_text(tmp_path: Path) -> None:
    splits = {"train": {"label": np.array([0, 4, 2]), "caption": np.array(["a", "bb", "ccc"])}}
    builder = custom.build_from_arrays("texty", splits, str(tmp_path))
    assert builder.info.features["label"].num_classes == 5
    got = _all(builder, "train")
    assert [c.decode() for c in got["caption"]] == ["a", "bb", "ccc"]


def test_existing_dataset_needs_overwrite(tmp_path: Path) -> None:
    custom.build_from_arrays("twice", {"train": _arrays(3, 0)}, str(tmp_path))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        custom.build_from_arrays("twice", {"train": _arrays(4, 0)}, str(tmp_path))
    builder = custom.build_from_arrays("twice", {"train": _arrays(4, 0)}, str(tmp_path), overwrite=True)
    assert builder.info.splits["train"].num_examples == 4


@pytest.mark.parametrize(
    "name, splits, kwargs, match",
    [
        ("ok", {"train": {"image": np.zeros((3, 2, 2), np.uint8), "label": np.zeros(2, int)}}, {}, "lengths differ"),
        ("ok", {"train": {"label": np.zeros(2, int)}, "test": {"x": np.zeros(2)}}, {}, "has features"),
        ("ok", {"train": {"x": np.zeros((2, 3))}, "test": {"x": np.zeros((2, 4))}}, {}, "per example"),
        ("ok", {"train": {"label": np.zeros(0, int)}}, {}, "no examples"),
        ("ok", {}, {}, "non-empty"),
        ("ok", {"train": {"image": np.zeros((2, 3, 3), np.float32)}}, {}, "uint8"),
        ("ok", {"train": {"label": np.array([0, 3])}}, {"label_names": ["a", "b"]}, "out of range"),
        ("ok", {"train": {"x": np.zeros(2)}}, {"label_names": ["a"]}, "no 'label'"),
        ("ok", {"bad split": {"x": np.zeros(2)}}, {}, "Invalid split"),
        ("Bad-Name", {"train": {"x": np.zeros(2)}}, {}, "Invalid data set name"),
    ],
)
def test_build_from_arrays_bad_input(tmp_path: Path, name: str, splits: dict, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        custom.build_from_arrays(name, splits, str(tmp_path), **kwargs)
    assert not os.path.exists(custom.dataset_dir(name, str(tmp_path)))


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


def test_image_folder_with_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    written = {}
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("b_dog", "a_cat"):
            for i in range(n):
                image = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
                _write_png(root / split / cls / f"{i}.png", image)
                written[(split, cls, i)] = image
    builder = custom.build_from_image_folder(str(root), "pets", str(tmp_path / "tfds"))
    assert builder.info.features["label"].names == ["a_cat", "b_dog"]
    assert builder.info.features["image"].shape == (6, 5, 3)
    assert builder.info.splits["train"].num_examples == 6
    assert builder.info.splits["val"].num_examples == 2
    got = _all(builder, "train")
    for cls_id, cls in enumerate(["a_cat", "b_dog"]):
        expected = sorted(written[("train", cls, i)].tobytes() for i in range(3))
        assert sorted(im.tobytes() for im in got["image"][got["label"] == cls_id]) == expected


def test_image_folder_single_split_mixed_images(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _write_png(root / "one" / "gray.png", np.full((4, 4, 1), 7, np.uint8))
    _write_png(root / "two" / "rgb.PNG", np.full((8, 6, 3), 9, np.uint8))
    (root / "two" / "notes.txt").write_text("not an image")
    builder = custom.build_from_image_folder(str(root), "mixed", str(tmp_path / "tfds"))
    assert list(builder.info.splits.keys()) == ["train"]
    assert builder.info.features["image"].shape == (None, None, 3)
    examples = list(tfds.as_numpy(builder.as_dataset(split="train")))
    by_label = {int(ex["label"]): ex["image"] for ex in examples}
    assert by_label[0].shape == (4, 4, 3) and (by_label[0] == 7).all()
    assert by_label[1].shape == (8, 6, 3) and (by_label[1] == 9).all()


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        custom.build_from_image_folder(str(tmp_path / "missing"), "x", str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no sub-folders"):
        custom.build_from_image_folder(str(tmp_path / "empty"), "x", str(tmp_path))
    (tmp_path / "noimages" / "cls").mkdir(parents=True)
    (tmp_path / "noimages" / "cls" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="No images"):
        custom.build_from_image_folder(str(tmp_path / "noimages"), "x", str(tmp_path))
    (tmp_path / "broken" / "cls").mkdir(parents=True)
    (tmp_path / "broken" / "cls" / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"1 of the 1 images .* cannot be read: cls/a.png"):
        custom.build_from_image_folder(str(tmp_path / "broken"), "x", str(tmp_path))
    with pytest.raises(ValueError, match="no readable image is left for class"):
        custom.build_from_image_folder(str(tmp_path / "broken"), "x", str(tmp_path), on_bad_image="skip")
    with pytest.raises(ValueError, match="on_bad_image must be one of"):
        custom.build_from_image_folder(str(tmp_path / "broken"), "x", str(tmp_path), on_bad_image="ignore")


def test_image_folder_corrupt_images_stop_the_build_or_are_skipped_with_a_count(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "pets"
    for cls, value in (("cat", 7), ("dog", 9)):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            (folder / cls / f"{i}.png").write_bytes(tf.io.encode_png(np.full((4, 4, 3), value, np.uint8)).numpy())
    good = (folder / "dog" / "0.png").read_bytes()
    (folder / "dog" / "1.png").write_bytes(good[: len(good) // 2])  # truncated by an interrupted copy
    (folder / "cat" / "2.png").write_bytes(b"\x89PNG garbage")  # not an image at all
    with pytest.raises(ValueError) as error:
        custom.build_from_image_folder(str(folder), "pets", str(tmp_path / "data"))
    message = str(error.value)
    assert "2 of the 6 images" in message and "cat/2.png" in message and "dog/1.png" in message
    assert "on_bad_image='skip'" in message
    assert not custom.is_built("pets", str(tmp_path / "data"))  # nothing half-written
    with caplog.at_level(logging.WARNING, logger="bv.data"):
        builder = custom.build_from_image_folder(str(folder), "pets", str(tmp_path / "data"), on_bad_image="skip")
    assert "Skipped 2 of 6 images" in caplog.text
    assert builder.info.splits["train"].num_examples == 4
    assert "2 of 6 images could not be read and were skipped" in builder.info.description


def test_default_data_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert custom.default_data_dir() == str(tmp_path)
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert custom.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")
