"""``skimage_photos``: random crops of the colour photographs shipped with scikit-image, split by photograph.

Built offline on first use (like ``mnist5k``) into ``data_dir``. Each photograph is scaled
so that its shorter side is 128 px, then cut into 32x32 crops at seeded random positions:
500 per photograph from the six ``train`` photographs (astronaut, coffee, rocket, Hubble
deep field, immunohistochemistry, retina; 3,000 crops) and 250 per photograph from the two
``test`` ones (chelsea the cat, the left motorcycle of the stereo pair; 500 crops), so no
test crop comes from a photograph seen in training. Features: ``image`` (32, 32, 3) uint8
and ``photo`` (the photograph's index, int64).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from bv.core import registry
from bv.core.data import custom

TRAIN = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
TEST = ("chelsea", "stereo_motorcycle")
CROP, SHORT_SIDE = 32, 128
PER_PHOTO = {"train": 500, "test": 250}


def _photo(name: str) -> np.ndarray:
    try:
        import skimage.data
        import skimage.transform
    except ImportError as e:
        raise ImportError(
            "The 'skimage_photos' data set is built from scikit-image's photographs: pip install scikit-image"
        ) from e
    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    image = np.asarray(image)[..., :3]
    scale = SHORT_SIDE / min(image.shape[:2])
    size = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    small = skimage.transform.resize(image, size, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def _splits() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = {}
    for split, names in (("train", TRAIN), ("test", TEST)):
        crops, ids = [], []
        for i, name in enumerate(names):
            photo = _photo(name)
            for _ in range(PER_PHOTO[split]):
                top = rng.integers(0, photo.shape[0] - CROP + 1)
                left = rng.integers(0, photo.shape[1] - CROP + 1)
                crops.append(photo[top : top + CROP, left : left + CROP])
                ids.append(i)
        out[split] = {"image": np.stack(crops), "photo": np.asarray(ids, np.int64)}
    return out


@registry.datasets.register("skimage_photos")
def skimage_photos(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The skimage_photos builder (see the module docstring); builds it into data_dir on first use."""
    if custom.is_built("skimage_photos", data_dir):
        return custom.load_built("skimage_photos", data_dir)
    try:
        return custom.build_from_arrays(
            "skimage_photos",
            _splits(),
            data_dir,
            description="32x32 random crops of scikit-image's colour photographs; train and test photographs differ.",
        )
    except FileExistsError:
        if custom.is_built("skimage_photos", data_dir):
            return custom.load_built("skimage_photos", data_dir)
        raise
