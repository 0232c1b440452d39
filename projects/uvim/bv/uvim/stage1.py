"""The task ``uvim_vqvae``: UViM's stage I, the VQ-VAE oracle, trained by the one bv trainer.

    config.task = "uvim_vqvae"
    config.model = dict(input_size=(28, 28), patch_size=(4, 4), code_len=16, width=64, ...)  # bv.uvim.vqvae.VQVAE
    config.uvim = dict(
        adapter=dict(kind="segmentation", num_classes=11, image_channels=1),  # bv.uvim.adapters
        dict_momentum=0.995,  # the codebook's moving average
        min_count=0.1,        # a codeword whose discounted count falls below this is restarted
        w_commitment=0.0,     # weight of the commitment loss (big_vision's UViM configs: 0)
        freeze_dict=False,    # True: the codebook keeps its values
    )

The batch holds ``labels`` (the task output in image layout) and, for a model guided
by the image (``with_encoder_ctx`` / ``with_decoder_ctx``), ``image_ctx`` or else
``image``. The params are the model's, plus ``state/dictionary`` and ``state/counts``:
the codebook, which the optimizer's gradient never moves (it is zero) and which
:meth:`after_step` sets from the step's batch (``bv.uvim.codebook``). Logged each step:
``loss_rec``, ``loss_commitment``, the batch's code usage (``codebook_zeros_ratio``,
``codebook_max_ratio``, ``codebook_perplexity``) and ``codebook_restarts``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from bv.core import registry
from bv.core.config import ConfigError
from bv.core.tasks import Batch, Metrics, Params, StepInfo, Task
from bv.uvim import codebook
from bv.uvim.adapters import Adapter, make_adapter
from bv.uvim.vqvae import VQVAE

STATE = "state"  # the params' subtree that holds the codebook (big_vision's "state" collection)


@dataclasses.dataclass(frozen=True)
class CodebookOptions:
    dict_momentum: float = 0.995
    min_count: float = 0.1
    w_commitment: float = 0.0
    freeze_dict: bool = False


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def model_kwargs(config: ml_collections.ConfigDict | Mapping[str, Any], adapter: Adapter) -> dict[str, Any]:
    """``config.model`` with ``inputs``/``outputs`` filled in from the adapter (or checked against it)."""
    kw = dict(_plain(config.get("model", {})) or {})
    wanted = {k: tuple(v) for k, v in adapter.model_inputs().items()}
    for key in ("inputs", "outputs"):
        given = kw.get(key)
        if given is not None and {k: tuple(v) for k, v in dict(given).items()} != wanted:
            raise ConfigError(
                f"config.model.{key} = {dict(given)} does not match the {adapter.kind} adapter, which produces "
                f"{wanted}. Leave config.model.{key} unset (the adapter fills it in) or fix the adapter's options."
            )
        kw[key] = wanted
    return kw


def build(config: ml_collections.ConfigDict | Mapping[str, Any], where: str = "config") -> tuple[VQVAE, Adapter]:
    """The stage-I model and its adapter from a config's ``model`` and ``uvim.adapter``."""
    model_cfg = dict(_plain(config.get("model", {})) or {})
    for key in ("input_size", "patch_size"):
        if key not in model_cfg:
            raise ConfigError(f"{where}.model.{key} is required by the UViM VQ-VAE.")
    uvim = dict(_plain(config.get("uvim", {})) or {})
    adapter = make_adapter(uvim.get("adapter", {}), model_cfg["input_size"], model_cfg["patch_size"])
    try:
        model = VQVAE(**model_kwargs(config, adapter))
    except TypeError as e:
        raise ConfigError(f"{where}.model: {e} (see bv.uvim.vqvae.VQVAE for the options).") from None
    return model, adapter


