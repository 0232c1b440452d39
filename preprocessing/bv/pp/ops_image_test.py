"""Tests for the image pp ops, eagerly and inside tf.data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import bv.pp  # noqa: F401  (registers the ops)
from bv.core.registry import pp_ops


def run(spec: str, data: dict) -> dict:
    return {k: np.asarray(v) for k, v in pp_ops.call(spec)(data).items()}


def run_in_dataset(spec: str, data: dict) -> dict:
    """The same op traced in graph mode by tf.data."""
    (out,) = tf.data.Dataset.from_tensors(data).map(pp_ops.call(spec)).as_numpy_iterator()
    return out


def arange_image(h: int, w: int, c: int = 1, dtype=np.uint8) -> np.ndarray:
    return np.arange(h * w * c).reshape(h, w, c).astype(dtype)


def smooth_image(h: int = 32, w: int = 48) -> np.ndarray:
    """A gentle gradient, which JPEG compresses almost losslessly."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([4 * y + 20, 3 * x + 10, 2 * (x + y) + 30], axis=-1).astype(np.uint8)


def seeds(n: int) -> list[tf.Tensor]:
    return [tf.constant([i, 1000 + i], tf.int64) for i in range(n)]


# ---------------------------------------------------------------- decode


def test_decode_png_is_lossless_and_keeps_channels():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    png = tf.io.encode_png(img)
    for spec in ("decode", "decode(precise=True)"):
        np.testing.assert_array_equal(run(spec, {"image": png})["image"], img)
    gray = run("decode(channels=1)", {"image": png})["image"]
    assert gray.shape == (5, 7, 1) and gray.dtype == np.uint8


def test_decode_jpeg_close_to_original():
    img = smooth_image()
    jpeg = tf.io.encode_jpeg(img, quality=100, chroma_downsampling=False)
    for spec in ("decode", "decode(precise=True)"):
        out = run(spec, {"image": jpeg})["image"]
        assert out.shape == img.shape and out.dtype == np.uint8
        error = np.abs(out.astype(int) - img)
        assert error.max() <= 6 and error.mean() < 2
    precise = run("decode(precise=True)", {"image": jpeg})["image"]
    np.testing.assert_array_equal(precise, tf.io.decode_jpeg(jpeg, dct_method="INTEGER_ACCURATE").numpy())


def test_decode_in_dataset_has_static_channels():
    png = tf.io.encode_png(arange_image(3, 4, 3))
    spec = tf.data.Dataset.from_tensors({"image": png}).map(pp_ops.call("decode")).element_spec
    assert spec["image"].shape.as_list() == [None, None, 3]


# ---------------------------------------------------------------- resize


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_resize_shapes_and_dtype(dtype):
    img = arange_image(6, 8, 3, dtype)
    assert run("resize(4)", {"image": img})["image"].shape == (4, 4, 3)
    out = run("resize((3, 5), method='area')", {"image": img})["image"]
    assert out.shape == (3, 5, 3) and out.dtype == dtype
    assert run("resize([10, 2], antialias=True)", {"image": img})["image"].shape == (10, 2, 3)


def test_resize_values():
    img = np.array([[10, 20], [30, 40]], np.uint8)[..., None]
    up = run("resize(4, method='nearest')", {"image": img})["image"][..., 0]
    np.testing.assert_array_equal(up, np.kron(img[..., 0], np.ones((2, 2), np.uint8)))
    down = run("resize(1, method='area')", {"image": img.astype(np.float32)})["image"]
    assert down.shape == (1, 1, 1) and down.item() == pytest.approx(25.0)
    const = np.full((5, 7, 3), 200, np.uint8)
    np.testing.assert_array_equal(run("resize(3, method='bicubic')", {"image": const})["image"], 200)


def test_resize_clips_uint8_overshoot():
    # Bicubic overshoots next to a sharp edge; the result must stay in 0..255 rather than wrap around.
    img = np.zeros((4, 4, 1), np.uint8)
    img[:, 2:] = 255
    out = run("resize((4, 16), method='bicubic')", {"image": img})["image"].astype(int)
    assert out[0, :5, 0].tolist() == [0] * 5 and out[0, -5:, 0].tolist() == [255] * 5


def test_resize_small_and_long_keep_aspect_ratio():
    img = arange_image(6, 12, 3)
    assert run("resize_small(3)", {"image": img})["image"].shape == (3, 6, 3)
    assert run("resize_small(9, method='bilinear')", {"image": img})["image"].shape == (9, 18, 3)
    assert run("resize_long(4)", {"image": img})["image"].shape == (2, 4, 3)
    assert run("resize_small(5)", {"image": arange_image(10, 7)})["image"].shape == (7, 5, 1)  # 10*5/7 rounds to 7


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resize(0)", "positive"),
        ("resize((2, 3, 4))", "height, width"),
        ("resize(2, method='cubic')", "bicubic"),
        ("inception_crop(area_min=50, area_max=10)", "area_min <= area_max"),
        ("random_crop(2.5)", "int"),
    ],
)
def test_bad_arguments_are_explained(spec, message):
    with pytest.raises(ValueError, match=message):
        pp_ops.call(spec)


