"""Tests for the RandAugment/AutoAugment image operations and the randaug/autoaug pp ops."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import bv.pp  # noqa: F401  (registers the ops)
from bv.core.registry import pp_ops
from bv.pp import autoaugment as aa
from bv.pp.builder import get_preprocess_fn

SEED = tf.constant([7, 11], tf.int64)


def noise_image(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def grey(values: np.ndarray) -> np.ndarray:
    """A 2D array as a 3-channel uint8 image with equal channels."""
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=-1)


def apply(fn, image: np.ndarray, *args) -> np.ndarray:
    out = fn(tf.constant(image), *args)
    assert out.shape == image.shape and out.dtype == tf.uint8
    return out.numpy()


# ---------------------------------------------------------------- each op keeps shape and dtype


@pytest.mark.parametrize("name", aa.RANDAUG_OPS)
def test_every_op_keeps_shape_and_dtype(name):
    image = noise_image()
    for level in (0.0, 5.0, 10.0):
        out = aa.make_transform(name, level, aa.RANDAUG_HPARAMS)(tf.constant(image), SEED)
        assert out.shape == image.shape and out.dtype == tf.uint8


def test_unknown_op_name_lists_choices():
    with pytest.raises(ValueError, match="Unknown augmentation 'Blur'.*Equalize"):
        aa.make_transform("Blur", 5, aa.RANDAUG_HPARAMS)


# ---------------------------------------------------------------- known values


def test_invert_solarize_solarize_add_posterize_values():
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = grey(ramp)
    np.testing.assert_array_equal(apply(aa.invert, image), 255 - image)

    values = image.astype(int)
    np.testing.assert_array_equal(apply(aa.solarize, image, 128), np.where(values < 128, values, 255 - values))
    np.testing.assert_array_equal(apply(aa.solarize, image, 0), 255 - image)  # everything at or above 0
    np.testing.assert_array_equal(apply(aa.solarize, image, 256), image)  # nothing reaches 256

    np.testing.assert_array_equal(
        apply(aa.solarize_add, image, 110), np.where(values < 128, np.minimum(values + 110, 255), values)
    )
    np.testing.assert_array_equal(
        apply(aa.solarize_add, image, -20), np.where(values < 128, np.maximum(values - 20, 0), values)
    )

    np.testing.assert_array_equal(apply(aa.posterize, image, 4), image & 0xF0)
    np.testing.assert_array_equal(apply(aa.posterize, image, 1), image & 0x80)
    np.testing.assert_array_equal(apply(aa.posterize, image, 8), image)
    np.testing.assert_array_equal(apply(aa.posterize, image, 0), np.zeros_like(image))


def test_equalize_follows_pil_rule():
    # 1024 pixels: 512 at 10, 256 at 50, 256 at 90. PIL's step = (1024 - 256) // 255 = 3 and the
    # value v maps to (pixels below v + step // 2) // step: 10 -> 0, 50 -> 171, 90 -> 256 clipped to 255.
    values = np.array([10] * 512 + [50] * 256 + [90] * 256).reshape(32, 32)
    out = apply(aa.equalize, grey(values))
    np.testing.assert_array_equal(out[..., 0], np.select([values == 10, values == 50], [0, 171], 255))
    # Channels are equalised independently: an inverted second channel gets its own table.
    image = grey(values)
    image[..., 1] = 255 - image[..., 1]  # 245 x512, 205 x256, 165 x256: step (1024 - 512) // 255 = 2
    out = apply(aa.equalize, image)
    np.testing.assert_array_equal(out[..., 0], np.select([values == 10, values == 50], [0, 171], 255))
    expected_g = np.select([values == 90, values == 50], [0, (256 + 1) // 2], 255)  # (512 + 1) // 2 clipped
    np.testing.assert_array_equal(out[..., 1], expected_g)


def test_equalize_full_ramp_is_identity_and_small_images_unchanged():
    ramp = grey(np.arange(256).reshape(16, 16))
    np.testing.assert_array_equal(apply(aa.equalize, ramp), ramp)  # uniform histogram
    small = noise_image(4, 4)  # 16 pixels: step 0 in every channel
    np.testing.assert_array_equal(apply(aa.equalize, small), small)


def test_autocontrast_stretches_each_channel_and_keeps_flat_ones():
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0] = [[50, 100], [150, 150]]
    image[..., 1] = 77  # flat
    image[..., 2] = [[0, 255], [3, 4]]  # already full range
    out = apply(aa.autocontrast, image)
    np.testing.assert_array_equal(out[..., 0], [[0, 127], [255, 255]])  # 127.5 truncates
    np.testing.assert_array_equal(out[..., 1], image[..., 1])
    np.testing.assert_array_equal(out[..., 2], image[..., 2])


def test_blend_ops_endpoints():
    image = noise_image()
    for op in (aa.color, aa.contrast, aa.brightness, aa.sharpness):
        np.testing.assert_array_equal(apply(op, image, 1.0), image)
    np.testing.assert_array_equal(apply(aa.brightness, image, 0.0), np.zeros_like(image))
    np.testing.assert_array_equal(apply(aa.brightness, image, 0.5), image // 2)
    np.testing.assert_array_equal(apply(aa.brightness, image, 2.0), np.minimum(image.astype(int) * 2, 255))

    greyed = apply(aa.color, image, 0.0)
    np.testing.assert_array_equal(greyed[..., 0], greyed[..., 1])
    np.testing.assert_array_equal(greyed[..., 0], greyed[..., 2])
    luma = image.astype(float) @ [0.2989, 0.587, 0.114]
    assert np.abs(greyed[..., 0] - luma).max() <= 1.0

    half = grey(np.array([[0, 200], [200, 0]]))
    np.testing.assert_array_equal(apply(aa.contrast, half, 0.0), np.full_like(half, 100))  # the mean grey


def test_sharpness_zero_is_pil_smooth_filter_inside_the_border():
    image = np.zeros((5, 5), np.uint8)
    image[2, 2] = 130
    out = apply(aa.sharpness, grey(image), 0.0)[..., 0]
    expected = np.zeros((5, 5), np.uint8)
    expected[1:4, 1:4] = 10  # 130 / 13
    expected[2, 2] = 50  # 130 * 5 / 13
    np.testing.assert_array_equal(out, expected)


def test_rotate_translate_shear_cutout_geometry():
    square = grey(np.arange(16).reshape(4, 4))
    np.testing.assert_array_equal(apply(aa.rotate, square, 0.0), square)
    np.testing.assert_array_equal(apply(aa.rotate, square, 90.0), np.rot90(square, 1))  # counter-clockwise
    np.testing.assert_array_equal(apply(aa.rotate, square, -90.0), np.rot90(square, -1))

    image = noise_image(6, 8)
    moved = apply(aa.translate_x, image, 3.0)
    np.testing.assert_array_equal(moved[:, :5], image[:, 3:])
    assert (moved[:, 5:] == aa.FILL).all()
    moved = apply(aa.translate_y, image, -2.0)
    np.testing.assert_array_equal(moved[2:], image[:-2])
    assert (moved[:2] == aa.FILL).all()

    sheared = apply(aa.shear_x, square, 1.0)[..., 0]
    np.testing.assert_array_equal(sheared, [[0, 1, 2, 3], [5, 6, 7, 128], [10, 11, 128, 128], [15, 128, 128, 128]])
    sheared = apply(aa.shear_y, square, 1.0)[..., 0]
    np.testing.assert_array_equal(
        sheared, np.transpose([[0, 4, 8, 12], [5, 9, 13, 128], [10, 14, 128, 128], [15] + [128] * 3])
    )

    cut = apply(aa.cutout, image, 1, tf.constant(2), tf.constant(3))
    expected = image.copy()
    expected[1:3, 2:4] = aa.FILL
    np.testing.assert_array_equal(cut, expected)
    corner = apply(aa.cutout, image, 2, tf.constant(0), tf.constant(0))  # clipped at the edges
    expected = image.copy()
    expected[:2, :2] = aa.FILL
    np.testing.assert_array_equal(corner, expected)


def test_level_mapping_matches_tpu_constants():
    image = grey(np.arange(256).reshape(16, 16))
    # Posterize keeps int(level / 10 * 4) bits; Solarize's threshold is int(level / 10 * 256).
    np.testing.assert_array_equal(
        apply(aa.make_transform("Posterize", 5, aa.RANDAUG_HPARAMS), image, SEED), aa.posterize(image, 2).numpy()
    )
    np.testing.assert_array_equal(
        apply(aa.make_transform("Solarize", 5, aa.RANDAUG_HPARAMS), image, SEED), aa.solarize(image, 128).numpy()
    )
    # Enhance ops use factor level / 10 * 1.8 + 0.1; brightness at level 0 is factor 0.1.
    np.testing.assert_array_equal(
        apply(aa.make_transform("Brightness", 0, aa.RANDAUG_HPARAMS), image, SEED), aa.brightness(image, 0.1).numpy()
    )
    # TranslateX at level 10 moves by +-translate_const pixels (100 for RandAugment).
    wide = noise_image(4, 240)
    out = apply(aa.make_transform("TranslateX", 10, aa.RANDAUG_HPARAMS), wide, SEED)
    candidates = [aa.translate_x(wide, 100.0).numpy(), aa.translate_x(wide, -100.0).numpy()]
    assert any(np.array_equal(out, c) for c in candidates)


def test_random_signs_take_both_values_over_seeds():
    image = noise_image(8, 8)
    rotate = aa.make_transform("Rotate", 10, aa.RANDAUG_HPARAMS)
    left, right = aa.rotate(image, 30.0).numpy(), aa.rotate(image, -30.0).numpy()
    outs = [rotate(tf.constant(image), tf.constant([i, 0], tf.int64)).numpy() for i in range(12)]
    lefts = sum(np.array_equal(o, left) for o in outs)
    rights = sum(np.array_equal(o, right) for o in outs)
    assert lefts + rights == 12 and lefts > 0 and rights > 0


# ---------------------------------------------------------------- RandAugment / AutoAugment


def augment_twice_in_dataset(pp: str, image: np.ndarray, seeds: list[int]) -> tuple[list, list]:
    """Two passes over one tf.data pipeline; stateful randomness would make them differ."""
    data = {"image": np.stack([image] * len(seeds)), "_rng": np.array([[s, 3] for s in seeds], np.int64)}
    ds = tf.data.Dataset.from_tensor_slices(data).map(get_preprocess_fn(pp), num_parallel_calls=2)
    return [ex["image"] for ex in ds.as_numpy_iterator()], [ex["image"] for ex in ds.as_numpy_iterator()]


@pytest.mark.parametrize("pp", ["randaug(2, 10)", "autoaug('v0')"])
def test_augment_is_a_function_of_the_seed(pp):
    image = noise_image(16, 16)
    first, again = augment_twice_in_dataset(pp, image, list(range(10)))
    for a, b in zip(first, again):
        assert a.shape == image.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    distinct = {a.tobytes() for a in first}
    assert len(distinct) >= 4, f"only {len(distinct)} distinct images from 10 seeds"
    eager = pp_ops.call(pp)({"image": image, "_rng": tf.constant([3, 3], tf.int64)})["image"].numpy()
    np.testing.assert_array_equal(eager, first[3])  # eager and tf.data agree


def test_randaug_op_eagerly_and_without_rng():
    image = noise_image()
    data = {"image": image, "_rng": SEED}
    a = pp_ops.call("randaug")(dict(data))["image"].numpy()
    b = pp_ops.call("randaug(num_layers=2, magnitude=10)")(dict(data))["image"].numpy()
    np.testing.assert_array_equal(a, b)
    out = pp_ops.call("randaug(1, 5, key='x')")({"x": image})["x"]  # no _rng: stateful fallback
    assert out.shape == image.shape and out.dtype == tf.uint8
    np.testing.assert_array_equal(pp_ops.call("randaug(0)")(dict(data))["image"], image)  # no layers: identity


def test_autoaug_test_policy_is_translate_then_equalize():
    image = noise_image(20, 300)
    out = pp_ops.call("autoaug('test')")({"image": image, "_rng": SEED})["image"].numpy()
    # TranslateX at level 4 with AutoAugment's translate_const 250: +-100 pixels, then Equalize.
    candidates = [aa.equalize(aa.translate_x(image, s * 100.0)).numpy() for s in (1, -1)]
    assert any(np.array_equal(out, c) for c in candidates)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="Unknown AutoAugment policy 'v9'.*v0"):
        pp_ops.call("autoaug('v9')")
    with pytest.raises(ValueError, match="num_layers"):
        pp_ops.call("randaug(-1)")
    with pytest.raises(ValueError, match="magnitude"):
        pp_ops.call("randaug(2, 'high')")
    with pytest.raises(ValueError, match="uint8"):
        pp_ops.call("randaug")({"image": np.zeros((4, 4, 3), np.float32)})
    with pytest.raises(ValueError, match=r"\[height, width, 3\]"):
        pp_ops.call("autoaug")({"image": np.zeros((4, 4, 1), np.uint8)})
