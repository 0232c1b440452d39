"""The task ``uvim``: UViM's stage II, a language model over the stage-I codes, guided by the image.

    config.task = "uvim"
    config.model = dict(input_size=(28, 28), patch_size=(4, 4), emb_dim=64, num_layers=2, ...)  # bv.uvim.vtt.VTT
    config.oracle = dict(model=..., uvim=dict(adapter=...))   # stage I's model and adapter, as in its config
    config.model_init = dict(oracle="runs/uvim_stage1")        # a stage-I workdir, checkpoint or Hub folder
    config.schedule = [("oracle/.*", None), (".*", dict(decay_type="cosine", warmup_steps=100))]
    config.uvim = dict(sampling=dict(temperature=0.0, top_k=0))  # how "predict" draws codes

The params are the language model's (big_vision's names at the top level) and the
frozen stage-I model under ``oracle/``, which ``config.model_init`` fills from stage I's
run: so a stage-II workdir or export holds everything its predictions need. Each step
encodes the batch's ``labels`` to codes with the oracle and trains the decoder on them by
teacher forcing (softmax cross-entropy over ``dict_size`` codes; token 0 only starts a
sequence). ``after_step`` keeps ``oracle/`` bitwise as loaded, whatever the optimizer
would do to it (weight decay); freeze it in ``config.schedule`` too, to spare its
optimizer state.

``vocab_size`` (``dict_size + 1``) and ``seq_len`` (``code_len``) come from
``config.oracle.model``. A stage-I source whose codebook or code length differs from
``config.oracle.model`` is refused before anything is built (:func:`check_oracle_source`).

Predict functions: ``predict`` (sampled codes decoded by the oracle, the adapter's
predictions), ``code_nll`` (per-example mean negative log-likelihood of the true codes,
for the ``uvim_perplexity`` evaluator), ``oracle`` (the oracle's own reconstruction from
the true codes: the ceiling stage II can reach), ``codes`` (sampled codes).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from bv.core import checkpoint, registry
from bv.core.config import ConfigError
from bv.core.errors import UserError
from bv.core.tasks import Batch, Metrics, Params, StepInfo, Task
from bv.uvim import decode
from bv.uvim.stage1 import Stage1Model, build
from bv.uvim.vtt import VTT

log = logging.getLogger("bv.uvim")
ORACLE = "oracle"


class OracleMismatchError(UserError, ValueError):
    """A stage-I model whose codebook (or code length) is not the one the stage-II config is built for."""


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _source_model(source: str) -> tuple[dict[str, Any], str] | None:
    """The stage-I model settings recorded with ``source`` (a workdir, checkpoint or Hub folder), if any."""
    candidates = [os.path.join(source, "config.json")]
    if os.path.isdir(os.path.join(source, checkpoint.CHECKPOINTS_DIR)):
        pass
    elif os.path.isfile(os.path.join(source, checkpoint.INFO_FILE)):
        # One checkpoint folder: the run's config sits in its workdir, two levels up.
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(source))), "config.json"))
    for path in candidates:
        if os.path.isfile(path):
            with open(path) as f:
                data = json.load(f)
            model = data.get("model")
            if isinstance(model, dict):
                return model, path
    return None


def check_oracle_source(source: Any, oracle_model: Mapping[str, Any]) -> None:
    """Refuses a stage-I source whose ``dict_size`` or ``code_len`` differ from ``config.oracle.model``."""
    if not isinstance(source, str) or not os.path.exists(source):
        return  # a Hub repo id, or missing: model_init reports it
    found = _source_model(source)
    if found is None:
        return
    model, path = found
    for key, what in (("dict_size", "a codebook of"), ("code_len", "codes of length")):
        have, want = model.get(key), oracle_model.get(key)
        if have is not None and want is not None and int(have) != int(want):
            unit = "entries" if key == "dict_size" else "tokens"
            raise OracleMismatchError(
                f"config.model_init['oracle'] = {source!r} is a stage-I model with {what} {have} {unit} "
                f"(model.{key} in {path}), but this stage-II config is built for {want} (config.oracle.model."
                f"{key}; the language model's {'vocabulary is dict_size + 1' if key == 'dict_size' else 'sequence length is code_len'}). "
                f"Set config.oracle.model.{key}={have} to use this stage I, or point config.model_init['oracle'] at a "
                f"stage I trained with {key}={want}."
            )


def lm_kwargs(config: ml_collections.ConfigDict, oracle_model: Mapping[str, Any]) -> dict[str, Any]:
    """``config.model`` with ``vocab_size`` and ``seq_len`` from the oracle (or checked against it)."""
    kw = dict(_plain(config.get("model", {})) or {})
    derived = {
        "vocab_size": int(oracle_model.get("dict_size", 512)) + 1,
        "seq_len": int(oracle_model.get("code_len", 256)),
    }
    for key, value in derived.items():
        if key in kw and int(kw[key]) != value:
            raise ConfigError(
                f"config.model.{key}={kw[key]} does not fit the oracle (config.oracle.model: dict_size "
                f"{value - 1 if key == 'vocab_size' else oracle_model.get('dict_size')}, code_len "
                f"{oracle_model.get('code_len')}): it must be {value}. Leave it unset; it is derived."
            )
        kw[key] = value
    return kw


def split(params: Params) -> tuple[Params, Params]:
    """(the language model's params, the oracle's) of stage II's params."""
    lm = {k: v for k, v in params.items() if k != ORACLE}
    return lm, params[ORACLE]


def draw_codes(model: VTT, lm: Params, images: jax.Array, rng: jax.Array, options: decode.SamplingOptions) -> jax.Array:
    """Codes ``0..dict_size-1`` [B, code_len] (as stage I numbers them) drawn by the language model."""
    tokens, _ = decode.sample(model, lm, images, rng, options)
    return tokens - 1  # token 0 only starts a sequence


