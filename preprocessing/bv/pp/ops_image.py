"""Image pp ops: decoding, resizing, cropping, flipping, affine warps and VGG normalisation.

Images are ``[height, width, channels]`` tensors, uint8 or float. Each op reads and writes
``data["image"]`` unless given ``key=`` (or ``inkey=``/``outkey=``). The random ops (random
crops, inception crops, flips, affine warps) draw from ``data["_rng"]`` when it is present, which makes
them reproducible; see :func:`bv.pp.utils.next_seed`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf

from bv.core.registry import pp_ops
from bv.pp.utils import inkey_outkey

RESIZE_METHODS = ("area", "bicubic", "bilinear", "gaussian", "lanczos3", "lanczos5", "mitchellcubic", "nearest")

TensorFn = Callable[[tf.Tensor], tf.Tensor]
SeededTensorFn = Callable[[tf.Tensor, "tf.Tensor | None"], tf.Tensor]


def _pair(size: Any, what: str) -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(h, w)`` stays; anything else is a clear error."""
    if isinstance(size, int) and not isinstance(size, bool):
        pair: Sequence[Any] = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        pair = size
    else:
        raise ValueError(f"{what} must be an int or a (height, width) pair of ints, got {size!r}.")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"{what} must hold positive ints, got {size!r}.")
    return int(pair[0]), int(pair[1])


def _check_method(method: str) -> None:
    if method not in RESIZE_METHODS:
        raise ValueError(f"Unknown resize method {method!r}; choose one of {', '.join(RESIZE_METHODS)}.")


def _check_area(area_min: float, area_max: float) -> None:
    if not 0 < area_min <= area_max <= 100:
        raise ValueError(
            f"Crop areas are percent of the image: need 0 < area_min <= area_max <= 100, got {area_min}, {area_max}."
        )


def _resize_image(image: tf.Tensor, size: Any, method: str, antialias: bool) -> tf.Tensor:
    """tf.image.resize that returns the input's dtype (uint8 stays uint8).

    Integer results are rounded and clipped to the dtype's range. (big_vision truncates,
    which turns a constant 200 into 199 wherever the float result is 199.99.)
    """
    dtype = tf.as_dtype(image.dtype)
    resized = tf.image.resize(image, size, method=method, antialias=antialias)
    if resized.dtype == dtype:
        return resized
    if dtype.is_integer:
        resized = tf.round(resized)
    return tf.cast(tf.clip_by_value(resized, dtype.min, dtype.max), dtype)


def _resize_by_factor(image: tf.Tensor, factor: tf.Tensor, method: str, antialias: bool) -> tf.Tensor:
    """Scales both sides by ``factor`` (rounded to whole pixels), keeping the aspect ratio."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.round(hw * factor), tf.int32)
    return _resize_image(image, new_hw, method, antialias)


def _sample_crop_box(
    image_shape: tf.Tensor,
    seed: tf.Tensor | None,
    area_min: float,
    area_max: float,
    ratio_min: float,
    ratio_max: float,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inception-style box: area a random share of the image, aspect ratio in a range."""
    kwargs: dict[str, Any] = dict(
        bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
        min_object_covered=0.0,  # no object to cover: any box of the right area will do
        aspect_ratio_range=(ratio_min, ratio_max),
        area_range=(area_min / 100, area_max / 100),
        use_image_if_no_bounding_boxes=True,
    )
    if seed is None:
        begin, size, _ = tf.image.sample_distorted_bounding_box(image_shape, **kwargs)
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(image_shape, seed=seed, **kwargs)
    return begin, size


@pp_ops.register("decode")
@inkey_outkey()
def get_decode(channels: int = 3, precise: bool = False) -> TensorFn:
    """Decodes encoded image bytes (JPEG, PNG, GIF, BMP) into a uint8 image.

    ``precise=True`` decodes JPEGs with the exact integer DCT, matching PIL and OpenCV
    (and therefore PyTorch pipelines), at some cost in speed.
    """

    def decode(encoded: tf.Tensor) -> tf.Tensor:
        if precise:  # decode_jpeg also reads PNG and GIF.
            return tf.io.decode_jpeg(encoded, channels=channels, dct_method="INTEGER_ACCURATE")
        return tf.io.decode_image(encoded, channels=channels, expand_animations=False)

    return decode


@pp_ops.register("resize")
@inkey_outkey()
def get_resize(size: int | Sequence[int], method: str = "bilinear", antialias: bool = False) -> TensorFn:
    """Resizes to ``size`` (an int for a square, or ``(height, width)``), keeping the dtype."""
    hw = _pair(size, "resize size")
    _check_method(method)

    def resize(image: tf.Tensor) -> tf.Tensor:
        return _resize_image(image, hw, method, antialias)

    return resize


