"""Load a Hugging Face transformers ``SiglipModel`` (``config.json`` + safetensors) as a bv ``TwoTowerModel``.

    from bv.lit import TwoTowerModel
    model = TwoTowerModel.from_pretrained("google/siglip-base-patch16-224")   # or a local folder
    config, params = from_transformers_siglip("folder")                      # the conversion alone

No torch and no transformers are imported: the weights are read as numpy arrays
(``safetensors`` with the numpy framework) and renamed into bv's two-tower layout:

* ``vision_model`` -> ``img/``: a bv ViT with ``pool_type="map"`` and no head (SigLIP's image
  embedding is the attention-pooled output itself). ``patch_embedding`` (OIHW conv) ->
  ``embedding`` (HWIO), ``position_embedding`` -> ``pos_embedding``, ``encoder.layers.{i}`` ->
  ``Transformer/encoderblock_{i}``, ``post_layernorm`` -> ``Transformer/encoder_norm`` and
  ``head`` (probe + ``torch.nn.MultiheadAttention`` with a fused ``in_proj``) -> ``MAPHead_0``;
* ``text_model`` -> ``txt/``: bv's ``TextTransformer`` with ``last`` pooling (transformers too
  pools the last position and, by default, masks nothing). ``token_embedding`` -> ``Embed_0``,
  ``encoder`` -> ``Encoder_0``, ``final_layer_norm`` -> ``Encoder_0/encoder_norm``, ``head`` ->
  ``head`` (the text projection);
* ``logit_scale`` -> ``t`` (both the log temperature) and ``logit_bias`` -> ``b``.

Sizes are read from the weights' shapes and checked against the config's entries where it has
them (transformers writes only some); the number of heads, the GELU flavour and the LayerNorm
epsilon come from the config (transformers' defaults: 12 heads, ``gelu_pytorch_tanh``, 1e-6).
bv's LayerNorms use flax's epsilon 1e-6 with no setting for another, so a config asking for
another epsilon is refused. transformers takes NCHW ``pixel_values``; bv takes NHWC images. The
model's ``pp`` is big_vision's SigLIP preprocessing (``resize`` to the model's resolution, values
in [-1, 1]); transformers' ``SiglipImageProcessor`` resizes bicubically instead.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bv.core.hub.config import CONFIG_FILE, ConfigFormatError, HubConfig, read_json
from bv.core.hub.weights import WeightsError, read_weights
from bv.vit.model import VARIANTS

__all__ = ["SUPPORTED_MODEL_TYPES", "from_transformers_siglip", "is_transformers_siglip", "transformers_model_type"]

Params = Any
SUPPORTED_MODEL_TYPES = ("siglip",)  # transformers' SiglipModel
PP = "decode|resize({res})|value_range(-1, 1)"  # big_vision's SigLIP preprocessing

# transformers' activation names -> bv's approximate_gelu (tanh approximation or the exact erf GELU).
_GELU = {"gelu_pytorch_tanh": True, "gelu_new": True, "gelu_fast": True, "gelu": False, "gelu_python": False}
_LN_EPS = 1e-6  # flax.linen.LayerNorm's, which bv's ViT and text transformer use
_DEFAULT_HEADS = 12  # SiglipVisionConfig / SiglipTextConfig defaults
_DEFAULT_ACT = "gelu_pytorch_tanh"
_BUFFER_RE = re.compile(r".*\.position_ids")  # non-trainable buffers that older checkpoints saved


def transformers_model_type(folder: str | os.PathLike[str]) -> str | None:
    """The ``model_type`` of a transformers ``config.json`` in ``folder``; None for anything else.

    A bv folder (``"format": "bv"``), a timm one, a folder without a config or with an unreadable one
    all give None.
    """
    path = os.path.join(os.fspath(folder), CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        data = read_json(path)
    except ConfigFormatError:
        return None
    model_type = data.get("model_type")
    if data.get("format") == "bv" or not isinstance(model_type, str):
        return None
    return model_type


def is_transformers_siglip(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a transformers ``SiglipModel`` config (``model_type`` "siglip")."""
    return transformers_model_type(folder) in SUPPORTED_MODEL_TYPES


