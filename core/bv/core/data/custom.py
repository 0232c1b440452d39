"""Users' own data as real TFDS data sets: numpy arrays, or a folder of images.

The data is written once, in TFDS's own format, into ``<data_dir>/<name>/<version>/``
by a small generator builder made for that data set. Afterwards it is an ordinary
TFDS data set: ``tfds.builder_from_directory(path)`` or ``get_builder(name, data_dir)``
loads it without the arrays, the folder or this module, and the input pipeline,
split strings (``"train[:90%]"``) and per-host splitting all work on it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import types
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from bv.core import progress

DEFAULT_VERSION = "1.0.0"
BAD_IMAGE_ACTIONS = ("stop", "skip")

log = logging.getLogger("bv.data")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")

# One split's examples: a function returning an iterator of (unique key, example dict).
ExampleSource = Callable[[], Iterator[tuple[Any, dict[str, Any]]]]


def default_data_dir() -> str:
    """Where data sets live when no data_dir is given: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def dataset_dir(name: str, data_dir: str | None = None, version: str = DEFAULT_VERSION) -> str:
    """The folder that holds a built data set: ``<data_dir>/<name>/<version>``."""
    return os.path.join(data_dir or default_data_dir(), name, version)


def is_built(name: str, data_dir: str | None = None, version: str = DEFAULT_VERSION) -> bool:
    """Whether ``name`` at ``version`` has been written completely into ``data_dir``."""
    return os.path.exists(os.path.join(dataset_dir(name, data_dir, version), "dataset_info.json"))


def load_built(name: str, data_dir: str | None = None, version: str = DEFAULT_VERSION) -> tfds.core.DatasetBuilder:
    """Reloads a data set written earlier by this module (no code or source data needed)."""
    path = dataset_dir(name, data_dir, version)
    if not is_built(name, data_dir, version):
        raise FileNotFoundError(f"No data set {name!r} version {version} in {path!r}: build it first.")
    return tfds.builder_from_directory(path)


def build_from_arrays(
    name: str,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    data_dir: str | None = None,
    label_names: Sequence[str] | None = None,
    *,
    version: str = DEFAULT_VERSION,
    description: str | None = None,
    overwrite: bool = False,
) -> tfds.core.DatasetBuilder:
    """Writes numpy arrays as the TFDS data set ``name`` and returns its (reloaded) builder.

    ``splits`` maps a split name to ``{feature name: array}``; all arrays of a split
    have one example per row. Features are typed from the arrays:

    - ``"image"``: uint8, ``[N, H, W]`` or ``[N, H, W, C]`` with C in 1, 3, 4, stored as
      PNG (a ``tfds.features.Image``; ``[N, H, W]`` becomes ``[H, W, 1]``).
    - ``"label"``: integers, a ``ClassLabel`` named by ``label_names``, or with
      ``max(label) + 1`` classes when no names are given.
    - anything else: numeric or bool arrays become ``tfds.features.Tensor``, 1-D
      string arrays become ``tfds.features.Text``.

    Examples keep the order of the arrays (the data set is written unshuffled).
    An existing data set of the same name and version is an error unless ``overwrite``.
    Avoid names of TFDS's catalogue (``tfds.builder`` would pick the catalogue's
    builder), or reload with ``tfds.builder_from_directory``.
    """
    _check_name(name)
    splits = _check_splits(splits)
    features = _infer_features(splits, label_names)

    def source(arrays: Mapping[str, np.ndarray]) -> ExampleSource:
        n = len(next(iter(arrays.values())))

        def generate() -> Iterator[tuple[int, dict[str, Any]]]:
            # PNG-encoding in bulk is far faster than TFDS's image by image.
            encoded = {key: _encode_png(arr) if key == "image" else arr for key, arr in arrays.items()}
            for i in range(n):
                yield i, {key: _example_value(arr[i]) for key, arr in encoded.items()}

        return generate

    return write_dataset(
        name,
        features,
        {split: source(arrays) for split, arrays in splits.items()},
        data_dir=data_dir,
        version=version,
        description=description or f"{name}: built by bv from numpy arrays.",
        ordered=True,
        overwrite=overwrite,
    )


