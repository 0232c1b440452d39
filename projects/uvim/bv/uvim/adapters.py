"""Task adapters: how one vision task's output becomes the VQ-VAE's input and comes back.

An adapter turns ``batch["labels"]`` (image layout, ``[B, H, W, c]``) into patches
``{name: [B, N, C, P]}`` for the stage-I model, scores the model's logits against them
(per example), and turns logits back into predictions in image layout. It also says
which images it expects (``image_channels``), so that a data set with the wrong images
fails with a message instead of deep inside a convolution.

- ``segmentation``: semantic labels ``[B, H, W, 1]`` in ``0..num_classes-1`` (one-hot
  ``semantics``; softmax cross-entropy; the argmax map).
- ``panoptic``: ``[B, H, W, 2]`` semantic class (0 = void, ``1..num_classes``) and
  instance id (0 = none, ``1..max_instances-1``); one-hot ``semantics`` and
  ``instances``; the prediction gives every pixel the class that wins over its instance,
  as big_vision's ``panoptic_task``.
- ``depth``: metric depth ``[B, H, W, 1]`` quantized into ``bins`` between
  ``min_depth`` and ``max_depth``; cross-entropy that ignores the nearest bin (pixels
  without a depth reading are 0); the prediction is the bin's centre.
- ``colorization``: colours ``[B, H, W, 3]`` in ``[-1, 1]``, squared error, clipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from bv.core.config import ConfigError
from bv.core.errors import UserError

Logits = Mapping[str, jax.Array]


class InputShapeError(UserError, ValueError):
    """Images or labels whose shape the task adapter cannot use."""


def to_patches(x: jax.Array, patch: Sequence[int]) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, N, C, P]`` (row-major patches, row-major pixels within a patch)."""
    b, h, w, c = x.shape
    ph, pw = patch
    x = x.reshape(b, h // ph, ph, w // pw, pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, (h // ph) * (w // pw), c, ph * pw)


def from_patches(x: jax.Array, size: Sequence[int], patch: Sequence[int]) -> jax.Array:
    """The inverse of :func:`to_patches`: ``[B, N, C, P]`` -> ``[B, H, W, C]``."""
    b, _, c, _ = x.shape
    (h, w), (ph, pw) = size, patch
    x = x.reshape(b, h // ph, w // pw, c, ph, pw)
    x = x.transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h, w, c)


def _xent(logits: jax.Array, onehot: jax.Array) -> jax.Array:
    """Softmax cross-entropy over the class axis (-2) of ``[B, N, C, P]``: ``[B, N, P]``."""
    return -jnp.sum(onehot * jax.nn.log_softmax(logits, axis=-2), axis=-2)


@dataclasses.dataclass(frozen=True)
class Adapter:
    """Base: the label layout, input shapes and checks shared by every kind."""

    input_size: tuple[int, int]
    patch_size: tuple[int, int]
    image_channels: int = 3

    kind: str = "?"
    label_channels: int = 1

    def model_inputs(self) -> dict[str, tuple[int, int]]:
        """``{name: (C, P)}``: the stage-I model's ``inputs`` (and ``outputs``)."""
        raise NotImplementedError

    def to_inputs(self, labels: jax.Array) -> dict[str, jax.Array]:
        raise NotImplementedError

    def per_example_loss(self, logits: Logits, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        raise NotImplementedError

    def predict(self, logits: Logits) -> dict[str, jax.Array]:
        raise NotImplementedError

    @property
    def pixels(self) -> int:
        return self.patch_size[0] * self.patch_size[1]

    def check_image(self, shape: Sequence[int], where: str) -> None:
        """``shape`` of a batch of images ``[B, H, W, C]``: an error unless C is ``image_channels``."""
        if len(shape) != 4 or shape[-1] != self.image_channels:
            got = f"{shape[-1]} channel(s)" if len(shape) == 4 else f"shape {tuple(shape)}"
            raise InputShapeError(
                f"{where}: the {self.kind} adapter expects images [batch, height, width, {self.image_channels}] "
                f"({'RGB' if self.image_channels == 3 else f'{self.image_channels} channel(s)'}), got {got} "
                f"(shape {tuple(shape)}). Fix the pp string (e.g. decode(channels={self.image_channels})) or set "
                f"the adapter's image_channels."
            )

    def check_labels(self, shape: Sequence[int], where: str) -> None:
        want = (*self.input_size, self.label_channels)
        if len(shape) != 4 or tuple(shape[1:]) != want:
            raise InputShapeError(
                f"{where}: the {self.kind} adapter expects labels [batch, {want[0]}, {want[1]}, {want[2]}], got "
                f"shape {tuple(shape)}. Resize the labels to the model's input_size in the pp string."
            )


@dataclasses.dataclass(frozen=True)
class Segmentation(Adapter):
    num_classes: int = 2
    kind: str = "segmentation"

    def model_inputs(self) -> dict[str, tuple[int, int]]:
        return {"semantics": (self.num_classes, self.pixels)}

    def to_inputs(self, labels: jax.Array) -> dict[str, jax.Array]:
        onehot = jax.nn.one_hot(labels[..., 0].astype(jnp.int32), self.num_classes)
        return {"semantics": to_patches(onehot, self.patch_size)}

    def per_example_loss(self, logits: Logits, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = _xent(logits["semantics"], self.to_inputs(labels)["semantics"])
        loss = jnp.mean(x, axis=(1, 2))
        return loss, {"loss_semantics": loss}

    def predict(self, logits: Logits) -> dict[str, jax.Array]:
        probs = from_patches(logits["semantics"], self.input_size, self.patch_size)
        return {"semantics": jnp.argmax(probs, axis=-1).astype(jnp.int32)}


@dataclasses.dataclass(frozen=True)
class Panoptic(Adapter):
    num_classes: int = 133  # COCO panoptic's things and stuff; semantics 0 is void
    max_instances: int = 100
    kind: str = "panoptic"
    label_channels: int = 2

    def model_inputs(self) -> dict[str, tuple[int, int]]:
        return {"semantics": (self.num_classes + 1, self.pixels), "instances": (self.max_instances, self.pixels)}

    def to_inputs(self, labels: jax.Array) -> dict[str, jax.Array]:
        sem = jax.nn.one_hot(labels[..., 0].astype(jnp.int32), self.num_classes + 1)
        ins = jax.nn.one_hot(labels[..., 1].astype(jnp.int32), self.max_instances)  # ids < 0: all-zero rows
        return {"semantics": to_patches(sem, self.patch_size), "instances": to_patches(ins, self.patch_size)}

    def per_example_loss(self, logits: Logits, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = self.to_inputs(labels)
        logs = {f"loss_{k}": jnp.mean(_xent(logits[k], x[k]), axis=(1, 2)) for k in ("semantics", "instances")}
        return logs["loss_semantics"] + logs["loss_instances"], logs

    def predict(self, logits: Logits) -> dict[str, jax.Array]:
        sem = from_patches(logits["semantics"], self.input_size, self.patch_size)
        ins = from_patches(logits["instances"], self.input_size, self.patch_size)
        ids = jnp.argmax(ins, axis=-1)
        masks = jax.nn.one_hot(ids, ins.shape[-1], dtype=sem.dtype)  # [B, H, W, I]
        # Each instance takes the class with the largest summed logit over its pixels.
        label = jnp.argmax(jnp.einsum("bhwk,bhwn->bnk", sem, masks), axis=-1)  # [B, I]
        semantics = jnp.take_along_axis(label, ids.reshape(ids.shape[0], -1), axis=1).reshape(ids.shape)
        return {"panoptic": jnp.stack([semantics, ids], axis=-1).astype(jnp.int32)}


@dataclasses.dataclass(frozen=True)
class Depth(Adapter):
    bins: int = 256
    min_depth: float = 1e-3
    max_depth: float = 10.0
    kind: str = "depth"

    def model_inputs(self) -> dict[str, tuple[int, int]]:
        return {"depth": (self.bins, self.pixels)}

    def quantize(self, depth: jax.Array) -> jax.Array:
        d = (depth - self.min_depth) / (self.max_depth - self.min_depth) * self.bins
        return jnp.clip(jnp.floor(d).astype(jnp.int32), 0, self.bins - 1)

    def to_inputs(self, labels: jax.Array) -> dict[str, jax.Array]:
        onehot = jax.nn.one_hot(self.quantize(labels[..., 0].astype(jnp.float32)), self.bins)
        return {"depth": to_patches(onehot, self.patch_size)}

    def per_example_loss(self, logits: Logits, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        onehot = self.to_inputs(labels)["depth"]
        x = _xent(logits["depth"], onehot)
        valid = jnp.argmax(onehot, axis=-2) != 0  # bin 0: pixels without a depth reading
        loss = jnp.sum(x * valid, axis=(1, 2)) / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1)
        return loss, {"loss_depth": loss}

    def predict(self, logits: Logits) -> dict[str, jax.Array]:
        b = jnp.argmax(from_patches(logits["depth"], self.input_size, self.patch_size), axis=-1)
        depth = (b.astype(jnp.float32) + 0.5) / self.bins * (self.max_depth - self.min_depth) + self.min_depth
        return {"depth": depth}


@dataclasses.dataclass(frozen=True)
class Colorization(Adapter):
    kind: str = "colorization"
    label_channels: int = 3

    def model_inputs(self) -> dict[str, tuple[int, int]]:
        return {"color": (3, self.pixels)}

    def to_inputs(self, labels: jax.Array) -> dict[str, jax.Array]:
        return {"color": to_patches(labels.astype(jnp.float32), self.patch_size)}

    def per_example_loss(self, logits: Logits, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        err = jnp.square(logits["color"] - self.to_inputs(labels)["color"])
        loss = jnp.mean(err, axis=(1, 2, 3))
        return loss, {"loss_color": loss}

    def predict(self, logits: Logits) -> dict[str, jax.Array]:
        color = from_patches(logits["color"], self.input_size, self.patch_size)
        return {"color": jnp.clip(color, -1.0, 1.0)}


ADAPTERS: dict[str, Callable[..., Adapter]] = {
    "segmentation": Segmentation,
    "panoptic": Panoptic,
    "depth": Depth,
    "colorization": Colorization,
}


def make_adapter(options: Mapping[str, Any], input_size: Sequence[int], patch_size: Sequence[int]) -> Adapter:
    """The adapter ``options["kind"]`` with the rest of ``options`` (``config.uvim.adapter``)."""
    options = dict(options)
    kind = options.pop("kind", None)
    if kind not in ADAPTERS:
        raise ConfigError(
            f"config.uvim.adapter.kind must be one of {', '.join(ADAPTERS)} (the task's output), got {kind!r}."
        )
    fields = {f.name for f in dataclasses.fields(ADAPTERS[kind]) if f.name not in ("kind", "label_channels")}  # type: ignore[arg-type]
    unknown = sorted(set(options) - fields - {"input_size", "patch_size"})
    if unknown:
        raise ConfigError(
            f"config.uvim.adapter: the {kind} adapter has no option(s) {', '.join(unknown)}; its options: "
            f"{', '.join(sorted(fields - {'input_size', 'patch_size'}))}."
        )
    return ADAPTERS[kind](input_size=tuple(input_size), patch_size=tuple(patch_size), **options)  # type: ignore[arg-type]
