"""``Mixer``: the MLP-Mixer as a Hub model (``from_pretrained``, ``save_pretrained``, ``push_to_hub``).

    from bv.mixer import Mixer
    model = Mixer.from_pretrained("org/name")                   # a bv Hub repo or folder
    model = Mixer.from_pretrained("timm_folder")                # as timm's save_for_hf writes it
    model = Mixer.from_pretrained("Mixer-B_16.npz", variant="B/16")  # a big_vision / paper checkpoint
    model = Mixer.create(variant="S/16", num_classes=10, resolution=64)

A Mixer's token-mixing MLPs take a fixed number of patches, so unlike a ViT it cannot be
loaded at another resolution: ``resolution`` overrides must keep the patch count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bv.core.hub.timm_interop import hub_config_from_timm, write_timm_folder
from bv.core.hub import ConfigFormatError, HubConfig, PretrainedModel
from bv.core.hub.npz import save_npz
from bv.mixer import big_vision_npz
from bv.mixer.model import VARIANTS, decode_variant
from bv.mixer.version import __version__

Params = Any

# big_vision's ImageNet evaluation preprocessing, scaled to the resolution.
_BIG_VISION_PP = "decode|resize_small({small})|central_crop({res})|value_range(-1, 1)"
_SIZE_KEYS = ("hidden_dim", "num_blocks", "tokens_mlp_dim", "channels_mlp_dim")


class Mixer(PretrainedModel, tags=["mlp-mixer", "image-classification"]):
    """The MLP-Mixer with its parameters; see the module docstring."""

    model_name = "mixer"
    package = "bv-mixer"
    version = __version__

    # ---- timm ---------------------------------------------------------------------------------

    @classmethod
    def from_timm_folder(
        cls, timm_config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
    ) -> tuple[HubConfig, Params]:
        from bv.mixer import timm_convert  # only needed for timm folders

        try:
            kwargs = timm_convert.mixer_kwargs_from_timm_config(dict(timm_config))
            params = timm_convert.timm_to_params(dict(weights))
        except ValueError as e:
            raise ConfigFormatError(str(e)) from e
        pre = timm_convert.timm_preprocessing(dict(timm_config))
        return hub_config_from_timm(cls.model_name, kwargs, timm_config, pre), params

    def timm_state_dict(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        """``(architecture, timm.create_model kwargs, state dict as numpy arrays)`` for this model in timm.

        With ``approximate_gelu`` (the default) the kwargs name ``act_layer="gelu_tanh"``; see
        :func:`bv.mixer.timm_convert.timm_model_args`.
        """
        from bv.mixer import timm_convert

        model_kwargs = {**self.module_kwargs(), "num_classes": self.config.num_classes or 0}
        arch, create_kwargs = timm_convert.timm_model_args(
            model_kwargs, image_size=self.config.resolution, channels=self.config.channels
        )
        state = timm_convert.params_to_timm(_to_numpy(self.params))
        return arch, create_kwargs, state

    def save_timm(self, folder: str, *, allow_gelu_mismatch: bool = False) -> None:
        """Writes a folder timm loads (``config.json`` with ``architecture`` and ``model_args``, ``model.safetensors``).

        timm's MlpMixer config cannot select the tanh GELU that big_vision's Mixer uses
        (``approximate_gelu=True``, the default), so such a model is refused unless
        ``allow_gelu_mismatch``: timm then computes the exact GELU (logits differ slightly), unless
        the folder is loaded with ``act_layer=timm.layers.get_act_layer("gelu_tanh")``.
        """
        arch, create_kwargs, state = self.timm_state_dict()
        if create_kwargs.pop("act_layer", None) is not None and not allow_gelu_mismatch:
            raise ValueError(
                "This Mixer uses the tanh approximation of GELU (approximate_gelu=True, as big_vision), which a timm "
                "config.json cannot select: timm would run the exact GELU and its logits would differ slightly. "
                "Pass allow_gelu_mismatch=True to write it anyway (and load it in timm with "
                "act_layer=timm.layers.get_act_layer('gelu_tanh') for equal logits), or save a model built with "
                "approximate_gelu=False."
            )
        num_classes = self.config.num_classes or 0
        config: dict[str, Any] = {
            "architecture": arch,
            "num_classes": num_classes,
            "num_features": self.module_kwargs()["hidden_dim"],
            "global_pool": "avg",
            "model_args": {k: v for k, v in create_kwargs.items() if k != "num_classes"},
            "pretrained_cfg": {
                "input_size": [self.config.channels, self.config.resolution, self.config.resolution],
                "num_classes": num_classes,
            },
        }
        write_timm_folder(folder, config, state, self.config.labels)

    # ---- big_vision .npz ----------------------------------------------------------------------

    @classmethod
    def from_big_vision(
        cls, flat: Mapping[str, np.ndarray], *, variant: str | None = None, **kwargs: Any
    ) -> tuple[HubConfig, Params]:
        try:
            params = big_vision_npz.mixer_params_from_big_vision(flat)
            inferred = big_vision_npz.infer_mixer_kwargs(params)
        except ValueError as e:
            raise ConfigFormatError(str(e)) from e
        num_classes = inferred.pop("num_classes")
        resolution = inferred.pop("resolution")
        channels = inferred.pop("channels")
        if variant is not None:
            expected = decode_variant(variant)
            for key, value in expected.items():
                if tuple(np.atleast_1d(value)) != tuple(np.atleast_1d(inferred[key])):
                    raise ConfigFormatError(
                        f"The checkpoint is not a Mixer-{variant}: its {key} is {inferred[key]}, the variant's is "
                        f"{value}. Pass the checkpoint's variant, or none to infer it from the weights."
                    )
        config = HubConfig(
            model_name=cls.model_name,
            model=_model_kwargs(inferred),
            num_classes=num_classes,
            resolution=resolution,
            channels=channels,
            pp=_BIG_VISION_PP.format(small=round(resolution * 8 / 7), res=resolution),
            extra={"converted_from": "big_vision .npz" + (f" (Mixer-{variant})" if variant else "")},
        )
        return config, params

    def save_big_vision(self, path: str, *, dtype: Any = None) -> None:
        """Writes the parameters as a big_vision ``.npz`` (bfloat16 stored as big_vision does, if asked)."""
        save_npz(path, big_vision_npz.mixer_params_to_big_vision(_to_numpy(self.params)), dtype=dtype)

    def module_kwargs(self) -> dict[str, Any]:
        """The resolved module fields (sizes, patch_size, approximate_gelu)."""
        m = self.module
        return {
            "hidden_dim": m.hidden_dim,
            "num_blocks": m.num_blocks,
            "tokens_mlp_dim": m.tokens_mlp_dim,
            "channels_mlp_dim": m.channels_mlp_dim,
            "patch_size": tuple(m.patch_size),
            "approximate_gelu": m.approximate_gelu,
        }


def _model_kwargs(inferred: Mapping[str, Any]) -> dict[str, Any]:
    """``variant`` when the sizes are a named variant's (and the patches square), else the explicit sizes."""
    sizes = tuple(inferred[k] for k in _SIZE_KEYS)
    ph, pw = inferred["patch_size"]
    name = next((n for n, v in VARIANTS.items() if v == sizes), None)
    if name is not None and ph == pw:
        return {"variant": f"{name}/{ph}"}
    return {**{k: inferred[k] for k in _SIZE_KEYS}, "patch_size": [ph, pw]}


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