def build_from_image_folder(
    folder: str,
    name: str,
    data_dir: str | None = None,
    *,
    version: str = DEFAULT_VERSION,
    overwrite: bool = False,
    on_bad_image: str = "stop",
) -> tfds.core.DatasetBuilder:
    """Writes a folder of labelled images as the TFDS data set ``name``; returns its builder.

    Two layouts are understood: ``folder/<split>/<class>/*.png|jpg|jpeg`` (one split per
    sub-folder), or ``folder/<class>/*`` (everything becomes the ``"train"`` split).
    Class ids follow the sorted class folder names over all splits. Images keep their
    size when all share one, else the image feature has an unknown height and width.
    Files are stored as they are (no re-encoding); the image feature has their channel
    count, or 3 (RGB) when grayscale and colour images are mixed, and TFDS's decoder
    converts each image to it. Examples are shuffled on write, as in most TFDS data sets.
    Features: ``image`` (uint8) and ``label`` (``ClassLabel``).

    Every image is decoded once before anything is written. A file that cannot be decoded
    (truncated, corrupt, not an image) stops the build with an error naming it, unless
    ``on_bad_image="skip"``: then such files are left out, and their count and the first
    few names are logged (and kept in the data set's description).
    """
    _check_name(name)
    if on_bad_image not in BAD_IMAGE_ACTIONS:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_ACTIONS}, got {on_bad_image!r}.")
    layout = _scan_image_folder(folder)
    shapes, bad = _decode_all(layout)
    skipped_note = ""
    if bad:
        listing = "; ".join(f"{os.path.relpath(p, folder)} ({why})" for p, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        total = len(shapes) + len(bad)
        if on_bad_image == "stop":
            raise ValueError(
                f"{len(bad)} of the {total} images in {folder!r} cannot be read: {listing}{more}. Remove or "
                "replace them, or pass on_bad_image='skip' to build the data set without them."
            )
        log.warning("Skipped %d of %d images in %s that cannot be read: %s%s.", len(bad), total, folder, listing, more)
        skipped_note = f" {len(bad)} of {total} images could not be read and were skipped."
        layout = _without(layout, {p for p, _ in bad})
    classes = sorted({cls for per_class in layout.values() for cls in per_class})
    out_channels = _common_channels({s[2] for s in shapes.values()})
    sizes = {s[:2] for s in shapes.values()}
    height, width = sizes.pop() if len(sizes) == 1 else (None, None)
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(height, width, out_channels)),
            "label": tfds.features.ClassLabel(names=classes),
        }
    )

    def source(per_class: Mapping[str, list[str]]) -> ExampleSource:
        def generate() -> Iterator[tuple[str, dict[str, Any]]]:
            for cls, paths in sorted(per_class.items()):
                for path in paths:
                    yield os.path.relpath(path, folder), {"image": _read_image(path), "label": classes.index(cls)}

        return generate

    return write_dataset(
        name,
        features,
        {split: source(per_class) for split, per_class in layout.items()},
        data_dir=data_dir,
        version=version,
        description=f"{name}: built by bv from the image folder {os.path.abspath(folder)}.{skipped_note}",
        ordered=False,
        overwrite=overwrite,
    )


def write_dataset(
    name: str,
    features: tfds.features.FeaturesDict,
    sources: Mapping[str, ExampleSource],
    *,
    data_dir: str | None = None,
    version: str = DEFAULT_VERSION,
    description: str = "",
    ordered: bool = True,
    overwrite: bool = False,
) -> tfds.core.DatasetBuilder:
    """Writes examples from ``sources`` (one per split) as a TFDS data set; returns it reloaded.

    ``ordered=True`` keeps the generation order; ``False`` lets TFDS shuffle examples by
    key on write, like most TFDS data sets, so that classes arrive mixed.
    """
    _check_name(name)
    data_dir = data_dir or default_data_dir()
    path = dataset_dir(name, data_dir, version)
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(
                f"Data set {name!r} version {version} already exists in {path!r}. Load it with "
                f"get_builder({name!r}, data_dir={data_dir!r}), or pass overwrite=True to rebuild it."
            )
        shutil.rmtree(path)
    builder_cls = _builder_class(name, version, features, sources, description, ordered)
    builder = builder_cls(data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return tfds.builder_from_directory(path)


def _builder_class(
    name: str,
    version: str,
    features: tfds.features.FeaturesDict,
    sources: Mapping[str, ExampleSource],
    description: str,
    ordered: bool,
) -> type[tfds.core.GeneratorBasedBuilder]:
    """A GeneratorBasedBuilder subclass for one data set, kept out of TFDS's global registry."""
    supervised = ("image", "label") if {"image", "label"} <= set(features.keys()) else None

    def _info(self: tfds.core.GeneratorBasedBuilder) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=features,
            supervised_keys=supervised,
            disable_shuffling=ordered,
        )

    def _split_generators(self: tfds.core.GeneratorBasedBuilder, dl_manager: Any) -> dict[str, Any]:
        del dl_manager  # Everything is local.
        return {split: self._generate_examples(source=source) for split, source in sources.items()}

    def _generate_examples(self: tfds.core.GeneratorBasedBuilder, source: ExampleSource) -> Any:
        return source()

    body = {
        "name": name,
        "VERSION": tfds.core.Version(version),
        "RELEASE_NOTES": {version: "Built by bv."},
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
    }
    class_name = "".join(part.capitalize() for part in name.split("_")) + "Builder"
    return types.new_class(
        class_name,
        (tfds.core.GeneratorBasedBuilder,),
        {"skip_registration": True},
        lambda ns: ns.update(body),
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"Invalid data set name {name!r}: use lower case letters, digits and '_', starting with a letter."
        )