def codebook_options(config: ml_collections.ConfigDict) -> CodebookOptions:
    uvim = dict(_plain(config.get("uvim", {})) or {})
    known = {f.name for f in dataclasses.fields(CodebookOptions)}
    opts = CodebookOptions(**{k: v for k, v in uvim.items() if k in known})
    if not 0.0 <= opts.dict_momentum < 1.0:
        raise ConfigError(f"config.uvim.dict_momentum must be in [0, 1), got {opts.dict_momentum}.")
    if opts.min_count < 0:
        raise ConfigError(f"config.uvim.min_count must be >= 0, got {opts.min_count}.")
    return opts


def split_state(params: Params) -> tuple[Params, Params]:
    """``(model params, codebook state)`` from the task's params."""
    params = dict(params)
    state = params.pop(STATE)
    return params, state


class Stage1Model:
    """The stage-I model bound to its adapter: encode labels to codes, decode codes to predictions.

    Stage II uses it as its frozen oracle, from the oracle's params (model + ``state``).
    """

    def __init__(self, model: VQVAE, adapter: Adapter, ctx_key: str | None = None):
        self.model, self.adapter = model, adapter
        self.guided = model.with_encoder_ctx or model.with_decoder_ctx
        self.ctx_key = ctx_key

    def ctx(self, batch: Mapping[str, jax.Array]) -> jax.Array | None:
        """The image that guides the model: ``batch[ctx_key]``, else ``image_ctx``, else ``image``."""
        if not self.guided:
            return None
        for key in (self.ctx_key, "image_ctx", "image"):
            if key and key in batch:
                return batch[key]
        raise KeyError(
            f"The guided VQ-VAE needs the image in the batch ('image_ctx' or 'image'); it has {sorted(batch)}."
        )

    def variables(self, params: Params) -> dict[str, Any]:
        model_params, state = split_state(params)
        return {"params": model_params, STATE: state}

    def encode(
        self,
        params: Params,
        labels: jax.Array,
        ctx: jax.Array | None,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        rngs = {"dropout": rng} if rng is not None else {}
        return self.model.apply(  # type: ignore[no-any-return,return-value]
            self.variables(params),
            self.adapter.to_inputs(labels),
            ctx=ctx,
            train=train,
            rngs=rngs,
            method=VQVAE.encode,
        )

    def decode_codes(self, params: Params, codes: jax.Array, ctx: jax.Array | None) -> dict[str, jax.Array]:
        logits, _ = self.model.apply(self.variables(params), codes, ctx=ctx, discrete_input=True, method=VQVAE.decode)
        return logits  # type: ignore[no-any-return,return-value]

    def predict_codes(self, params: Params, codes: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """The adapter's predictions (a label map, depth, colours) from ``codes``, guided by ``batch``'s image."""
        return self.adapter.predict(self.decode_codes(params, codes, self.ctx(batch)))

    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct], where: str) -> Params:
        labels_spec = batch_spec.get("labels")
        if labels_spec is None:
            raise ConfigError(
                f"{where}: the batch has no 'labels' (it has {sorted(batch_spec)}); the pp string must "
                "produce the task output as 'labels'."
            )
        self.adapter.check_labels(labels_spec.shape, where)
        ctx = None
        if self.guided:
            ctx_spec = next(
                (batch_spec[k] for k in (self.ctx_key, "image_ctx", "image") if k and k in batch_spec), None
            )
            if ctx_spec is None:
                raise ConfigError(
                    f"{where}: the model is guided by the image (with_*_ctx) but the batch has no "
                    f"'image_ctx' or 'image' (it has {sorted(batch_spec)})."
                )
            self.adapter.check_image(ctx_spec.shape, where)
            ctx = jnp.zeros((1, *ctx_spec.shape[1:]), jnp.float32)
        labels = jnp.zeros((1, *labels_spec.shape[1:]), labels_spec.dtype)
        variables = self.model.init({"params": rng}, self.adapter.to_inputs(labels), ctx=ctx)
        return {**variables["params"], STATE: variables[STATE]}