def test_inkey_outkey_keep_the_input():
    img = arange_image(4, 4)
    out = run("resize(2, inkey='image', outkey='small')", {"image": img})
    np.testing.assert_array_equal(out["image"], img)
    assert out["small"].shape == (2, 2, 1)
    out = run("central_crop(2, key='mask')", {"image": img, "mask": img})
    assert out["image"].shape == (4, 4, 1) and out["mask"].shape == (2, 2, 1)


# ---------------------------------------------------------------- crops and flips


def test_central_crop_exact():
    img = arange_image(5, 6, 2)
    np.testing.assert_array_equal(run("central_crop(3)", {"image": img})["image"], img[1:4, 1:4])
    np.testing.assert_array_equal(run("central_crop((2, 4))", {"image": img})["image"], img[1:3, 1:5])
    np.testing.assert_array_equal(run("central_crop", {"image": img})["image"], img[:, 0:5])


def test_random_crop_is_a_window_and_reproducible():
    img = arange_image(10, 12, 2, np.float32)
    offsets = set()
    for rng in seeds(8):
        out = run("random_crop((3, 4))", {"image": img, "_rng": rng})["image"]
        assert out.shape == (3, 4, 2)
        y, x = divmod(int(out[0, 0, 0]) // 2, 12)
        np.testing.assert_array_equal(out, img[y : y + 3, x : x + 4])
        np.testing.assert_array_equal(out, run("random_crop((3, 4))", {"image": img, "_rng": rng})["image"])
        offsets.add((y, x))
    assert len(offsets) >= 4, "different seeds must give different crops"
    assert run("random_crop(3)", {"image": img})["image"].shape == (3, 3, 2)  # no _rng: stateful


def test_flip_lr_flips_half_the_time_and_is_reproducible():
    img = arange_image(3, 5, 3)
    outcomes = []
    for rng in seeds(16):
        out = run("flip_lr", {"image": img, "_rng": rng})["image"]
        np.testing.assert_array_equal(out, run("flip_lr", {"image": img, "_rng": rng})["image"])
        assert np.array_equal(out, img) or np.array_equal(out, img[:, ::-1])
        outcomes.append(np.array_equal(out, img))
    assert 0 < sum(outcomes) < 16
    assert run("flip_lr", {"image": img})["image"].shape == img.shape


def find_window(crop: np.ndarray, img: np.ndarray) -> tuple[int, int]:
    """Top-left corner of ``crop`` inside an image of unique values."""
    y, x = np.argwhere(img[..., 0] == crop[0, 0, 0])[0]
    np.testing.assert_array_equal(crop, img[y : y + crop.shape[0], x : x + crop.shape[1]])
    return int(y), int(x)


def test_inception_crop_window_area_and_determinism():
    img = arange_image(20, 30, 1, np.float32)
    boxes = set()
    for rng in seeds(6):
        out = run("inception_crop(area_min=20, area_max=60)", {"image": img, "_rng": rng})["image"]
        area = out.shape[0] * out.shape[1] / (20 * 30)
        assert 0.15 <= area <= 0.65 and out.shape[2] == 1
        boxes.add((*find_window(out, img), *out.shape[:2]))
        again = run("inception_crop(area_min=20, area_max=60)", {"image": img, "_rng": rng})["image"]
        np.testing.assert_array_equal(out, again)
    assert len(boxes) >= 3
    resized = run("inception_crop(8)", {"image": img.astype(np.uint8), "_rng": seeds(1)[0]})["image"]
    assert resized.shape == (8, 8, 1) and resized.dtype == np.uint8
    assert run("inception_crop((6, 4))", {"image": img})["image"].shape == (6, 4, 1)


def test_decode_jpeg_and_inception_crop_matches_decode_then_crop():
    jpeg = tf.io.encode_jpeg(smooth_image(), quality=100, chroma_downsampling=False)
    for rng in seeds(4):
        fused = run("decode_jpeg_and_inception_crop", {"image": jpeg, "_rng": rng})["image"]
        two_step = pp_ops.call("inception_crop")(pp_ops.call("decode")({"image": jpeg, "_rng": rng}))["image"]
        assert fused.shape == two_step.shape and fused.dtype == np.uint8
        assert np.abs(fused.astype(int) - two_step.numpy()).max() <= 3
    out = run("decode_jpeg_and_inception_crop((7, 9), area_min=50)", {"image": jpeg})["image"]
    assert out.shape == (7, 9, 3)


# ---------------------------------------------------------------- value ranges


def test_vgg_value_range():
    img = np.array([[[0, 128, 255]]], np.uint8)
    out = run("vgg_value_range", {"image": img})["image"]
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    np.testing.assert_allclose(out[0, 0], (np.array([0, 128, 255]) - mean) / std, rtol=1e-6)
    custom = run("vgg_value_range(mean=(1, 2, 3), std=(2, 2, 2))", {"image": img})["image"]
    np.testing.assert_allclose(custom[0, 0], [-0.5, 63.0, 126.0])


# ---------------------------------------------------------------- graph mode


@pytest.mark.parametrize(
    "spec",
    [
        "resize((3, 5))",
        "resize_small(4)",
        "central_crop(3)",
        "random_crop((3, 4))",
        "inception_crop(5, area_min=30)",
        "flip_lr",
        "vgg_value_range",
    ],
)
def test_graph_mode_matches_eager(spec):
    data = {"image": tf.constant(arange_image(8, 9, 3)), "_rng": tf.constant([5, 6], tf.int32)}
    eager, graph = run(spec, data), run_in_dataset(spec, data)
    assert sorted(eager) == sorted(graph)
    for k in eager:
        np.testing.assert_array_equal(eager[k], graph[k])


def test_decode_jpeg_and_inception_crop_graph_mode_matches_eager():
    data = {"image": tf.io.encode_jpeg(smooth_image()), "_rng": tf.constant([1, 2], tf.int64)}
    spec = "decode_jpeg_and_inception_crop(6)"
    np.testing.assert_array_equal(run(spec, data)["image"], run_in_dataset(spec, data)["image"])


# ---------------------------------------------------------------- random_affine


def _bar() -> np.ndarray:
    img = np.zeros((28, 28, 1), np.uint8)
    img[10:14, 8:20] = 255  # a horizontal bar, 4 x 12 pixels
    return img


def test_random_affine_defaults_are_the_identity():
    img = _bar()
    for rng in seeds(3):
        np.testing.assert_array_equal(run("random_affine()", {"image": img, "_rng": rng})["image"], img)


def test_random_affine_translates_by_whole_pixels_within_the_range():
    img = _bar()
    shifts = set()
    for rng in seeds(12):
        out = run("random_affine(translate=0.2, method='nearest')", {"image": img, "_rng": rng})["image"]
        assert out.shape == img.shape and out.dtype == np.uint8
        on = np.argwhere(out[..., 0] > 0)
        dy, dx = on.min(0) - (10, 8)
        assert abs(dy) <= 0.2 * 28 + 1 and abs(dx) <= 0.2 * 28 + 1
        # A shift moves the bar whole, as long as it stays inside the image.
        np.testing.assert_array_equal(on.max(0) - on.min(0), (3, 11))
        shifts.add((int(dy), int(dx)))
        again = run("random_affine(translate=0.2, method='nearest')", {"image": img, "_rng": rng})["image"]
        np.testing.assert_array_equal(out, again)  # the example's seed decides
    assert len(shifts) >= 6, "different seeds must give different shifts"


def test_random_affine_rotates_about_the_centre():
    # A fixed rotation: degrees=90 draws in [-90, 90]; the bar's centre stays where it is, and the
    # bar turns by the drawn angle, so it is taller than wide for large angles.
    img = np.zeros((29, 29, 1), np.float32)
    img[13:16, 4:25] = 1.0  # centred on (14, 14)
    heights = []
    for rng in seeds(16):
        out = run_in_dataset("random_affine(degrees=90)", {"image": img, "_rng": rng})["image"]
        ys, xs = np.nonzero(out[..., 0] > 0.5)
        assert abs(ys.mean() - 14) < 1.0 and abs(xs.mean() - 14) < 1.0
        heights.append(ys.max() - ys.min())
    assert min(heights) <= 8 and max(heights) >= 16  # some angles near 0, some near +-90 degrees


def test_random_affine_scale_grows_and_shrinks_the_content():
    img = _bar()
    areas = [
        (run("random_affine(scale=(0.5, 2.0))", {"image": img, "_rng": rng})["image"] > 127).sum() for rng in seeds(16)
    ]
    assert min(areas) < 0.5 * (img > 127).sum() < (img > 127).sum() * 2 < max(areas)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("random_affine(degrees=-1)", "degrees >= 0"),
        ("random_affine(translate=1.5)", "0 <= translate < 1"),
        ("random_affine(scale=(1.2, 0.8))", "range of positive factors"),
        ("random_affine(scale='big')", "a number or a \\(min, max\\) pair"),
        ("random_affine(method='cubic')", "'bilinear' or 'nearest'"),
    ],
)
def test_random_affine_bad_arguments(spec, message):
    with pytest.raises(ValueError, match=message):
        pp_ops.call(spec)
