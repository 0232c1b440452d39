"""Teachers for distillation: pretrained models loaded once, frozen, and run beside the student.

A teacher comes from anything bv loads a model from: a bv training workdir (its latest
checkpoint), a bv model folder or Hub repo, or, with ``model_name``, whatever that model's
Hub class reads (a timm folder, a big_vision ``.npz``). Its parameters are placed on every
device once and reach the compiled step and evaluators as an argument (the task's
``frozen()``; closed over, JAX would compile them in as constants), so they are neither
trained nor written into the student's checkpoints; a resumed run loads the teacher again.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bv.core import checkpoint, registry
from bv.core.config import ConfigError
from bv.core.hub.model import PretrainedModel, load_model
from bv.core.model_init import bv_checkpoint_path

# What a teacher entry of config.teachers may set.
TEACHER_KEYS = ("init", "model_name", "model", "resolution", "revision")


@dataclasses.dataclass
class Teacher:
    """A loaded, frozen teacher: ``logits(images)`` at any input size (resized to its ``resolution``)."""

    name: str
    model: PretrainedModel
    params: Any  # replicated on every device

    @property
    def resolution(self) -> int:
        return int(self.model.config.resolution)

    @property
    def num_classes(self) -> int | None:
        return self.model.config.num_classes

    def logits(self, params: Any, images: jax.Array) -> jax.Array:
        """The teacher's logits of the student's batch: the same pixels, resized to the teacher's resolution.

        ``params`` are the teacher's (``self.params``, or the traced argument that carries them
        into a compiled function: see ``DistillTask.frozen``).
        """
        if images.shape[1:3] != (self.resolution, self.resolution):
            shape = (images.shape[0], self.resolution, self.resolution, images.shape[3])
            images = jax.image.resize(images, shape, method="bilinear", antialias=True)
        logits, _ = self.model.module.apply({"params": params}, images, train=False)
        return jax.lax.stop_gradient(logits.astype(jnp.float32))


def load_teacher(name: str, spec: Mapping[str, Any], *, channels: int | None = None) -> Teacher:
    """Loads the teacher ``config.teachers[name]``; every mistake is a ConfigError before training starts."""
    where = f"config.teachers[{name!r}]"
    spec = dict(spec)
    unknown = sorted(set(spec) - set(TEACHER_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; allowed: {', '.join(TEACHER_KEYS)}.")
    source = spec.get("init")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"{where} needs init=<a bv workdir, a model folder or Hub repo, or a timm/.npz source>.")
    model = _load(source, spec, where)
    resolution = spec.get("resolution")
    if resolution is not None and int(resolution) != model.config.resolution:
        model = _at_resolution(model, int(resolution), where)
    if channels is not None and model.config.channels != channels:
        raise ConfigError(
            f"{where}: the teacher takes {model.config.channels}-channel images, the student's data has {channels}."
        )
    _check_runs(model, where)
    replicated = NamedSharding(Mesh(np.asarray(jax.devices()), ("devices",)), PartitionSpec())
    params = checkpoint.put_global(jax.device_get(model.params), jax.tree.map(lambda _: replicated, model.params))
    return Teacher(name, model, params)


def _load(source: str, spec: Mapping[str, Any], where: str) -> PretrainedModel:
    from bv.core import export

    try:
        if os.path.isdir(source) and bv_checkpoint_path(source) is not None:
            return export.build_model(source)[0]  # type: ignore[no-any-return]
        model_name = spec.get("model_name")
        if model_name:
            hub_cls = registry.hub_class(model_name)
            if hub_cls is None:
                raise ConfigError(f"{where}: the model {model_name!r} has no Hub class to load a teacher with.")
            return hub_cls.from_pretrained(source, revision=spec.get("revision"), **dict(spec.get("model") or {}))
        return load_model(source, revision=spec.get("revision"))
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"{where}: cannot load the teacher from {source!r}: {e} Expected a bv workdir with a checkpoint, a bv "
            "model folder or Hub repo, or (with model_name) a timm folder or big_vision .npz."
        ) from e


def _at_resolution(model: PretrainedModel, resolution: int, where: str) -> PretrainedModel:
    """The teacher re-fitted to another input resolution (a ViT's position embedding resampled)."""
    target = dataclasses.replace(model.config, resolution=resolution)
    try:
        params = type(model)._fit(model.params, model.config, target, seed=0, what=f"{where} at {resolution} px")
        return type(model)(target, params)
    except Exception as e:  # resampling a position embedding to nothing fails deep inside; name the cause here
        raise ConfigError(
            f"{where}: the teacher cannot run at resolution {resolution} ({type(e).__name__}: {e}); give a "
            "resolution its patches tile and its position embedding can be resampled to."
        ) from e


def _check_runs(model: PretrainedModel, where: str) -> None:
    """Traces the teacher once on its input shape, so a misfit fails now and not at the first step."""
    images = jax.ShapeDtypeStruct(model.input_shape(), jnp.float32)
    try:
        jax.eval_shape(lambda p, x: model.module.apply({"params": p}, x, train=False), model.params, images)
    except Exception as e:  # a module's shape error has no common type; report it with the teacher's name
        raise ConfigError(
            f"{where}: the teacher does not run on {model.config.resolution} px images: {type(e).__name__}: {e}"
        ) from e