@registry.tasks.register("uvim_vqvae")
class VqvaeTask(Task):
    """Stage I: reconstruct the task output through the codes; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        model, adapter = build(config)
        self.oracle = Stage1Model(model, adapter, ctx_key=(config.get("uvim") or {}).get("ctx_key"))
        self.model, self.adapter = model, adapter
        self.opts = codebook_options(config)

    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> Params:
        return self.oracle.init(rng, batch_spec, "uvim_vqvae")

    def _forward(self, params: Params, batch: Batch, rng: jax.Array, train: bool) -> tuple[Any, dict[str, Any]]:
        labels = batch["labels"]
        return self.model.apply(  # type: ignore[no-any-return,return-value]
            self.oracle.variables(params),
            self.adapter.to_inputs(labels),
            ctx=self.oracle.ctx(batch),
            train=train,
            rngs={"dropout": rng},
        )

    def _losses(self, params: Params, batch: Batch, rng: jax.Array, train: bool) -> tuple[jax.Array, dict, dict]:
        logits, out = self._forward(params, batch, rng, train)
        rec, logs = self.adapter.per_example_loss(logits, batch["labels"])
        commitment = jnp.mean(jnp.square(out["bottleneck"] - jax.lax.stop_gradient(out["bottleneck_q"])), axis=(1, 2))
        return rec + self.opts.w_commitment * commitment, {**logs, "loss_rec": rec, "loss_commitment": commitment}, out

    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        per_example, logs, out = self._losses(params, batch, rng, train=True)
        counts, _ = codebook.batch_statistics(out["bottleneck"], out["code"], self.model.dict_size)
        metrics = {k: jnp.mean(v) for k, v in logs.items()}
        return jnp.mean(per_example), {**metrics, **codebook.usage_metrics(counts)}

    def grads(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics, Params]:
        # The codebook takes no gradient step: differentiate the model's params only.
        model_params, state = split_state(params)

        def loss(p: Params) -> tuple[jax.Array, Metrics]:
            return self.loss({**p, STATE: state}, batch, rng)

        (value, metrics), g = jax.value_and_grad(loss, has_aux=True)(model_params)
        return value, metrics, {**g, STATE: jax.tree.map(jnp.zeros_like, state)}

    def after_step(
        self, old_params: Params, params: Params, batch: Batch, rng: jax.Array, info: StepInfo
    ) -> tuple[Params, Metrics]:
        """The codebook's moving-average update from the step's batch (encoded at ``old_params``), then restarts."""
        old_state = old_params[STATE]
        if self.opts.freeze_dict:
            return {**params, STATE: old_state}, {}
        _, out = self.oracle.encode(old_params, batch["labels"], self.oracle.ctx(batch), train=True, rng=rng)
        counts, sums = codebook.batch_statistics(out["bottleneck"], out["code"], self.model.dict_size)
        state = codebook.ema_update(
            codebook.CodebookState(old_state["dictionary"], old_state["counts"]), counts, sums, self.opts.dict_momentum
        )
        state, restarts = codebook.restart_dead_codes(state, jax.random.fold_in(rng, 0x0DEAD), self.opts.min_count)
        new_state = {"dictionary": state.dictionary, "counts": state.counts}
        return {**params, STATE: new_state}, {"codebook_restarts": restarts.astype(jnp.float32)}

    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        def predict(params: Params, batch: Batch) -> dict[str, jax.Array]:
            logits, _ = self._forward(params, batch, jax.random.PRNGKey(0), train=False)
            return self.adapter.predict(logits)

        def validation(params: Params, batch: Batch) -> dict[str, jax.Array]:
            _, logs, _ = self._losses(params, batch, jax.random.PRNGKey(0), train=False)
            return logs

        def codes(params: Params, batch: Batch) -> jax.Array:
            _, out = self.oracle.encode(params, batch["labels"], self.oracle.ctx(batch))
            return out["code"]  # type: ignore[no-any-return,return-value]

        return {"predict": predict, "validation": validation, "codes": codes}
