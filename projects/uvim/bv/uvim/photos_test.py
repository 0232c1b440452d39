"""The ``skimage_photos`` data set: real colour crops, split by photograph."""

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from bv.uvim import photos


def test_builds_colour_crops_split_by_photograph(tmp_path: Path) -> None:
    builder = photos.skimage_photos(data_dir=str(tmp_path))
    assert builder.info.splits["train"].num_examples == 3000 and builder.info.splits["test"].num_examples == 500
    splits = {s: list(tfds.as_numpy(builder.as_dataset(split=s))) for s in ("train", "test")}
    for split, examples in splits.items():
        images = np.stack([e["image"] for e in examples])
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
        # Colour photographs: the channels differ (a grey crop would have equal ones).
        assert np.mean(np.abs(images[..., 0].astype(int) - images[..., 2].astype(int))) > 5, split
        counts = np.bincount([e["photo"] for e in examples])
        assert counts.tolist() == [photos.PER_PHOTO[split]] * len({"train": photos.TRAIN, "test": photos.TEST}[split])
    train_crops = {e["image"].tobytes() for e in splits["train"]}
    assert not any(e["image"].tobytes() in train_crops for e in splits["test"])
    # Built once: a second call reloads the same data from data_dir.
    again = photos.skimage_photos(data_dir=str(tmp_path))
    first = next(iter(tfds.as_numpy(again.as_dataset(split="test"))))["image"]
    np.testing.assert_array_equal(first, splits["test"][0]["image"])
