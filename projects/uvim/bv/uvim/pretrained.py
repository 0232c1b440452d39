"""Stage-II UViM models as Hub folders: ``save_uvim(run, folder)``, ``UvimModel.from_pretrained(folder)``.

A stage-II run holds everything its predictions need (the language model and the frozen
stage I under ``oracle/``), so one folder does too: ``config.json`` (``model_name``
``uvim_vtt``, the language model's settings in ``model``, stage I's model and adapter in
``extra["oracle"]``, the sampling options in ``extra["uvim"]``, the weights' sha256) and
``model.safetensors`` (all params, flat ``/``-joined names). ``UvimModel.predict(images)``
draws codes with the language model and decodes them with the oracle into the adapter's
predictions (a label map, depth, colours), from images preprocessed as in training.
``push_to_hub`` style uploads are ``huggingface_hub.upload_folder`` of that folder.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bv.core import checkpoint
from bv.core.hub.config import CONFIG_FILE, WEIGHTS_SHA256, ConfigFormatError, HubConfig, read_json
from bv.core.hub.weights import read_weights
from bv.core.tree import unflatten
from bv.uvim import decode
from bv.uvim.hub import local_folder, read_run, write_folder
from bv.uvim.stage1 import Stage1Model, build
from bv.uvim.stage2 import ORACLE, draw_codes, lm_kwargs, split
from bv.uvim.version import __version__
from bv.uvim.vtt import VTT

STAGE2_MODEL = "uvim_vtt"


class UvimModel:
    """A trained stage II with its oracle: ``predict(images)`` gives the task's output (see the module docstring)."""

    def __init__(self, config: HubConfig, params: Any):
        if config.model_name != STAGE2_MODEL:
            raise ConfigFormatError(f"A UvimModel needs a {STAGE2_MODEL!r} config, got {config.model_name!r}.")
        oracle_cfg = config.extra.get("oracle")
        if not isinstance(oracle_cfg, dict):
            raise ConfigFormatError("A uvim_vtt config needs extra['oracle']: stage I's model and adapter.")
        uvim = dict(config.extra.get("uvim") or {})
        model, self.adapter = build(ml_collections.ConfigDict(oracle_cfg), where="extra['oracle']")
        self.oracle = Stage1Model(model, self.adapter, ctx_key=uvim.get("ctx_key"))
        self.lm = VTT(**config.model)
        self.sampling = decode.SamplingOptions(**dict(uvim.get("sampling") or {}))
        self.config = config
        self.params = params
        self._predict = jax.jit(self._predict_fn, static_argnums=(3,))

    # -- predictions --------------------------------------------------------------------------------------------
    def _predict_fn(
        self, params: Any, images: jax.Array, rng: jax.Array, options: decode.SamplingOptions
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        lm, oracle = split(params)
        codes = draw_codes(self.lm, lm, images, rng, options)
        return codes, self.oracle.predict_codes(oracle, codes, {"image": images})

    def _run(
        self, images: Any, rng: jax.Array | None, temperature: float | None, top_k: int | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        images = jnp.asarray(images, jnp.float32)
        self.adapter.check_image(images.shape, "UvimModel.predict")
        options = decode.SamplingOptions(
            temperature=self.sampling.temperature if temperature is None else float(temperature),
            top_k=self.sampling.top_k if top_k is None else int(top_k),
        )
        return self._predict(self.params, images, jax.random.PRNGKey(0) if rng is None else rng, options)

    def predict(
        self,
        images: Any,
        *,
        rng: jax.Array | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
    ) -> dict[str, np.ndarray]:
        """The adapter's predictions for ``images`` ``[B, H, W, C]``, with codes drawn as the run did.

        ``temperature`` and ``top_k`` override the stored sampling (0: greedy); ``rng`` seeds it.
        """
        _, out = self._run(images, rng, temperature, top_k)
        return {k: np.asarray(v) for k, v in out.items()}

    def codes(
        self,
        images: Any,
        *,
        rng: jax.Array | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
    ) -> np.ndarray:
        """The drawn codes ``[B, code_len]`` (``0..dict_size-1``) of ``images``."""
        codes, _ = self._run(images, rng, temperature, top_k)
        return np.asarray(codes)

    # -- folders ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str, *, revision: str | None = None) -> UvimModel:
        """Loads a folder written by :meth:`save_pretrained` or :func:`save_uvim`, or a Hub repo holding one."""
        folder = local_folder(source, revision)
        path = os.path.join(folder, CONFIG_FILE)
        if not os.path.isfile(path):
            raise ConfigFormatError(f"{folder} has no {CONFIG_FILE}; expected a folder written by bv.uvim.save_uvim.")
        data = read_json(path)
        config = HubConfig.from_json(data, source=path)
        if config.model_name != STAGE2_MODEL:
            hint = (
                " (a stage I: load it into a stage-II run with config.model_init)"
                if "vqvae" in config.model_name
                else ""
            )
            raise ConfigFormatError(f"{path} holds a {config.model_name!r} model{hint}, not a UViM stage II.")
        flat = read_weights(folder, sha256=data.get(WEIGHTS_SHA256))
        return cls(config, unflatten({k: jnp.asarray(v) for k, v in flat.items()}))

    def save_pretrained(self, folder: str) -> str:
        """Writes ``config.json`` and the weights into ``folder``; files are moved in only once all are written."""
        return write_folder(folder, self.config, self.params)


def save_uvim(source: str, folder: str) -> str:
    """Writes the stage-II run ``source`` (a workdir or checkpoint) as a Hub folder; returns ``folder``."""
    ckpt, run_config = read_run(source, "uvim")
    oracle = dict(run_config.get("oracle") or {})
    uvim = dict(run_config.get("uvim") or {})
    config = HubConfig(
        model_name=STAGE2_MODEL,
        model=lm_kwargs(ml_collections.ConfigDict(run_config), oracle.get("model", {})),
        resolution=int(dict(run_config.get("model") or {}).get("input_size", (224,))[0]),
        package="bv-uvim",
        version=__version__,
        extra={
            "oracle": oracle,
            "uvim": {k: uvim[k] for k in ("sampling", "ctx_key") if k in uvim},
            "source": os.path.abspath(source),
        },
    )
    params = checkpoint.load_params(ckpt)
    if ORACLE not in params:
        raise ValueError(f"{source!r} has no oracle/ params; a stage-II checkpoint holds its stage I there.")
    return UvimModel(config, params).save_pretrained(folder)