@registry.tasks.register("uvim")
class UvimTask(Task):
    """Stage II; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        oracle_cfg = config.get("oracle")
        if oracle_cfg is None:
            raise ConfigError(
                "config.oracle is required by the 'uvim' task: stage I's model and adapter (config.oracle.model, "
                "config.oracle.uvim.adapter), as in the stage-I config."
            )
        oracle_model = dict(_plain(oracle_cfg.get("model", {})) or {})
        model_init = _plain(config.get("model_init"))
        if isinstance(model_init, Mapping) and ORACLE in model_init:
            check_oracle_source(model_init[ORACLE], oracle_model)
        elif not (config.get("uvim") or {}).get("random_oracle", False):
            raise ConfigError(
                "config.model_init must load the stage-I model into the oracle: model_init = dict(oracle=WORKDIR) (a "
                "stage-I workdir, checkpoint or Hub folder). Only smoke tests train against a random oracle, with "
                "config.uvim.random_oracle=True."
            )
        model, adapter = build(oracle_cfg, where="config.oracle")
        ctx_key = (config.get("uvim") or {}).get("ctx_key")
        self.oracle = Stage1Model(model, adapter, ctx_key=ctx_key)
        self.adapter = adapter
        try:
            self.model = VTT(**lm_kwargs(config, oracle_model))
        except TypeError as e:
            raise ConfigError(f"config.model: {e} (see bv.uvim.vtt.VTT for the options).") from None
        sampling = dict(_plain((config.get("uvim") or {}).get("sampling", {})) or {})
        try:
            self.sampling = decode.SamplingOptions(**sampling)
        except TypeError as e:
            raise ConfigError(f"config.uvim.sampling: {e}; options: temperature, top_k.") from None

    # -- params ------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> Params:
        image = batch_spec.get("image")
        if image is None:
            raise ConfigError(f"uvim: the batch has no 'image' (it has {sorted(batch_spec)}).")
        self.adapter.check_image(image.shape, "uvim (stage II's image)")
        rng_lm, rng_oracle = jax.random.split(rng)
        oracle = self.oracle.init(rng_oracle, batch_spec, "uvim (the oracle)")
        codes = jnp.zeros((1, self.model.seq_len), jnp.int32)
        lm = self.model.init({"params": rng_lm}, jnp.zeros((1, *image.shape[1:]), jnp.float32), codes)["params"]
        return {**lm, ORACLE: oracle}

    @staticmethod
    def split(params: Params) -> tuple[Params, Params]:
        return split(params)

    # -- training ----------------------------------------------------------------------------------------------
    def targets(self, oracle: Params, batch: Batch) -> jax.Array:
        """The codes of the batch's labels, as tokens ``1..dict_size``."""
        _, out = self.oracle.encode(oracle, batch["labels"], self.oracle.ctx(batch))
        return jax.lax.stop_gradient(out["code"]).astype(jnp.int32) + 1

    def _nll(
        self, lm: Params, oracle: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        codes = self.targets(oracle, batch)
        logits: Any = self.model.apply({"params": lm}, batch["image"], codes, train=train, rngs={"dropout": rng})
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, codes[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == codes).astype(jnp.float32)
        return nll, correct

    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        lm, oracle = self.split(params)
        nll, correct = self._nll(lm, oracle, batch, rng, train=True)
        return jnp.mean(nll), {"code_accuracy": jnp.mean(correct)}

    def grads(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics, Params]:
        lm, oracle = self.split(params)  # the oracle is frozen: no gradient is taken through it

        def loss(p: Params) -> tuple[jax.Array, Metrics]:
            return self.loss({**p, ORACLE: oracle}, batch, rng)

        (value, metrics), g = jax.value_and_grad(loss, has_aux=True)(lm)
        return value, metrics, {**g, ORACLE: jax.tree.map(jnp.zeros_like, oracle)}

    def after_step(
        self, old_params: Params, params: Params, batch: Batch, rng: jax.Array, info: StepInfo
    ) -> tuple[Params, Metrics]:
        return {**params, ORACLE: old_params[ORACLE]}, {}

    # -- prediction --------------------------------------------------------------------------------------------
    def sample_codes(
        self,
        params: Params,
        images: jax.Array,
        rng: jax.Array | None = None,
        options: decode.SamplingOptions | None = None,
    ) -> jax.Array:
        """Sampled codes ``0..dict_size-1`` [B, code_len] (as stage I numbers them)."""
        self.adapter.check_image(images.shape, "uvim predict")
        lm, _ = self.split(params)
        rng = jax.random.PRNGKey(0) if rng is None else rng
        return draw_codes(self.model, lm, images, rng, options or self.sampling)

    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        def predict(params: Params, batch: Batch) -> dict[str, jax.Array]:
            codes = self.sample_codes(params, batch["image"])
            return self.oracle.predict_codes(params[ORACLE], codes, batch)

        def oracle(params: Params, batch: Batch) -> dict[str, jax.Array]:
            codes = self.targets(params[ORACLE], batch) - 1
            return self.oracle.predict_codes(params[ORACLE], codes, batch)

        def code_nll(params: Params, batch: Batch) -> dict[str, jax.Array]:
            lm, orc = self.split(params)
            nll, correct = self._nll(lm, orc, batch, jax.random.PRNGKey(0), train=False)
            return {"nll": jnp.mean(nll, axis=1), "code_accuracy": jnp.mean(correct, axis=1)}

        def codes(params: Params, batch: Batch) -> jax.Array:
            return self.sample_codes(params, batch["image"])

        return {"predict": predict, "oracle": oracle, "code_nll": code_nll, "codes": codes}