def from_transformers_siglip(
    source: str | os.PathLike[str] | tuple[Mapping[str, Any], Mapping[str, Any]],
) -> tuple[HubConfig, Params]:
    """(``TwoTowerModel`` config, params) of a transformers ``SiglipModel``.

    ``source`` is a folder (``config.json`` and ``model.safetensors``, or sharded safetensors with
    their index) or a pair ``(config dict, state dict)``: the ``config.json`` contents and a mapping
    from transformers' parameter names to arrays (numpy, or anything ``np.asarray`` converts).
    The params are nested dicts of float32 numpy arrays in bv's un-scanned layout.
    """
    hf_config: Mapping[str, Any]
    state: Mapping[str, Any]
    if isinstance(source, (str, os.PathLike)):
        folder = os.fspath(source)
        where = folder
        config_path = os.path.join(folder, CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise ConfigFormatError(f"{folder} has no {CONFIG_FILE}: not a transformers model folder.")
        hf_config = read_json(config_path)
        _check_model_type(hf_config, config_path)
        state = _read_state(folder)
    else:
        hf_config, state = source
        where = "the given state dict"
        if not isinstance(hf_config, Mapping):
            raise ConfigFormatError(f"Expected a transformers config dict, got {type(hf_config).__name__}.")
        _check_model_type(hf_config, "the given config")
    sd = _StateDict(state, where)
    vision = _sub_config(hf_config, "vision_config")
    text = _sub_config(hf_config, "text_config")
    if vision.get("vision_use_head", True) is False:
        raise ConfigFormatError(
            "The SigLIP vision config has vision_use_head=false: its image tower has no attention-pooling head, "
            "so it gives no image embedding (transformers' SiglipModel needs one). Only SigLIP models with the "
            "head convert."
        )

    img_params, img_kwargs, resolution, channels, img_dim = _vision_tower(sd, vision)
    txt_params, txt_kwargs, text_len, txt_dim = _text_tower(sd, text)
    if img_dim != txt_dim:
        raise ConfigFormatError(
            f"The SigLIP image embedding has size {img_dim} (vision hidden_size) but the text projection gives "
            f"{txt_dim} (text projection_size): the two cannot be compared."
        )
    t = sd.get("logit_scale", (1,))
    b = sd.get("logit_bias", (1,))
    sd.check_all_used()

    params = {"img": img_params, "txt": txt_params, "t": t, "b": b}
    model: dict[str, Any] = {
        "image_model": "vit",
        "image": img_kwargs,
        "text_model": "text_transformer",
        "text": txt_kwargs,
        "out_dim": [None, txt_dim],  # the image embedding is the MAP head's output, as in transformers
        "temperature_init": float(np.exp(np.float64(t[0]))),
        "bias_init": float(b[0]),
        "text_len": text_len,
    }
    extra: dict[str, Any] = {"converted_from": "transformers SiglipModel"}
    if isinstance(hf_config.get("transformers_version"), str):
        extra["transformers_version"] = hf_config["transformers_version"]
    config = HubConfig(
        model_name="two_towers",
        model=model,
        resolution=resolution,
        channels=channels,
        pp=PP.format(res=resolution),
        extra=extra,
    )
    return config, params


# ---------------------------------------------------------------------------------------- reading


def _check_model_type(hf_config: Mapping[str, Any], where: str) -> None:
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigFormatError(
            f"{where} describes a transformers model of type {model_type!r}; bv-lit converts only "
            f"{', '.join(repr(t) for t in SUPPORTED_MODEL_TYPES)} (transformers' SiglipModel, both towers). "
            "Other transformers models (CLIP, SigLIP 2, BERT, ...) are not converted."
        )


def _read_state(folder: str) -> dict[str, np.ndarray]:
    try:
        return read_weights(folder)
    except WeightsError as e:
        raise WeightsError(
            f"{folder} holds a transformers SigLIP config.json, but its weights cannot be read: {e} "
            "bv reads safetensors only (transformers' save_pretrained writes model.safetensors)."
        ) from e
    except TypeError as e:  # numpy has no bfloat16
        raise WeightsError(
            f"The weights in {folder} have a dtype numpy cannot read ({e}), e.g. bfloat16. Save them as float32 "
            "first (in transformers: model.float().save_pretrained(folder))."
        ) from e


def _sub_config(hf_config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    sub = hf_config.get(key) or {}
    if not isinstance(sub, Mapping):
        raise ConfigFormatError(f"The SigLIP config's {key} must be an object, got {type(sub).__name__}.")
    return sub


class _StateDict:
    """transformers' flat state dict; remembers what was read so that leftovers can be reported."""

    def __init__(self, state: Mapping[str, Any], where: str) -> None:
        self._state = {str(k): v for k, v in state.items() if not _BUFFER_RE.fullmatch(str(k))}
        self._where = where
        self.unused = set(self._state)

    def shape(self, name: str, ndim: int) -> tuple[int, ...]:
        shape = tuple(int(s) for s in np.shape(self._value(name)))
        if len(shape) != ndim:
            raise ConfigFormatError(f"The SigLIP weight {name} has shape {shape}; expected {ndim} dimensions.")
        return shape

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        value = np.asarray(self._value(name), dtype=np.float32)
        if value.shape != shape:
            raise ConfigFormatError(
                f"The SigLIP weight {name} has shape {value.shape}, but the model's other weights and config "
                f"need {shape}: the checkpoint is inconsistent or not a plain SiglipModel."
            )
        self.unused.discard(name)
        return value

    def layers(self, prefix: str) -> int:
        """The number of ``{prefix}.{i}.`` blocks, checked to be numbered 0..n-1."""
        pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
        found = {int(m.group(1)) for k in self._state if (m := pattern.match(k))}
        if not found:
            raise ConfigFormatError(f"The SigLIP weights ({self._where}) have no {prefix}.0...: no encoder layers.")
        if found != set(range(len(found))):
            raise ConfigFormatError(f"The SigLIP encoder layers {prefix}.* are numbered {sorted(found)}, not 0..n-1.")
        return len(found)

    def check_all_used(self) -> None:
        if self.unused:
            names = sorted(self.unused)
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            raise ConfigFormatError(
                f"The SigLIP weights ({self._where}) hold tensors a SiglipModel does not have: "
                f"{', '.join(names[:10])}{more}. Not a plain transformers SiglipModel."
            )

    def _value(self, name: str) -> Any:
        if name not in self._state:
            raise ConfigFormatError(
                f"The SigLIP weights ({self._where}) have no {name!r}: not a complete transformers SiglipModel."
            )
        return self._state[name]


def _setting(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def _check_size(cfg: Mapping[str, Any], key: str, actual: int, tower: str) -> None:
    """A config entry that the weights also determine must agree with them."""
    value = cfg.get(key)
    if value is None:
        return
    if isinstance(value, (list, tuple)) and len(set(value)) == 1:
        value = value[0]
    if value != actual:
        raise ConfigFormatError(
            f"The SigLIP {tower} config says {key}={value!r}, but the weights have {actual}: config.json and the "
            "weights do not belong together."
        )


def _activation(cfg: Mapping[str, Any], tower: str) -> bool:
    act = _setting(cfg, "hidden_act", _DEFAULT_ACT)
    if act not in _GELU:
        raise ConfigFormatError(
            f"The SigLIP {tower} tower uses hidden_act={act!r}; bv's transformer MLP computes only GELU "
            f"({', '.join(sorted(_GELU))})."
        )
    return _GELU[act]


def _check_eps(cfg: Mapping[str, Any], tower: str) -> None:
    eps = _setting(cfg, "layer_norm_eps", _LN_EPS)
    if not math.isclose(float(eps), _LN_EPS, rel_tol=1e-9, abs_tol=0.0):
        raise ConfigFormatError(
            f"The SigLIP {tower} tower uses layer_norm_eps={eps}; bv's ViT and text transformer LayerNorms use "
            f"flax's {_LN_EPS} and have no setting for another, so the outputs would differ."
        )


def _heads(cfg: Mapping[str, Any], width: int, tower: str) -> int:
    heads = _setting(cfg, "num_attention_heads", _DEFAULT_HEADS)
    if not isinstance(heads, int) or heads <= 0 or width % heads:
        raise ConfigFormatError(
            f"The SigLIP {tower} config has num_attention_heads={heads!r}, which does not divide its width {width}."
        )
    return heads


def _sizes(width: int, depth: int, mlp_dim: int, heads: int) -> tuple[str | None, dict[str, Any]]:
    """(ViT size name, or None), and the explicit sizes."""
    sizes = {"width": width, "depth": depth, "mlp_dim": mlp_dim, "num_heads": heads}
    name = next((n for n, v in VARIANTS.items() if v == (width, depth, mlp_dim, heads)), None)
    return name, sizes


# ---------------------------------------------------------------------------------------- towers


def _dense(sd: _StateDict, prefix: str, d_in: int, d_out: int) -> dict[str, np.ndarray]:
    return {"kernel": sd.get(f"{prefix}.weight", (d_out, d_in)).T.copy(), "bias": sd.get(f"{prefix}.bias", (d_out,))}


def _norm(sd: _StateDict, prefix: str, width: int) -> dict[str, np.ndarray]:
    return {"scale": sd.get(f"{prefix}.weight", (width,)), "bias": sd.get(f"{prefix}.bias", (width,))}


def _mlp(sd: _StateDict, prefix: str, width: int, mlp_dim: int) -> dict[str, Any]:
    return {
        "Dense_0": _dense(sd, f"{prefix}.fc1", width, mlp_dim),
        "Dense_1": _dense(sd, f"{prefix}.fc2", mlp_dim, width),
    }


def _flax_attention(
    qkv: list[tuple[np.ndarray, np.ndarray]], out: tuple[np.ndarray, np.ndarray], heads: int
) -> dict[str, Any]:
    """flax ``MultiHeadDotProductAttention`` params from torch Linear (weight [out, in], bias) pairs.

    Each head takes a contiguous slice of the projected features in both libraries, so the
    q/k/v kernels are ``W.T`` reshaped to [D, heads, head_dim] and the output kernel to [heads, head_dim, D].
    """
    width = out[0].shape[0]
    head_dim = width // heads
    params: dict[str, Any] = {}
    for name, (w, b) in zip(("query", "key", "value"), qkv):
        params[name] = {"kernel": w.T.reshape(width, heads, head_dim), "bias": b.reshape(heads, head_dim)}
    params["out"] = {"kernel": out[0].T.reshape(heads, head_dim, width), "bias": out[1]}
    return params


def _block(sd: _StateDict, prefix: str, width: int, mlp_dim: int, heads: int) -> dict[str, Any]:
    attn = f"{prefix}.self_attn"
    qkv = [
        (sd.get(f"{attn}.{p}_proj.weight", (width, width)), sd.get(f"{attn}.{p}_proj.bias", (width,)))
        for p in ("q", "k", "v")
    ]
    out = (sd.get(f"{attn}.out_proj.weight", (width, width)), sd.get(f"{attn}.out_proj.bias", (width,)))
    return {
        "LayerNorm_0": _norm(sd, f"{prefix}.layer_norm1", width),
        "MultiHeadDotProductAttention_0": _flax_attention(qkv, out, heads),
        "LayerNorm_1": _norm(sd, f"{prefix}.layer_norm2", width),
        "MlpBlock_0": _mlp(sd, f"{prefix}.mlp", width, mlp_dim),
    }


def _encoder(sd: _StateDict, prefix: str, depth: int, width: int, mlp_dim: int, heads: int) -> dict[str, Any]:
    return {f"encoderblock_{i}": _block(sd, f"{prefix}.{i}", width, mlp_dim, heads) for i in range(depth)}


def _vision_tower(sd: _StateDict, cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int, int, int]:
    """(params, ViT kwargs, resolution, channels, embedding size) of ``vision_model``."""
    tower = "vision"
    p = "vision_model"
    width, channels, ph, pw = sd.shape(f"{p}.embeddings.patch_embedding.weight", 4)
    num_patches, _ = sd.shape(f"{p}.embeddings.position_embedding.weight", 2)
    depth = sd.layers(f"{p}.encoder.layers")
    mlp_dim = sd.shape(f"{p}.encoder.layers.0.mlp.fc1.weight", 2)[0]
    heads = _heads(cfg, width, tower)
    approximate_gelu = _activation(cfg, tower)
    _check_eps(cfg, tower)
    for key, actual in (
        ("hidden_size", width),
        ("num_hidden_layers", depth),
        ("intermediate_size", mlp_dim),
        ("num_channels", channels),
    ):
        _check_size(cfg, key, actual, tower)
    if ph != pw:
        raise ConfigFormatError(f"The SigLIP patch embedding has non-square patches {ph}x{pw}; bv needs square ones.")
    _check_size(cfg, "patch_size", ph, tower)
    grid = math.isqrt(num_patches)
    image_size = cfg.get("image_size")
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise ConfigFormatError(f"The SigLIP image_size {image_size} is not square; bv models take square images.")
        image_size = image_size[0]
    if grid * grid != num_patches:
        raise ConfigFormatError(
            f"The SigLIP position embedding has {num_patches} entries, not a square grid of patches."
        )
    resolution = int(image_size) if isinstance(image_size, int) else grid * ph
    if resolution // ph != grid:
        raise ConfigFormatError(
            f"The SigLIP config's image_size {resolution} with patch size {ph} gives a {resolution // ph}x"
            f"{resolution // ph} grid, but the position embedding has {num_patches} entries ({grid}x{grid})."
        )

    head = f"{p}.head"
    in_w = sd.get(f"{head}.attention.in_proj_weight", (3 * width, width))
    in_b = sd.get(f"{head}.attention.in_proj_bias", (3 * width,))
    qkv = [(in_w[i * width : (i + 1) * width], in_b[i * width : (i + 1) * width]) for i in range(3)]
    out = (
        sd.get(f"{head}.attention.out_proj.weight", (width, width)),
        sd.get(f"{head}.attention.out_proj.bias", (width,)),
    )
    encoder = _encoder(sd, f"{p}.encoder.layers", depth, width, mlp_dim, heads)
    encoder["encoder_norm"] = _norm(sd, f"{p}.post_layernorm", width)
    params: dict[str, Any] = {
        "embedding": {
            # torch's Conv2d weight is [out, in, h, w]; flax's kernel is [h, w, in, out].
            "kernel": sd.get(f"{p}.embeddings.patch_embedding.weight", (width, channels, ph, pw)).transpose(2, 3, 1, 0),
            "bias": sd.get(f"{p}.embeddings.patch_embedding.bias", (width,)),
        },
        # Patches are numbered row by row in both: conv output flattened over (h, w).
        "pos_embedding": sd.get(f"{p}.embeddings.position_embedding.weight", (num_patches, width))[None],
        "Transformer": encoder,
        "MAPHead_0": {
            "probe": sd.get(f"{head}.probe", (1, 1, width)),
            "MultiHeadDotProductAttention_0": _flax_attention(qkv, out, heads),
            "LayerNorm_0": _norm(sd, f"{head}.layernorm", width),
            "MlpBlock_0": _mlp(sd, f"{head}.mlp", width, mlp_dim),
        },
    }
    name, sizes = _sizes(width, depth, mlp_dim, heads)
    kwargs: dict[str, Any] = {"variant": f"{name}/{ph}"} if name else {**sizes, "patch_size": [ph, pw]}
    kwargs.update(pool_type="map", approximate_gelu=approximate_gelu)
    return params, kwargs, resolution, channels, width


def _text_tower(sd: _StateDict, cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int, int]:
    """(params, TextTransformer kwargs, text_len, projection size) of ``text_model``."""
    tower = "text"
    p = "text_model"
    vocab, width = sd.shape(f"{p}.embeddings.token_embedding.weight", 2)
    text_len, _ = sd.shape(f"{p}.embeddings.position_embedding.weight", 2)
    depth = sd.layers(f"{p}.encoder.layers")
    mlp_dim = sd.shape(f"{p}.encoder.layers.0.mlp.fc1.weight", 2)[0]
    proj, _ = sd.shape(f"{p}.head.weight", 2)
    heads = _heads(cfg, width, tower)
    approximate_gelu = _activation(cfg, tower)
    _check_eps(cfg, tower)
    for key, actual in (
        ("hidden_size", width),
        ("num_hidden_layers", depth),
        ("intermediate_size", mlp_dim),
        ("vocab_size", vocab),
        ("max_position_embeddings", text_len),
        ("projection_size", proj),
    ):
        _check_size(cfg, key, actual, tower)
    encoder = _encoder(sd, f"{p}.encoder.layers", depth, width, mlp_dim, heads)
    encoder["encoder_norm"] = _norm(sd, f"{p}.final_layer_norm", width)
    params: dict[str, Any] = {
        "Embed_0": {"embedding": sd.get(f"{p}.embeddings.token_embedding.weight", (vocab, width))},
        "pos_embedding": sd.get(f"{p}.embeddings.position_embedding.weight", (text_len, width))[None],
        "Encoder_0": encoder,
        "head": _dense(sd, f"{p}.head", width, proj),
    }
    name, sizes = _sizes(width, depth, mlp_dim, heads)
    kwargs: dict[str, Any] = {"variant": name} if name else dict(sizes)
    kwargs.update(vocab_size=vocab, pool_type="last", approximate_gelu=approximate_gelu)
    return params, kwargs, text_len, proj