def _check_splits(splits: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Validates split names, equal lengths within a split, and equal features across splits."""
    if not isinstance(splits, Mapping) or not splits:
        raise ValueError("`splits` must be a non-empty dict {split name: {feature name: array}}.")
    checked: dict[str, dict[str, np.ndarray]] = {}
    for split, arrays in splits.items():
        if not isinstance(split, str) or not _SPLIT_RE.match(split):
            raise ValueError(f"Invalid split name {split!r}: use letters, digits and '_' (e.g. 'train').")
        if not isinstance(arrays, Mapping) or not arrays:
            raise ValueError(f"Split {split!r} must be a non-empty dict {{feature name: array}}, got {arrays!r}.")
        arrays = {key: np.asarray(arr) for key, arr in arrays.items()}
        for key, arr in arrays.items():
            if arr.ndim == 0:
                raise ValueError(f"Split {split!r}, feature {key!r}: expected one row per example, got a scalar.")
        lengths = {key: len(arr) for key, arr in arrays.items()}
        if len(set(lengths.values())) != 1:
            listing = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ValueError(
                f"Split {split!r}: all arrays need one row per example, but their lengths differ ({listing})."
            )
        if not next(iter(lengths.values())):
            raise ValueError(f"Split {split!r} has no examples.")
        checked[split] = arrays
    first_split, first = next(iter(checked.items()))
    for split, arrays in checked.items():
        if set(arrays) != set(first):
            raise ValueError(
                f"Split {split!r} has features {sorted(arrays)} but split {first_split!r} has {sorted(first)}."
            )
        for key, arr in arrays.items():
            ref = first[key]
            if arr.shape[1:] != ref.shape[1:] or arr.dtype.kind != ref.dtype.kind:
                raise ValueError(
                    f"Feature {key!r} is {arr.dtype}{list(arr.shape[1:])} per example in split {split!r} "
                    f"but {ref.dtype}{list(ref.shape[1:])} in split {first_split!r}."
                )
    return checked


def _infer_features(
    splits: Mapping[str, Mapping[str, np.ndarray]], label_names: Sequence[str] | None
) -> tfds.features.FeaturesDict:
    """Types each feature from its arrays (see build_from_arrays)."""
    first = next(iter(splits.values()))
    if label_names is not None and "label" not in first:
        raise ValueError(f"label_names were given but there is no 'label' array (features: {sorted(first)}).")
    features: dict[str, Any] = {}
    for key in first:
        arrays = [split_arrays[key] for split_arrays in splits.values()]
        arr = arrays[0]
        if key == "image":
            if arr.dtype != np.uint8:
                raise ValueError(f"'image' arrays must be uint8 (values 0-255), got {arr.dtype}.")
            if arr.ndim == 3:
                shape = (*arr.shape[1:], 1)
            elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):
                shape = arr.shape[1:]
            else:
                raise ValueError(
                    f"'image' arrays must be [N, H, W] or [N, H, W, C] with C in 1, 3, 4; got {arr.shape}."
                )
            features[key] = tfds.features.Image(shape=shape)
        elif key == "label":
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise ValueError(f"'label' arrays must be 1-D integers (class ids), got {arr.dtype}{list(arr.shape)}.")
            low = min(int(a.min()) for a in arrays)
            high = max(int(a.max()) for a in arrays)
            if low < 0:
                raise ValueError(f"Labels must be class ids >= 0, found {low}.")
            if label_names is not None:
                if high >= len(label_names):
                    raise ValueError(f"Label {high} is out of range for {len(label_names)} label_names.")
                features[key] = tfds.features.ClassLabel(names=list(label_names))
            else:
                features[key] = tfds.features.ClassLabel(num_classes=high + 1)
        elif arr.dtype.kind in "biuf":
            features[key] = tfds.features.Tensor(shape=arr.shape[1:], dtype=arr.dtype)
        elif arr.dtype.kind in "SUO" and arr.ndim == 1:
            features[key] = tfds.features.Text()
        else:
            raise ValueError(
                f"Feature {key!r}: cannot store arrays of {arr.dtype}{list(arr.shape)}; "
                "use numbers, bools or 1-D strings."
            )
    return tfds.features.FeaturesDict(features)


def _example_value(value: Any) -> Any:
    if isinstance(value, np.str_):
        return str(value)
    return value


def _encode_png(images: np.ndarray, chunk: int = 1024) -> list[bytes]:
    """PNG bytes of uint8 images ``[N, H, W]`` or ``[N, H, W, C]``."""
    if images.ndim == 3:
        images = images[..., None]
    out: list[bytes] = []
    for start in range(0, len(images), chunk):
        out.extend(_encode_png_batch(tf.constant(images[start : start + chunk])).numpy().tolist())
    return out


@tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8)])
def _encode_png_batch(images: tf.Tensor) -> tf.Tensor:
    return tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.string)


def _scan_image_folder(folder: str) -> dict[str, dict[str, list[str]]]:
    """``{split: {class: sorted image paths}}`` for either supported layout."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder {folder!r} does not exist or is not a folder.")
    subdirs = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not subdirs:
        raise ValueError(
            f"Image folder {folder!r} has no sub-folders: expected {folder}/<class>/*.png|jpg "
            f"or {folder}/<split>/<class>/*.png|jpg."
        )

    def images_in(path: str) -> list[str]:
        return sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, f))
        )

    def class_dirs(path: str) -> list[str]:
        return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))

    # <split>/<class>/ layout: the sub-folders hold only folders, no images.
    if all(not images_in(os.path.join(folder, d)) and class_dirs(os.path.join(folder, d)) for d in subdirs):
        layout = {
            split: {cls: images_in(os.path.join(folder, split, cls)) for cls in class_dirs(os.path.join(folder, split))}
            for split in subdirs
        }
        for split in subdirs:
            if not _SPLIT_RE.match(split):
                raise ValueError(f"Invalid split folder name {split!r} in {folder!r}: use letters, digits and '_'.")
    else:
        layout = {"train": {cls: images_in(os.path.join(folder, cls)) for cls in subdirs}}
    for split, per_class in layout.items():
        per_class = {cls: paths for cls, paths in per_class.items() if paths}
        if not per_class:
            raise ValueError(
                f"No images ({', '.join(IMAGE_EXTENSIONS)}) found for split {split!r} under {folder!r}; "
                f"expected {folder}/<class>/*.png|jpg or {folder}/<split>/<class>/*.png|jpg."
            )
        layout[split] = per_class
    return layout


