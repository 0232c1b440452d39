"""RandAugment and AutoAugment on plain TensorFlow, as the pp ops ``randaug`` and ``autoaug``.

The image operations follow the PIL-like definitions of the EfficientNet/TPU AutoAugment code
that big_vision uses (magnitude levels 0..10 mapped to each op's argument, grey 128 for
uncovered pixels), but need no ``tensorflow_addons``: affine warps use TF's own
``ImageProjectiveTransformV3``. Every random choice (which op, its sign, where a cutout goes,
whether a policy step fires) is a stateless draw from the example's ``_rng`` seed, so the
augmented stream is a pure function of that seed.

Deliberate differences from the TPU code (its bugs, not its intent):

- ``contrast`` blends towards the mean grey level (as PIL does); the TPU code used
  ``number_of_pixels / 256`` instead of the mean.
- ``solarize`` compares in int32, so threshold 256 (magnitude 10) leaves the image unchanged;
  under TF 2 the TPU code's uint8 comparison would wrap 256 to 0 and invert the whole image.

Images must be uint8 ``[height, width, 3]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import tensorflow as tf

from bv.core.registry import pp_ops
from bv.pp.utils import inkey_outkey

MAX_LEVEL = 10.0
"""Magnitudes run from 0 (weakest) to 10 (the strongest setting of the original search space)."""

FILL = 128
"""Grey written where a rotation, shear, translation or cutout uncovers pixels."""

SeededTensorFn = Callable[[tf.Tensor, "tf.Tensor | None"], tf.Tensor]
Transform = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
"""``(image, seed) -> image``: one op at a fixed magnitude; the seed picks signs and positions."""

# ================================================================ image operations (uint8 in, uint8 out)


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
    """Clips to 0..255 and truncates, as PIL's blend and the TPU code do."""
    return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def blend(image1: tf.Tensor, image2: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """``image1 + factor * (image2 - image1)``: 0 gives image1, 1 image2, above 1 extrapolates (clipped)."""
    a = tf.cast(image1, tf.float32)
    b = tf.cast(image2, tf.float32)
    return _to_uint8(a + factor * (b - a))


def _grey(image: tf.Tensor) -> tf.Tensor:
    """The luma image ``[h, w, 1]`` as uint8 (ITU-R 601 weights, like PIL's ``convert("L")``)."""
    return tf.image.rgb_to_grayscale(image)


def invert(image: tf.Tensor) -> tf.Tensor:
    """``255 - image``."""
    return 255 - image


def solarize(image: tf.Tensor, threshold: int | tf.Tensor = 128) -> tf.Tensor:
    """Inverts the pixels at or above ``threshold``; 256 or more leaves the image unchanged."""
    inverted = 255 - image
    return tf.where(tf.cast(image, tf.int32) < tf.cast(threshold, tf.int32), image, inverted)


def solarize_add(image: tf.Tensor, addition: int | tf.Tensor = 0, threshold: int = 128) -> tf.Tensor:
    """Adds ``addition`` (clipped to 0..255) to the pixels below ``threshold``."""
    values = tf.cast(image, tf.int32)
    added = tf.cast(tf.clip_by_value(values + tf.cast(addition, tf.int32), 0, 255), tf.uint8)
    return tf.where(values < threshold, added, image)


def posterize(image: tf.Tensor, bits: int | tf.Tensor) -> tf.Tensor:
    """Keeps the ``bits`` most significant bits of each value (0 bits gives black)."""
    shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    values = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(values, shift), shift), tf.uint8)


