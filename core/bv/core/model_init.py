"""Initialise a model from pre-trained parameters (``config.model_init``).

The source may be

- a bv training workdir (its latest checkpoint) or one checkpoint folder;
- a Hub repo id (``org/name``, with ``config.model_load.revision``) or a local
  model folder, in bv's format or timm's;
- a big_vision ``.npz`` checkpoint, optionally ``path.npz:subtree``;
- a dict from a top-level part of the params to a source, to load parts from
  different places, as big_vision's two-tower models do: ``dict(img="runs/vit_mnist")``
  loads only the image tower (``img/...``) and leaves the rest freshly initialised.
  A bv checkpoint fills its part by name; other formats are read by the model's Hub
  class (``load_part_params``). ``dont_load`` patterns that start with ``<part>/``
  apply to that part (``"img/head/.*"``).

Parameters whose names match a ``dont_load`` regex (typically the head,
``head/.*``) keep their fresh initialisation; every other parameter must be in
the source with the same shape, except what the model can adapt (a ViT's
position embedding is resampled to the new resolution).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import ml_collections

from bv.core import checkpoint, registry
from bv.core.config import ConfigError, ConfigTypeError
from bv.core.hub.config import HubConfig
from bv.core.hub.fit import fit_params
from bv.core.tree import flatten_with_names


def bv_checkpoint_path(source: str) -> str | None:
    """The checkpoint folder ``source`` names (a workdir's latest, or a checkpoint itself), else None."""
    if os.path.isdir(os.path.join(source, checkpoint.CHECKPOINTS_DIR)):
        path = checkpoint.latest(source)
        if path is None:
            raise FileNotFoundError(f"config.model_init: the workdir {source!r} has no complete checkpoint.")
        return path
    if os.path.isfile(os.path.join(source, checkpoint.INFO_FILE)):
        return source
    return None


def load_pretrained(
    source: str | Mapping[str, str],
    init_params: Any,
    *,
    dont_load: Sequence[str] = (),
    config: ml_collections.ConfigDict | None = None,
    revision: str | None = None,
) -> Any:
    """``init_params`` with every leaf not matched by ``dont_load`` replaced by the one in ``source``.

    ``config`` (the training config: ``model_name``, ``model``, ``num_classes``) says which model's
    Hub class reads Hub, timm and big_vision sources and adapts shapes; a bv checkpoint needs none.
    """
    hub_cls = _hub_class(config) if config is not None else None
    target = _target_config(config) if config is not None else None
    if isinstance(source, ml_collections.ConfigDict):
        source = source.to_dict()
    if isinstance(source, Mapping):
        return _load_parts(source, init_params, dont_load=dont_load, hub_cls=hub_cls, target=target, revision=revision)
    if not isinstance(source, str):
        raise ConfigTypeError(
            f"config.model_init must be a path or repo id, or a dict from a part of the params to one; got {source!r}."
        )
    ckpt = bv_checkpoint_path(source)
    if ckpt is not None:
        loaded = dict(flatten_with_names(checkpoint.load_params(ckpt)))
        adapt = None
        if hub_cls is not None and target is not None:
            adapt = lambda n, v, s: hub_cls.adapt_param(n, v, s, target)  # noqa: E731
        return fit_params(loaded, init_params, dont_load=dont_load, adapt=adapt, what=f"config.model_init={source!r}")
    if hub_cls is None or target is None:
        raise ConfigError(
            f"config.model_init={source!r} is not a bv checkpoint, and the model "
            f"{config.get('model_name') if config is not None else '(unknown)'!r} has no Hub class to read other "
            "formats (Hub repos, timm folders, big_vision .npz)."
        )
    return hub_cls.load_params_for(source, target, init_params, dont_load=dont_load, revision=revision)


def _load_parts(
    sources: Mapping[str, str],
    init_params: Any,
    *,
    dont_load: Sequence[str],
    hub_cls: Any,
    target: HubConfig | None,
    revision: str | None,
) -> Any:
    """``init_params`` with the parts named in ``sources`` (top-level keys) loaded, each from its own source."""
    params = dict(init_params)
    for part, source in sources.items():
        what = f"config.model_init[{part!r}]={source!r}"
        if part not in params:
            raise ConfigError(f"{what}: the model has no part {part!r}; its top-level params are {sorted(params)}.")
        if not isinstance(source, str):
            raise ConfigTypeError(f"{what}: expected a path or repo id.")
        prefix = part + "/"
        part_dont_load = [p[len(prefix) :] for p in dont_load if p.startswith(prefix)]
        ckpt = bv_checkpoint_path(source)
        if ckpt is not None:
            loaded = dict(flatten_with_names(checkpoint.load_params(ckpt)))
            adapt = None
            if hub_cls is not None and target is not None:
                adapt = lambda n, v, s: hub_cls.adapt_param(prefix + n, v, s, target)  # noqa: E731
            params[part] = fit_params(loaded, params[part], dont_load=part_dont_load, adapt=adapt, what=what)
            continue
        load_part = getattr(hub_cls, "load_part_params", None)
        if load_part is None or target is None:
            raise ConfigError(
                f"{what} is not a bv checkpoint, and the model has no Hub class that reads parts from other formats."
            )
        params[part] = load_part(part, source, target, params[part], dont_load=part_dont_load, revision=revision)
    return params


def _hub_class(config: ml_collections.ConfigDict) -> Any:
    name = config.get("model_name")
    if not name:
        return None
    return registry.hub_class(name) if name in registry.models or _importable(name) else None


def _importable(name: str) -> bool:
    registry.import_model_package(name)
    return name in registry.models


def _target_config(config: ml_collections.ConfigDict) -> HubConfig | None:
    name = config.get("model_name")
    if not name:
        return None
    model = config.get("model", {})
    model = model.to_dict() if isinstance(model, ml_collections.ConfigDict) else dict(model)
    return HubConfig(model_name=name, model=model, num_classes=config.get("num_classes"))