def _common_channels(channels: set[int]) -> int:
    """One channel count a TFDS Image can store for images with these counts."""
    if len(channels) == 1 and channels <= {1, 3, 4}:
        return channels.pop()
    return 1 if channels <= {1, 2} else 3


def _decode_all(
    layout: Mapping[str, Mapping[str, list[str]]],
) -> tuple[dict[str, tuple[int, int, int]], list[tuple[str, str]]]:
    """The (height, width, channels) of every image that decodes, and (path, reason) for those that do not."""
    shapes: dict[str, tuple[int, int, int]] = {}
    bad: list[tuple[str, str]] = []
    paths = [path for per_class in layout.values() for class_paths in per_class.values() for path in class_paths]
    for path in progress.bar(paths, total=len(paths), desc="checking images", unit="img"):
        try:
            h, w, c = tf.io.decode_image(tf.io.read_file(path), expand_animations=False).shape
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
            bad.append((path, e.message.strip().splitlines()[0][:100]))
            continue
        shapes[path] = (int(h), int(w), int(c))
    return shapes, bad


def _without(layout: Mapping[str, Mapping[str, list[str]]], drop: set[str]) -> dict[str, dict[str, list[str]]]:
    """``layout`` less the ``drop`` paths; a class or split left with no image is an error."""
    out: dict[str, dict[str, list[str]]] = {}
    for split, per_class in layout.items():
        out[split] = {cls: [p for p in paths if p not in drop] for cls, paths in per_class.items()}
        empty = [cls for cls, paths in out[split].items() if not paths]
        if empty:
            raise ValueError(
                f"Split {split!r}: no readable image is left for class(es) {', '.join(empty)} once the "
                "unreadable ones are skipped."
            )
    return out


def _read_image(path: str) -> bytes:
    """The file's bytes: PNG and JPEG are stored as they are (TFDS decodes to the data set's channels)."""
    with open(path, "rb") as f:
        return f.read()
