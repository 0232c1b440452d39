"""``PretrainedModel``: a Flax model with its parameters, loadable from and publishable to the Hub.

A model package subclasses it once (``class ViT(PretrainedModel)``), names its
registered model, and may override a few hooks (parameter layout, resolution
changes, timm and big_vision conversion). Everything else is shared:

    model = ViT.from_pretrained("org/name")          # a Hub repo, a local folder, timm or .npz
    logits = model(images)                           # NHWC float32, preprocessed as model.pp says
    logits, out = model(images, return_intermediates=True)
    model.save_pretrained("folder")                  # config.json + model.safetensors + README.md
    model.push_to_hub("org/name")

It builds on ``huggingface_hub.ModelHubMixin`` (``push_to_hub``, model card
metadata); saving and loading are bv's own: safetensors only, no pickle, no
code from a repo ever runs.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from huggingface_hub import ModelHubMixin

from bv.core import failpoints, registry
from bv.core.errors import UserError
from bv.core.hub import source as sources
from bv.core.hub.card import Metric, make_card
from bv.core.hub.config import (
    CONFIG_FILE,
    WEIGHTS_SHA256,
    ConfigFormatError,
    HubConfig,
    check_fields,
    read_json,
    write_config,
)
from bv.core.hub.fit import fit_params, matches_any
from bv.core.hub.weights import (
    DEFAULT_MAX_SHARD_BYTES,
    INDEX_FILE,
    WEIGHTS_FILE,
    file_sha256,
    read_weights,
    write_weights,
)
from bv.core.tree import flatten_with_names, map_with_names, unflatten

Params = Any
T = TypeVar("T", bound="PretrainedModel")
_CONFIG_FIELDS = ("num_classes", "resolution", "pp", "labels", "channels")


class SaveError(UserError, OSError):
    """A model folder could not be written (full disk, no permission); the folder is as it was."""


class PretrainedModel(ModelHubMixin, library_name="bv", tags=["bv", "jax", "flax"]):
    """A model (``module``) with its ``params`` and ``config``; see the module docstring."""

    model_name: ClassVar[str] = ""  # the registered model this class wraps, e.g. "vit"
    package: ClassVar[str] = "bv-core"
    version: ClassVar[str] = ""

    def __init__(self, config: HubConfig, params: Params | None = None, *, seed: int = 0):
        if not isinstance(config, HubConfig):
            raise TypeError(f"config must be a bv.core.hub.HubConfig, got {type(config).__name__}.")
        self.config = config
        self.module: nn.Module = self.build_module(config)
        self.params: Params = params if params is not None else self.init_params(jax.random.PRNGKey(seed))
        module = self.module

        def forward(params: Params, images: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
            logits, out = module.apply({"params": params}, images, train=False)
            return logits, dict(out)

        self._forward = jax.jit(forward)

    # ----------------------------------------------------------------------------------------
    # Building and running
    # ----------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls: type[T],
        *,
        num_classes: int | None = None,
        resolution: int = 224,
        channels: int = 3,
        pp: str = "",
        labels: Sequence[str] | None = None,
        seed: int = 0,
        **model_kwargs: Any,
    ) -> T:
        """A freshly initialised model, e.g. ``ViT.create(variant="Ti/16", num_classes=10, resolution=32)``."""
        check_fields(
            {
                "num_classes": num_classes,
                "resolution": resolution,
                "channels": channels,
                "labels": labels if labels is None or isinstance(labels, str) else list(labels),
            },
            f"{cls.__name__}.create",
        )
        config = HubConfig(
            model_name=cls._registered_name(),
            model=dict(model_kwargs),
            num_classes=num_classes,
            resolution=resolution,
            channels=channels,
            pp=pp,
            labels=list(labels) if labels is not None else None,
            package=cls.package,
            version=cls.version,
        )
        return cls(config, seed=seed)

    @classmethod
    def build_module(cls, config: HubConfig) -> nn.Module:
        """The Flax module ``config`` describes (the registered model factory)."""
        factory = registry.model_factory(config.model_name)
        try:
            return factory(num_classes=config.num_classes, **config.model)  # type: ignore[no-any-return]
        except (TypeError, ValueError) as e:
            raise ConfigFormatError(
                f"The model config {config.model} does not build a '{config.model_name}': {e}"
            ) from e

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return _input_shape(self.config, batch)

    def init_params(self, rng: jax.Array) -> Params:
        """Fresh parameters for this model's config."""
        dummy = jnp.zeros(self.input_shape(), jnp.float32)
        return jax.jit(lambda r: self.module.init({"params": r}, dummy)["params"])(rng)  # type: ignore[no-any-return]

    def __call__(self, images: Any, *, return_intermediates: bool = False) -> Any:
        """Logits (or features, without a head) for an NHWC float batch; with intermediates if asked."""
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] != self.config.channels:
            raise ValueError(
                f"Expected images of shape [batch, height, width, {self.config.channels}] (NHWC), got "
                f"{tuple(images.shape)}. Preprocess them with model.preprocess or the pp string model.pp."
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"Expected float images (preprocessed as model.pp says: {self.pp!r}), got dtype {images.dtype}."
            )
        logits, out = self._forward(self.params, images)
        return (logits, out) if return_intermediates else logits

    def intermediates(self, images: Any) -> dict[str, Any]:
        """The model's named intermediate outputs (``pre_logits``, ``encoded``, per-block outputs, ...)."""
        return dict(self(images, return_intermediates=True)[1])

    def preprocess(self, images: Sequence[Any]) -> np.ndarray:
        """Encoded images (bytes) or uint8 HWC arrays -> the float NHWC batch the model takes, using ``model.pp``."""
        import tensorflow as tf

        from bv.pp.builder import get_preprocess_fn

        ops = [op for op in self.pp.split("|") if op.strip()]
        out = []
        for image in images:
            if isinstance(image, (bytes, bytearray)):
                fn = get_preprocess_fn("|".join(ops))
                tensor = tf.constant(bytes(image))
            else:  # already decoded: skip the decode op
                fn = get_preprocess_fn("|".join(op for op in ops if not op.strip().startswith("decode")))
                tensor = tf.constant(np.asarray(image))
            out.append(np.asarray(fn({"image": tensor})["image"]))
        return np.stack(out)

    @property
    def pp(self) -> str:
        """The bv preprocessing string from an encoded image to this model's input."""
        return self.config.pp

    @property
    def num_classes(self) -> int | None:
        return self.config.num_classes

    @property
    def labels(self) -> list[str] | None:
        return self.config.labels

    # ----------------------------------------------------------------------------------------
    # Hooks a model package may override
    # ----------------------------------------------------------------------------------------

    @classmethod
    def params_to_saved(cls, params: Params, config: HubConfig) -> Params:
        """The parameters in the layout a folder stores (e.g. un-scanned); identity by default."""
        return params

    @classmethod
    def params_from_saved(cls, params: Params, config: HubConfig) -> Params:
        """The inverse of :meth:`params_to_saved` for the layout ``config`` asks for."""
        return params

    @classmethod
    def adapt_param(cls, name: str, value: np.ndarray, shape: tuple[int, ...], config: HubConfig) -> np.ndarray | None:
        """Reshapes a loaded parameter to a new ``shape`` (e.g. resample a posemb), or None if it cannot."""
        return None

    @classmethod
    def config_from_run(cls, config: HubConfig, run_config: Any) -> HubConfig:
        """The Hub config of a model exported from a training run (``bv-export``), given the run's config.

        ``config`` is what the exporter read from any run (model settings, the first classification
        eval's pp); a model whose runs carry more (a text tower's token length) fills it in here.
        """
        return config

    @classmethod
    def from_timm_folder(
        cls, timm_config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
    ) -> tuple[HubConfig, Params]:
        """A (config, params) pair from a timm Hub folder; models without timm support refuse."""
        raise ConfigFormatError(
            f"This folder holds a timm model ({timm_config.get('architecture')!r}); {cls.__name__} cannot convert "
            "timm weights."
        )

    @classmethod
    def from_big_vision(
        cls, flat: Mapping[str, np.ndarray], *, variant: str | None = None, **kwargs: Any
    ) -> tuple[HubConfig, Params]:
        """A (config, params) pair from a big_vision .npz checkpoint's arrays."""
        raise ConfigFormatError(f"{cls.__name__} cannot load big_vision .npz checkpoints.")

    # ----------------------------------------------------------------------------------------
    # Saving and publishing
    # ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters as the flat ``/``-named numpy arrays a folder stores."""
        saved = self.params_to_saved(jax.device_get(self.params), self.config)
        return {name: np.asarray(value) for name, value in flatten_with_names(saved)}

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | Path,
        *,
        config: HubConfig | Mapping[str, Any] | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        max_shard_size: int = DEFAULT_MAX_SHARD_BYTES,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Writes ``config.json``, the safetensors weights and ``README.md`` into ``save_directory``.

        Files are written to a temporary folder first and moved in only when all are complete, so
        an error never leaves a half-written model; files other than a model's own are left alone.
        ``model_card_kwargs`` go to :func:`bv.core.hub.card.make_card` (license, datasets, tags, metrics, ...).
        """
        cfg = self._config_for_save(config)
        folder = Path(save_directory)
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        card_kwargs = dict(model_card_kwargs or {})
        card_kwargs.setdefault("repo_id", repo_id)
        card_kwargs["metrics"] = [m if isinstance(m, Metric) else Metric(**m) for m in card_kwargs.get("metrics", ())]
        card = make_card(
            cfg, class_name=type(self).__name__, module=type(self).__module__.rsplit(".", 1)[0], **card_kwargs
        )
        try:
            with tempfile.TemporaryDirectory(prefix=".bv-save-", dir=folder) as tmp:
                written = write_weights(tmp, self.state_dict(), max_shard_bytes=max_shard_size)
                failpoints.fail_point("hub.save", 0)
                digests = {n: file_sha256(os.path.join(tmp, n)) for n in written if n.endswith(".safetensors")}
                write_config(os.path.join(tmp, CONFIG_FILE), cfg, weights_sha256=digests)
                card.save(os.path.join(tmp, "README.md"))
                stale = [f for f in os.listdir(folder) if _is_weights_file(f) and f not in written]
                for name in [*written, CONFIG_FILE, "README.md"]:
                    os.replace(os.path.join(tmp, name), folder / name)
                for name in stale:  # shards of an earlier, differently sharded save
                    (folder / name).unlink()
        except OSError as e:
            if created:
                try:
                    folder.rmdir()  # nothing of ours is left in it
                except OSError:
                    pass
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                raise
            reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}.get(
                e.errno, "it is not writable"
            )
            raise SaveError(
                f"Could not write the model to {folder}: {reason} ({e.strerror}). The folder is as it was before "
                "(the files are written aside and moved in only when all are complete): free some space or pick "
                "another folder, and save again."
            ) from e
        if push_to_hub:
            return self.push_to_hub(repo_id or folder.name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:  # type: ignore[override]
        """Uploads the model folder to the Hub repo ``repo_id`` (created if needed) in one commit.

        Keyword arguments are ``huggingface_hub.ModelHubMixin.push_to_hub``'s (``token``, ``private``,
        ``commit_message``, ``branch``, ``create_pr``, ``model_card_kwargs``, ...). The token is sent
        to the Hub only; bv never logs it.
        """
        card_kwargs = dict(kwargs.pop("model_card_kwargs", None) or {})
        card_kwargs.setdefault("repo_id", repo_id)
        return str(super().push_to_hub(repo_id, model_card_kwargs=card_kwargs, **kwargs))

    def _config_for_save(self, config: HubConfig | Mapping[str, Any] | None) -> HubConfig:
        if config is None:
            cfg = self.config
        elif isinstance(config, HubConfig):
            cfg = config
        else:
            cfg = HubConfig.from_json({"format": "bv", "format_version": 1, **self.config.to_json(), **config})
        return cfg.replace(package=type(self).package, version=type(self).version)

    # ----------------------------------------------------------------------------------------
    # Loading
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls: type[T],
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        variant: str | None = None,
        seed: int = 0,
        **overrides: Any,
    ) -> T:
        """Loads a model from a Hub repo id, a local folder (bv or timm format) or a big_vision ``.npz``.

        ``revision`` pins a branch, tag or commit of a Hub repo. ``variant`` names a big_vision
        checkpoint's model (e.g. "B/16"). ``overrides`` change the config before loading:
        ``num_classes`` (a new, freshly initialised head), ``resolution`` (the position embedding is
        resampled), ``labels``, ``pp``, ``channels`` or any model keyword argument (``dropout``, ``scan``,
        ``dtype_mm``, ...). ``HF_HUB_OFFLINE=1`` loads from the local cache only.
        """
        src = sources.resolve(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        target_cls, config, params = cls._read_source(src, variant=variant)
        target = target_cls._apply_overrides(config, overrides)
        fitted = target_cls._fit(params, config, target, seed=seed, what=f"The weights of {src.path}")
        return target_cls(target, fitted)  # type: ignore[return-value]

    @classmethod
    def load_params_for(
        cls,
        source: str,
        target: HubConfig,
        init_params: Params,
        *,
        dont_load: Sequence[str] = (),
        revision: str | None = None,
    ) -> Params:
        """``init_params`` (of a model built from ``target``) with the weights of ``source`` loaded in.

        For ``config.model_init``: names matching ``dont_load`` keep their fresh values; a position
        embedding of another resolution is resampled.
        """
        _, config, params = cls._read_source(sources.resolve(source, revision=revision), variant=None)
        if config.model_name != target.model_name:
            raise ConfigFormatError(
                f"{source} holds a '{config.model_name}' model, but the config trains a '{target.model_name}'."
            )
        layout = cls.params_from_saved(cls.params_to_saved(params, config), target)
        flat = dict(flatten_with_names(layout))
        return fit_params(
            flat,
            init_params,
            dont_load=dont_load,
            adapt=lambda n, v, s: cls.adapt_param(n, v, s, target),
            what=f"The weights of {source}",
        )

    @classmethod
    def _read_source(
        cls, src: sources.Source, *, variant: str | None
    ) -> tuple[type[PretrainedModel], HubConfig, Params]:
        """(the class to build, the stored config, the params in that config's layout)."""
        if src.kind == "npz":
            from bv.core.hub.npz import load_npz

            flat = load_npz(src.path, subtree=src.subtree)
            owner = cls._concrete("big_vision .npz checkpoints")
            config, params = owner.from_big_vision(flat, variant=variant)
            return owner, owner._stamp(config), params
        config_path = os.path.join(src.path, CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise ConfigFormatError(
                f"{src.path} has no {CONFIG_FILE}; a bv model folder needs one (written by save_pretrained)."
            )
        data = read_json(config_path)
        if data.get("format") == "bv":
            config = HubConfig.from_json(data, source=config_path)
            owner = cls._class_for(config.model_name, config_path)
            digests = data.get(WEIGHTS_SHA256)
            weights = read_weights(src.path, sha256=digests if isinstance(digests, dict) else None)
            saved = _unflatten(weights)
            return owner, config, owner.params_from_saved(saved, config)
        if "architecture" in data:
            owner = cls._concrete("timm folders")
            config, params = owner.from_timm_folder(data, read_weights(src.path))
            return owner, owner._stamp(config), params
        raise ConfigFormatError(
            f'{config_path} is neither a bv model config ("format": "bv") nor a timm one ("architecture"). '
            "bv loads folders written by save_pretrained, timm folders and big_vision .npz files."
        )

    @classmethod
    def _class_for(cls, model_name: str, where: str) -> type[PretrainedModel]:
        if cls.model_name and cls.model_name == model_name:
            return cls
        if cls.model_name:
            raise ConfigFormatError(
                f"{where} describes a '{model_name}' model, not a '{cls.model_name}' one; load it with that "
                f"model's class (or bv.core.hub.load_model, which picks the class)."
            )
        found: type[PretrainedModel] | None = registry.hub_class(model_name)
        if found is None:
            raise ConfigFormatError(
                f"{where} describes a '{model_name}' model, which has no Hub class; models with one: "
                f"{', '.join(registry.hub_model_names())}."
            )
        return found

    @classmethod
    def _concrete(cls, what: str) -> type[PretrainedModel]:
        if not cls.model_name:
            raise ConfigFormatError(f"Load {what} with a model's class, e.g. bv.vit.ViT.from_pretrained(...).")
        return cls

    @classmethod
    def _registered_name(cls) -> str:
        return cls._concrete("a new model").model_name

    @classmethod
    def _stamp(cls, config: HubConfig) -> HubConfig:
        return config.replace(model_name=cls.model_name, package=cls.package, version=cls.version)

    @classmethod
    def _apply_overrides(cls, config: HubConfig, overrides: Mapping[str, Any]) -> HubConfig:
        top = {k: v for k, v in overrides.items() if k in _CONFIG_FIELDS}
        check_fields(top, f"{cls.__name__}.from_pretrained")
        model = {**config.model, **{k: v for k, v in overrides.items() if k not in _CONFIG_FIELDS}}
        if "num_classes" in top and top["num_classes"] != config.num_classes and "labels" not in top:
            top["labels"] = None  # the old label names describe the old head
        return config.replace(model=model, **top)

    @classmethod
    def _fit(cls, params: Params, source: HubConfig, target: HubConfig, *, seed: int, what: str) -> Params:
        """Params for ``target`` from those of ``source`` (stored config), checked against the model's shapes."""
        layout = cls.params_from_saved(cls.params_to_saved(params, source), target)
        module = cls.build_module(target)
        dont_load = ["head/.*"] if target.num_classes != source.num_classes else []

        def init(x: jax.Array) -> Params:
            return module.init({"params": jax.random.PRNGKey(seed)}, x)["params"]

        dummy = jnp.zeros(_input_shape(target), jnp.float32)
        fresh = jax.eval_shape(init, dummy)  # Shapes are enough to check the loaded weights against.
        if dont_load:
            # Fresh values only where nothing is loaded (the new head). Compiled with only those
            # outputs, XLA drops the rest of the init: a ResNet-50's full init takes ~20 s to compile.
            def fresh_part(x: jax.Array) -> dict[str, jax.Array]:
                return {n: v for n, v in flatten_with_names(init(x)) if matches_any(n, dont_load)}

            values = jax.jit(fresh_part)(dummy)
            fresh = map_with_names(lambda n, s: values.get(n, s), fresh)
        return fit_params(
            dict(flatten_with_names(layout)),
            fresh,
            dont_load=dont_load,
            adapt=lambda n, v, s: cls.adapt_param(n, v, s, target),
            what=what,
        )


def _input_shape(config: HubConfig, batch: int = 1) -> tuple[int, int, int, int]:
    return (batch, config.resolution, config.resolution, config.channels)


def _is_weights_file(name: str) -> bool:
    return name in (WEIGHTS_FILE, INDEX_FILE) or (name.startswith("model-") and name.endswith(".safetensors"))


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    try:
        return unflatten(flat)
    except ValueError as e:
        raise ConfigFormatError(f"The weights' names do not form a tree: {e}") from None


def load_model(source: str, **kwargs: Any) -> PretrainedModel:
    """Loads any bv model folder or Hub repo, picking the class from its config.json (``model_name``)."""
    return PretrainedModel.from_pretrained(source, **kwargs)