def color(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Color``: 0 is greyscale, 1 the original, above 1 more saturated."""
    return blend(tf.image.grayscale_to_rgb(_grey(image)), image, factor)


def contrast(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Contrast``: blends with a flat image at the (rounded) mean grey level."""
    mean = tf.round(tf.reduce_mean(tf.cast(_grey(image), tf.float32)))
    return blend(tf.fill(tf.shape(image), tf.cast(mean, tf.uint8)), image, factor)


def brightness(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Brightness``: blends with black."""
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blends with PIL's SMOOTH-filtered image (border pixels unfiltered).

    SMOOTH is the 3x3 kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``: a 3x3 box sum (done as two
    1D sums of shifted slices, much faster on CPU than a depthwise convolution) plus 4x the centre.
    """
    values = tf.cast(image, tf.float32)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    rows = values[: h - 2] + values[1 : h - 1] + values[2:]
    box = rows[:, : w - 2] + rows[:, 1 : w - 1] + rows[:, 2:]
    smooth = tf.pad(_to_uint8((box + 4.0 * values[1:-1, 1:-1]) / 13.0), [[1, 1], [1, 1], [0, 0]])
    inside = tf.pad(tf.ones([h - 2, w - 2, 1], tf.bool), [[1, 1], [1, 1], [0, 0]])
    return blend(tf.where(inside, smooth, image), image, factor)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel linearly so that its min becomes 0 and its max 255 (flat channels stay)."""
    values = tf.cast(image, tf.float32)
    lo = tf.reduce_min(values, axis=[0, 1])
    hi = tf.reduce_max(values, axis=[0, 1])
    flat = hi <= lo
    scale = tf.where(flat, 1.0, 255.0 / tf.where(flat, 1.0, hi - lo))
    offset = tf.where(flat, 0.0, -lo * scale)
    return _to_uint8(values * scale + offset)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.equalize``: per channel, maps values through the normalised cumulative histogram.

    As in PIL, the pixels holding the channel's highest value are left out of the step size, and
    a channel whose step is 0 (nearly a single value) is left unchanged.
    """
    shape = tf.shape(image)
    channels = shape[2]
    values = tf.reshape(tf.cast(image, tf.int32), [-1, channels])  # [pixels, channels]
    offsets = tf.range(channels) * 256
    counts = tf.math.bincount(values + offsets, minlength=256 * channels, maxlength=256 * channels)
    hist = tf.reshape(counts, [channels, 256])
    top = tf.reduce_max(values, axis=0)  # the highest value present in each channel
    top_count = tf.gather(hist, top, batch_dims=1)
    step = (tf.shape(values)[0] - top_count) // 255  # [channels]
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(hist, axis=1) + safe_step[:, None] // 2) // safe_step[:, None]
    lut = tf.clip_by_value(tf.concat([tf.zeros([channels, 1], tf.int32), lut[:, :-1]], axis=1), 0, 255)
    lut = tf.where(step[:, None] == 0, tf.range(256)[None, :], lut)  # identity where the step is 0
    mapped = tf.gather(tf.reshape(lut, [-1]), values + offsets)
    return tf.reshape(tf.cast(mapped, tf.uint8), shape)


def _warp(image: tf.Tensor, transform: Sequence[float | tf.Tensor], fill: int = FILL) -> tf.Tensor:
    """Samples ``output[y, x] = image[a3*x + a4*y + a5, a0*x + a1*y + a2]`` (nearest), ``fill`` outside.

    ``transform`` is ``[a0, a1, a2, a3, a4, a5]``, the affine map from output to input coordinates.
    """
    matrix = tf.cast(tf.stack([*transform, 0.0, 0.0]), tf.float32)[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=matrix,
        output_shape=tf.shape(image)[:2],
        fill_value=tf.constant(fill, tf.float32),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )
    return tf.ensure_shape(out[0], image.shape)


def rotate(image: tf.Tensor, degrees: float | tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """Rotates counter-clockwise (for positive ``degrees``) about the image centre."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return _warp(image, [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy], fill)


def shear_x(image: tf.Tensor, level: float | tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """Shears along x: ``output[y, x] = image[y, x + level * y]`` (PIL's affine ``(1, level, 0, 0, 1, 0)``)."""
    return _warp(image, [1.0, level, 0.0, 0.0, 1.0, 0.0], fill)


def shear_y(image: tf.Tensor, level: float | tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """Shears along y: ``output[y, x] = image[y + level * x, x]``."""
    return _warp(image, [1.0, 0.0, 0.0, level, 1.0, 0.0], fill)


def translate_x(image: tf.Tensor, pixels: float | tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """``output[y, x] = image[y, x + pixels]``: positive ``pixels`` move the content left."""
    return _warp(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill)


def translate_y(image: tf.Tensor, pixels: float | tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """``output[y, x] = image[y + pixels, x]``: positive ``pixels`` move the content up."""
    return _warp(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill)


def cutout(
    image: tf.Tensor, pad_size: int | tf.Tensor, center_y: tf.Tensor, center_x: tf.Tensor, fill: int = FILL
) -> tf.Tensor:
    """Fills the square of side ``2 * pad_size`` centred at (``center_y``, ``center_x``), clipped to the image."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    rows = tf.range(h)[:, None, None]
    cols = tf.range(w)[None, :, None]
    inside_y = (rows >= center_y - pad_size) & (rows < center_y + pad_size)
    inside_x = (cols >= center_x - pad_size) & (cols < center_x + pad_size)
    return tf.where(inside_y & inside_x, tf.constant(fill, image.dtype), image)


# ================================================================ magnitude -> op with its random parts


@dataclasses.dataclass(frozen=True)
class Hparams:
    """Scales that turn a level into pixels: the cutout half-size and the translation at level 10."""

    cutout_const: int
    translate_const: int


RANDAUG_HPARAMS = Hparams(cutout_const=40, translate_const=100)
AUTOAUG_HPARAMS = Hparams(cutout_const=100, translate_const=250)

OP_NAMES = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
    "SolarizeAdd",
)
"""Every op by name. RandAugment chooses among all of them uniformly (the TPU code's list and order)."""

RANDAUG_OPS = OP_NAMES


def _random_sign(value: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``value`` or ``-value`` with probability 1/2 each."""
    coin = tf.random.stateless_uniform([], seed, maxval=2, dtype=tf.int32)
    return tf.where(coin == 0, value, -value)


def _random_cutout(image: tf.Tensor, pad_size: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Cutout centred at a uniformly random pixel."""
    hw = tf.shape(image)[:2]
    unit = tf.random.stateless_uniform([2], seed)
    center = tf.minimum(tf.cast(unit * tf.cast(hw, tf.float32), tf.int32), hw - 1)
    return cutout(image, pad_size, center[0], center[1])


def _apply_op_graph(
    image: tf.Tensor,
    op: tf.Tensor,
    level: tf.Tensor,
    seed: tf.Tensor,
    translate_const: tf.Tensor,
    cutout_const: tf.Tensor,
) -> tf.Tensor:
    """Applies op number ``op`` of :data:`OP_NAMES` at ``level``; the seed picks signs and positions.

    Levels become arguments as in the TPU code, in float64 so that ``int(level / 10 * k)`` truncates
    exactly as Python would.
    """
    frac = level / MAX_LEVEL

    def trunc(x: tf.Tensor) -> tf.Tensor:
        return tf.cast(x, tf.int32)  # level >= 0, so this is Python's int()

    enhance = tf.cast(frac * 1.8 + 0.1, tf.float32)
    signed = tf.cast(_random_sign(frac, seed), tf.float32)  # +-frac: rotations, shears and translations
    branches = {
        "AutoContrast": lambda: autocontrast(image),
        "Equalize": lambda: equalize(image),
        "Invert": lambda: invert(image),
        "Rotate": lambda: rotate(image, signed * 30.0),
        "Posterize": lambda: posterize(image, trunc(frac * 4)),
        "Solarize": lambda: solarize(image, trunc(frac * 256)),
        "Color": lambda: color(image, enhance),
        "Contrast": lambda: contrast(image, enhance),
        "Brightness": lambda: brightness(image, enhance),
        "Sharpness": lambda: sharpness(image, enhance),
        "ShearX": lambda: shear_x(image, signed * 0.3),
        "ShearY": lambda: shear_y(image, signed * 0.3),
        "TranslateX": lambda: translate_x(image, signed * tf.cast(translate_const, tf.float32)),
        "TranslateY": lambda: translate_y(image, signed * tf.cast(translate_const, tf.float32)),
        "Cutout": lambda: _random_cutout(image, trunc(frac * cutout_const), seed),
        "SolarizeAdd": lambda: solarize_add(image, trunc(frac * 110)),
    }
    out = tf.switch_case(op, [branches[name] for name in OP_NAMES])
    return tf.ensure_shape(out, [None, None, 3])


# Traced once per process and shared by every randaug/autoaug op and layer: building the 16
# branches is the slow part of tracing a pipeline, so no pipeline should do it twice.
_apply_op = tf.function(
    _apply_op_graph,
    input_signature=[
        tf.TensorSpec([None, None, 3], tf.uint8),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float64),
        tf.TensorSpec([2], tf.int64),
        tf.TensorSpec([], tf.float64),
        tf.TensorSpec([], tf.float64),
    ],
    autograph=False,
)


def apply_op(
    image: tf.Tensor, op: int | tf.Tensor, level: float | tf.Tensor, seed: tf.Tensor, hparams: Hparams
) -> tf.Tensor:
    """Applies op ``op`` (an index into :data:`OP_NAMES`) at magnitude ``level`` (0..10) to a uint8 RGB image."""
    return _apply_op(
        image,
        tf.cast(op, tf.int32),
        tf.cast(level, tf.float64),
        tf.cast(seed, tf.int64),
        tf.constant(hparams.translate_const, tf.float64),
        tf.constant(hparams.cutout_const, tf.float64),
    )


def make_transform(name: str, level: float, hparams: Hparams) -> Transform:
    """The op ``name`` at magnitude ``level`` (0..10) as an ``(image, seed) -> image`` function."""
    if name not in OP_NAMES:
        raise ValueError(f"Unknown augmentation {name!r}; choose one of {', '.join(OP_NAMES)}.")
    index = OP_NAMES.index(name)
    return lambda image, seed: apply_op(image, index, level, seed, hparams)


# ================================================================ policies


def _check_image(image: tf.Tensor, op: str) -> tf.Tensor:
    if image.dtype != tf.uint8:
        raise ValueError(f"{op} works on uint8 images (apply it before value_range), got {image.dtype.name}.")
    if image.shape.rank not in (None, 3) or (image.shape.rank == 3 and image.shape[-1] not in (None, 3)):
        raise ValueError(f"{op} needs an RGB image of shape [height, width, 3], got shape {image.shape}.")
    return tf.ensure_shape(image, [None, None, 3])


def _seed_or_fresh(seed: tf.Tensor | None) -> tf.Tensor:
    """The example's seed as int64, or a fresh random one when the data carries no ``_rng``."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    return tf.cast(seed, tf.int64)


@tf.autograph.experimental.do_not_convert  # plain graph code; converting it costs seconds per trace
def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int = 2, magnitude: float = 10) -> tf.Tensor:
    """RandAugment: ``num_layers`` times, applies one of :data:`RANDAUG_OPS` chosen uniformly at ``magnitude``."""
    image = _check_image(image, "randaug")
    seed = tf.cast(seed, tf.int64)
    for layer in range(num_layers):
        layer_seed = tf.random.experimental.stateless_fold_in(seed, layer)
        pick_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, num=2))
        which = tf.random.stateless_uniform([], pick_seed, maxval=len(RANDAUG_OPS), dtype=tf.int32)
        image = apply_op(image, which, magnitude, op_seed, RANDAUG_HPARAMS)
    return image


Policy = Sequence[Sequence[tuple[str, float, int]]]
"""Sub-policies; each is a sequence of ``(op name, probability, level)`` steps applied in order."""

POLICIES: dict[str, Policy] = {
    # The AutoAugment paper's ImageNet-searched policy as used by the EfficientNet code.
    "v0": (
        (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
        (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
        (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
        (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
        (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
        (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
        (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
        (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
        (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
        (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
        (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
        (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
        (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
        (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
        (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
        (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
        (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
        (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
        (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
        (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
        (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
        (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
        (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
        (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
        (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
    ),
    # A one-sub-policy policy for debugging.
    "test": ((("TranslateX", 1.0, 4), ("Equalize", 1.0, 10)),),
}


def _policy_tables(policy: Policy) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``[sub-policies, steps]`` tables of op indices, probabilities and levels (short ones padded with p=0)."""
    if not policy or not all(policy):
        raise ValueError("An AutoAugment policy needs at least one sub-policy, each with at least one step.")
    width = max(len(sub) for sub in policy)
    ops, probs, levels = [], [], []
    for sub in policy:
        for name, _, _ in sub:
            if name not in OP_NAMES:
                raise ValueError(f"Unknown augmentation {name!r} in policy; choose from {', '.join(OP_NAMES)}.")
        pad = [("Invert", 0.0, 0)] * (width - len(sub))
        ops.append([OP_NAMES.index(name) for name, _, _ in [*sub, *pad]])
        probs.append([float(p) for _, p, _ in [*sub, *pad]])
        levels.append([float(level) for _, _, level in [*sub, *pad]])
    return tf.constant(ops, tf.int32), tf.constant(probs, tf.float32), tf.constant(levels, tf.float64)


@tf.autograph.experimental.do_not_convert
def autoaugment(image: tf.Tensor, seed: tf.Tensor, policy: str | Policy = "v0") -> tf.Tensor:
    """AutoAugment: picks one sub-policy uniformly and applies each of its steps with that step's probability."""
    image = _check_image(image, "autoaug")
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"Unknown AutoAugment policy {policy!r}; choose one of {', '.join(POLICIES)}.")
        policy = POLICIES[policy]
    ops, probs, levels = _policy_tables(policy)
    seed = tf.cast(seed, tf.int64)
    pick_seed, steps_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    row = tf.random.stateless_uniform([], pick_seed, maxval=len(policy), dtype=tf.int32)
    for step in range(int(ops.shape[1])):
        step_seed = tf.random.experimental.stateless_fold_in(steps_seed, step)
        fire_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(step_seed, num=2))
        fire = tf.random.stateless_uniform([], fire_seed) < probs[row, step]
        image = tf.cond(
            fire,
            lambda x=image, s=op_seed, i=step: apply_op(x, ops[row, i], levels[row, i], s, AUTOAUG_HPARAMS),
            lambda x=image: x,
        )
    return image


# ================================================================ pp ops


@pp_ops.register("randaug")
@inkey_outkey(with_seed=True)
def get_randaug(num_layers: int = 2, magnitude: float = 10) -> SeededTensorFn:
    """RandAugment (arXiv:1909.13719) on a uint8 RGB image: ``num_layers`` random ops at ``magnitude`` (0..10+)."""
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0:
        raise ValueError(f"randaug num_layers must be an int >= 0, got {num_layers!r}.")
    if not isinstance(magnitude, (int, float)) or isinstance(magnitude, bool) or magnitude < 0:
        raise ValueError(f"randaug magnitude must be a number >= 0 (10 is the usual maximum), got {magnitude!r}.")

    @tf.autograph.experimental.do_not_convert
    def randaug(image: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        return randaugment(image, _seed_or_fresh(seed), num_layers, magnitude)

    return randaug


@pp_ops.register("autoaug")
@inkey_outkey(with_seed=True)
def get_autoaug(policy: str = "v0") -> SeededTensorFn:
    """AutoAugment (arXiv:1805.09501) on a uint8 RGB image with the named policy (``"v0"`` or ``"test"``)."""
    if policy not in POLICIES:
        raise ValueError(f"Unknown AutoAugment policy {policy!r}; choose one of {', '.join(POLICIES)}.")

    @tf.autograph.experimental.do_not_convert
    def autoaug(image: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        return autoaugment(image, _seed_or_fresh(seed), policy)

    return autoaug
