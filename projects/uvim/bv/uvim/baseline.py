"""The task ``uvim_dense``: a plain per-pixel predictor, the baseline UViM is compared with.

A ViT over the image's patches whose head predicts each patch's pixels directly
(``head``: ``DenseGeneral`` to the adapter's ``(C, P)``), trained with the adapter's loss
and evaluated by the same evaluators as UViM's stages (its ``predict`` gives the
adapter's predictions). Config: ``model`` (``patch_size``, ``width``, ``depth``,
``num_heads``, ``mlp_dim``, ``posemb``), ``uvim.adapter`` and ``model.input_size``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bv.core import registry
from bv.core.config import ConfigError
from bv.core.tasks import Batch, Metrics, Params, Task
from bv.uvim.adapters import make_adapter
from bv.uvim.vqvae import grid_of, posemb
from bv.vit.model import Encoder


class DensePredictor(nn.Module):
    outputs: Mapping[str, Sequence[int]]
    input_size: Sequence[int] = (28, 28)
    patch_size: Sequence[int] = (4, 4)
    width: int = 96
    depth: int = 4
    num_heads: int = 3
    mlp_dim: int | None = None
    posemb: str = "learn"

    @nn.compact
    def __call__(self, image: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        grid = grid_of(self.input_size, self.patch_size)
        x = nn.Conv(
            self.width, tuple(self.patch_size), strides=tuple(self.patch_size), padding="VALID", name="embedding"
        )(image)
        x = x.reshape(x.shape[0], -1, self.width) + posemb(self, self.posemb, grid, self.width, "pos_embedding")
        x, _ = Encoder(depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads, name="Transformer")(
            x, deterministic=not train
        )
        return {k: nn.DenseGeneral(tuple(shape), name=f"head_{k}")(x) for k, shape in self.outputs.items()}


@registry.tasks.register("uvim_dense")
class DenseTask(Task):
    """See the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        model = dict(config.get("model", {}))
        if "input_size" not in model or "patch_size" not in model:
            raise ConfigError("config.model.input_size and config.model.patch_size are required by 'uvim_dense'.")
        uvim = config.get("uvim") or {}
        adapter_cfg = uvim.get("adapter", {})
        adapter_cfg = adapter_cfg.to_dict() if hasattr(adapter_cfg, "to_dict") else dict(adapter_cfg)
        self.adapter = make_adapter(adapter_cfg, model["input_size"], model["patch_size"])
        self.model = DensePredictor(outputs=self.adapter.model_inputs(), **model)

    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> Params:
        image = batch_spec["image"]
        self.adapter.check_image(image.shape, "uvim_dense")
        return self.model.init({"params": rng}, jnp.zeros((1, *image.shape[1:]), jnp.float32))["params"]

    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        logits: Any = self.model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
        loss, logs = self.adapter.per_example_loss(logits, batch["labels"])
        return jnp.mean(loss), {k: jnp.mean(v) for k, v in logs.items()}

    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        def predict(params: Params, batch: Batch) -> dict[str, jax.Array]:
            logits: Any = self.model.apply({"params": params}, batch["image"])
            return self.adapter.predict(logits)

        return {"predict": predict}