@pp_ops.register("resize_small")
@inkey_outkey()
def get_resize_small(smaller_size: int, method: str = "area", antialias: bool = False) -> TensorFn:
    """Resizes so that the smaller side is ``smaller_size``, keeping the aspect ratio."""
    _pair(smaller_size, "resize_small size")  # validates a positive int
    _check_method(method)

    def resize_small(image: tf.Tensor) -> tf.Tensor:
        shorter = tf.cast(tf.reduce_min(tf.shape(image)[:2]), tf.float32)
        return _resize_by_factor(image, smaller_size / shorter, method, antialias)

    return resize_small


@pp_ops.register("resize_long")
@inkey_outkey()
def get_resize_long(longer_size: int, method: str = "area", antialias: bool = True) -> TensorFn:
    """Resizes so that the longer side is ``longer_size``, keeping the aspect ratio."""
    _pair(longer_size, "resize_long size")
    _check_method(method)

    def resize_long(image: tf.Tensor) -> tf.Tensor:
        longer = tf.cast(tf.reduce_max(tf.shape(image)[:2]), tf.float32)
        return _resize_by_factor(image, longer_size / longer, method, antialias)

    return resize_long


@pp_ops.register("central_crop")
@inkey_outkey()
def get_central_crop(crop_size: int | Sequence[int] | None = None) -> TensorFn:
    """Crops the centre ``crop_size`` (int or ``(h, w)``); without it, the largest centred square."""
    hw = _pair(crop_size, "central_crop size") if crop_size is not None else None

    def central_crop(image: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(image)
        if hw is None:
            h = w = tf.minimum(shape[0], shape[1])
        else:
            h, w = hw
        return tf.image.crop_to_bounding_box(image, (shape[0] - h) // 2, (shape[1] - w) // 2, h, w)

    return central_crop


@pp_ops.register("random_crop")
@inkey_outkey(with_seed=True)
def get_random_crop(crop_size: int | Sequence[int]) -> SeededTensorFn:
    """Crops a ``crop_size`` window (int or ``(h, w)``) at a uniformly random position."""
    h, w = _pair(crop_size, "random_crop size")

    def random_crop(image: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        size = tf.concat([[h, w], tf.shape(image)[2:]], axis=0)
        if seed is None:
            crop = tf.image.random_crop(image, size)
        else:
            crop = tf.image.stateless_random_crop(image, size, seed=seed)
        crop.set_shape(tf.TensorShape([h, w]).concatenate(image.shape[2:]))
        return crop

    return random_crop


@pp_ops.register("inception_crop")
@inkey_outkey(with_seed=True)
def get_inception_crop(
    size: int | Sequence[int] | None = None,
    area_min: float = 5,
    area_max: float = 100,
    method: str = "bilinear",
    antialias: bool = False,
    *,
    ratio_min: float = 0.75,
    ratio_max: float = 1.33,
) -> SeededTensorFn:
    """Inception-style random crop: a box covering ``area_min``..``area_max`` percent of the
    image with aspect ratio in ``ratio_min``..``ratio_max``, then resized to ``size`` if given.
    """
    hw = _pair(size, "inception_crop size") if size is not None else None
    _check_area(area_min, area_max)
    _check_method(method)

    def inception_crop(image: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        begin, box = _sample_crop_box(tf.shape(image), seed, area_min, area_max, ratio_min, ratio_max)
        crop = tf.slice(image, begin, box)
        crop.set_shape(tf.TensorShape([None, None]).concatenate(image.shape[2:]))  # tf.slice loses the channels
        return crop if hw is None else _resize_image(crop, hw, method, antialias)

    return inception_crop


@pp_ops.register("decode_jpeg_and_inception_crop")
@inkey_outkey(with_seed=True)
def get_decode_jpeg_and_inception_crop(
    size: int | Sequence[int] | None = None,
    area_min: float = 5,
    area_max: float = 100,
    ratio_min: float = 0.75,
    ratio_max: float = 1.33,
    method: str = "bilinear",
    antialias: bool = False,
) -> SeededTensorFn:
    """Like ``decode|inception_crop``, but decodes only the cropped part of the JPEG (faster).

    Takes JPEG bytes only; the result is a 3-channel uint8 image.
    """
    hw = _pair(size, "decode_jpeg_and_inception_crop size") if size is not None else None
    _check_area(area_min, area_max)
    _check_method(method)

    def decode_and_crop(encoded: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        jpeg_shape = tf.image.extract_jpeg_shape(encoded)
        begin, box = _sample_crop_box(jpeg_shape, seed, area_min, area_max, ratio_min, ratio_max)
        window = tf.stack([begin[0], begin[1], box[0], box[1]])
        image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
        return image if hw is None else _resize_image(image, hw, method, antialias)

    return decode_and_crop


@pp_ops.register("random_affine")
@inkey_outkey(with_seed=True)
def get_random_affine(
    degrees: float = 0.0,
    translate: float = 0.0,
    scale: Sequence[float] = (1.0, 1.0),
    shear: float = 0.0,
    fill: float = 0.0,
    method: str = "bilinear",
) -> SeededTensorFn:
    """A random affine warp about the image centre, as torchvision's ``RandomAffine``.

    Draws a rotation in ``[-degrees, degrees]``, a shift in ``[-translate, translate]`` of the
    height and width (each axis on its own), a zoom factor in ``scale`` and an x-shear in
    ``[-shear, shear]`` degrees; pixels from outside the image are ``fill``. Keeps the shape and
    dtype (uint8 or float). With all ranges at their defaults it is the identity. Digits,
    characters and other small aligned images gain most from it (e.g. MNIST with few examples).
    """
    if degrees < 0 or shear < 0 or not 0 <= translate < 1:
        raise ValueError(
            f"random_affine needs degrees >= 0, shear >= 0 and 0 <= translate < 1, got {degrees}, {shear}, {translate}."
        )
    lo, hi = _pair_of_floats(scale, "random_affine scale")
    if not 0 < lo <= hi:
        raise ValueError(f"random_affine scale must be a (min, max) range of positive factors, got {scale!r}.")
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"random_affine method must be 'bilinear' or 'nearest', got {method!r}.")
    rad = 3.141592653589793 / 180.0

    def random_affine(image: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        low = tf.constant([-degrees * rad, -translate, -translate, lo, -shear * rad])
        high = tf.constant([degrees * rad, translate, translate, hi, shear * rad])
        if seed is None:
            u = tf.random.uniform([5])
        else:
            u = tf.random.stateless_uniform([5], seed=seed)
        angle, tx, ty, zoom, sh = tf.unstack(low + (high - low) * u)
        h = tf.cast(tf.shape(image)[0], tf.float32)
        w = tf.cast(tf.shape(image)[1], tf.float32)
        cx, cy, tx, ty = (w - 1) / 2, (h - 1) / 2, tx * w, ty * h
        # Forward map (input to output) about the centre: rotate(shear(zoom(p))) + shift. The warp
        # needs the inverse: input = M^-1 (output - centre - shift) + centre.
        cos, sin, tan = tf.cos(angle), tf.sin(angle), tf.tan(sh)
        m00, m01 = cos * zoom, (cos * tan - sin) * zoom
        m10, m11 = sin * zoom, (sin * tan + cos) * zoom
        det = m00 * m11 - m01 * m10
        i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
        ox, oy = cx + tx, cy + ty
        transform = tf.stack([i00, i01, cx - i00 * ox - i01 * oy, i10, i11, cy - i10 * ox - i11 * oy, 0.0, 0.0])
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None],
            transforms=transform[None],
            output_shape=tf.shape(image)[:2],
            fill_value=tf.constant(fill, tf.float32),
            interpolation=method.upper(),
            fill_mode="CONSTANT",
        )
        return tf.ensure_shape(out[0], image.shape)

    return random_affine


def _pair_of_floats(value: Any, what: str) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1])
    raise ValueError(f"{what} must be a number or a (min, max) pair of numbers, got {value!r}.")


@pp_ops.register("flip_lr")
@inkey_outkey(with_seed=True)
def get_flip_lr() -> SeededTensorFn:
    """Mirrors the image left-right with probability 1/2."""

    def flip_lr(image: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        if seed is None:
            return tf.image.random_flip_left_right(image)
        return tf.image.stateless_random_flip_left_right(image, seed=seed)

    return flip_lr


@pp_ops.register("vgg_value_range")
@inkey_outkey()
def get_vgg_value_range(
    mean: Sequence[float] = (0.485 * 255, 0.456 * 255, 0.406 * 255),
    std: Sequence[float] = (0.229 * 255, 0.224 * 255, 0.225 * 255),
) -> TensorFn:
    """Per-channel ``(image - mean) / std`` as float32; defaults are the ImageNet (VGG/PyTorch) values on 0..255."""
    if len(mean) != len(std):
        raise ValueError(f"vgg_value_range needs one mean and one std per channel, got {len(mean)} and {len(std)}.")
    mean_t = tf.constant(mean, tf.float32)
    std_t = tf.constant(std, tf.float32)

    def vgg_value_range(image: tf.Tensor) -> tf.Tensor:
        return (tf.cast(image, tf.float32) - mean_t) / std_t

    return vgg_value_range
