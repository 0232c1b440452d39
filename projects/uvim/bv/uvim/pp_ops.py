"""pp ops of UViM's tasks (registered on import of ``bv.uvim``).

- ``digit_labels(threshold=128)``: MNIST digit segmentation. ``labels`` is the digit's
  class + 1 on its stroke pixels (``image >= threshold`` of the raw uint8 image) and 0
  (background) elsewhere, ``[H, W, 1]`` int32. Apply before ``value_range``.
- ``coco_panoptic``: COCO panoptic's ``panoptic_image`` (ids in RGB) and
  ``panoptic_objects`` to ``labels`` ``[H, W, 2]``: semantic class + 1 (0: void) and the
  instance's index + 1 in the objects list (0: none).
- ``make_canonical``: renumbers the instances of ``labels[..., -1]`` 1, 2, ... in the
  order of their centres of mass (row-major), so the same scene always gets the same ids.
- ``nyu_depth``: NYU depth v2's ``depth`` to ``labels`` ``[H, W, 1]`` float32 metres.
- ``nyu_eval_crop``: the standard 426x560 evaluation crop of NYU depth's 480x640 frames.
- ``rgb_to_grayscale_to_rgb``: the grey image, still 3 channels (colorization's input).
- ``joint_flip_lr(keys)``, ``joint_random_crop(size, keys)``: one random flip or crop
  applied alike to several entries (the image and its labels).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf

from bv.core.registry import pp_ops
from bv.pp.utils import inkey_outkey, next_seed, require

Data = dict[str, Any]

NYU_CROP = (45, 41, 426, 560)  # top, left, height, width


@pp_ops.register("digit_labels")
def get_digit_labels(
    threshold: int = 128, image_key: str = "image", label_key: str = "label", outkey: str = "labels"
) -> Callable[[Data], Data]:
    def digit_labels(data: Data) -> Data:
        image = require(data, image_key, "digit_labels")
        if image.dtype != tf.uint8:
            raise ValueError("pp op digit_labels reads the raw uint8 image: put it before value_range.")
        label = tf.cast(require(data, label_key, "digit_labels"), tf.int32)
        stroke = tf.cast(image[..., :1] >= threshold, tf.int32)
        return {**data, outkey: stroke * (label + 1)}

    return digit_labels


@pp_ops.register("coco_panoptic")
def get_coco_panoptic(outkey: str = "labels") -> Callable[[Data], Data]:
    def coco_panoptic(data: Data) -> Data:
        objects = require(data, "panoptic_objects", "coco_panoptic")
        # One id and one class per object (fake data may give lists of different lengths: pair what pairs).
        n = tf.minimum(tf.shape(objects["id"])[0], tf.shape(objects["label"])[0])
        ids = tf.cast(objects["id"][:n], tf.int32)
        classes = tf.cast(objects["label"][:n], tf.int32)
        rgb = tf.cast(require(data, "panoptic_image", "coco_panoptic"), tf.int32)
        id_map = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        hits = tf.cast(id_map[:, :, None] == ids[None, None, :], tf.int32)  # [H, W, objects]
        instances = tf.reduce_sum(hits * (tf.range(tf.shape(ids)[0]) + 1), axis=-1)
        semantics = tf.reduce_sum(hits * (classes + 1), axis=-1)
        return {**data, outkey: tf.stack([semantics, instances], axis=-1)}

    return coco_panoptic


@pp_ops.register("make_canonical")
@inkey_outkey("labels", "labels")
def get_make_canonical() -> Callable[[tf.Tensor], tf.Tensor]:
    def make_canonical(labels: tf.Tensor) -> tf.Tensor:
        inst = labels[..., -1]
        ids = tf.unique(tf.reshape(inst, [-1])).y
        ids = ids[ids > 0]
        masks = tf.cast(inst[None] == ids[:, None, None], tf.float32)  # [n, H, W]
        h, w = tf.shape(inst)[0], tf.shape(inst)[1]
        rows = tf.cast(tf.range(h), tf.float32)[None, :, None]
        cols = tf.cast(tf.range(w), tf.float32)[None, None, :]
        area = tf.maximum(tf.reduce_sum(masks, axis=(1, 2)), 1.0)
        cy = tf.reduce_sum(masks * rows, axis=(1, 2)) / area
        cx = tf.reduce_sum(masks * cols, axis=(1, 2)) / area
        order = tf.argsort(cy * tf.cast(w, tf.float32) + cx)
        rank = tf.math.invert_permutation(order)  # the new number (0-based) of each id
        new = tf.reduce_sum(tf.cast(masks, tf.int32) * (rank[:, None, None] + 1), axis=0)
        new = tf.where(inst > 0, new, inst)
        return tf.concat([labels[..., :-1], new[..., None]], axis=-1)

    return make_canonical


@pp_ops.register("nyu_depth")
@inkey_outkey("depth", "labels")
def get_nyu_depth() -> Callable[[tf.Tensor], tf.Tensor]:
    def nyu_depth(depth: tf.Tensor) -> tf.Tensor:
        return tf.cast(depth, tf.float32)[..., None]

    return nyu_depth


@pp_ops.register("nyu_eval_crop")
def get_nyu_eval_crop(keys: Sequence[str] = ("image", "labels")) -> Callable[[Data], Data]:
    top, left, height, width = NYU_CROP

    def nyu_eval_crop(data: Data) -> Data:
        out = dict(data)
        for key in keys:
            x = require(data, key, "nyu_eval_crop")
            out[key] = x[top : top + height, left : left + width]
        return out

    return nyu_eval_crop


@pp_ops.register("rgb_to_grayscale_to_rgb")
@inkey_outkey()
def get_rgb_to_grayscale_to_rgb() -> Callable[[tf.Tensor], tf.Tensor]:
    def rgb_to_grayscale_to_rgb(image: tf.Tensor) -> tf.Tensor:
        if image.shape[-1] != 3:
            raise ValueError(f"pp op rgb_to_grayscale_to_rgb needs an RGB image (3 channels), got {image.shape}.")
        return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))

    return rgb_to_grayscale_to_rgb


def _seed(data: Data) -> tf.Tensor:
    seed = next_seed(data)
    return seed if seed is not None else tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)


@pp_ops.register("joint_flip_lr")
def get_joint_flip_lr(keys: Sequence[str] = ("image", "labels")) -> Callable[[Data], Data]:
    def joint_flip_lr(data: Data) -> Data:
        out = dict(data)
        flip = tf.random.stateless_uniform([], _seed(out)) < 0.5
        for key in keys:
            x = require(out, key, "joint_flip_lr")
            out[key] = tf.cond(flip, lambda x=x: tf.reverse(x, axis=[1]), lambda x=x: x)
        return out

    return joint_flip_lr


@pp_ops.register("joint_random_crop")
def get_joint_random_crop(
    size: int | Sequence[int], keys: Sequence[str] = ("image", "labels")
) -> Callable[[Data], Data]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)

    def joint_random_crop(data: Data) -> Data:
        out = dict(data)
        first = require(out, keys[0], "joint_random_crop")
        shape = tf.shape(first)
        seed = _seed(out)
        top = tf.random.stateless_uniform([], seed, maxval=shape[0] - h + 1, dtype=tf.int32)
        left = tf.random.stateless_uniform([], seed + 1, maxval=shape[1] - w + 1, dtype=tf.int32)
        for key in keys:
            x = require(out, key, "joint_random_crop")
            crop = x[top : top + h, left : left + w]
            crop.set_shape(tf.TensorShape([h, w]).concatenate(x.shape[2:]))
            out[key] = crop
        return out

    return joint_random_crop
