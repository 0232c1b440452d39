"""``ViT``: the Vision Transformer as a Hub model (``from_pretrained``, ``save_pretrained``, ``push_to_hub``).

    from bv.vit import ViT
    model = ViT.from_pretrained("org/name")                 # a bv Hub repo or folder
    model = ViT.from_pretrained("timm_folder")              # as timm's save_for_hf / push_to_hf_hub write it
    model = ViT.from_pretrained("ckpt.npz", variant="B/16") # a big_vision checkpoint
    model = ViT.create(variant="Ti/16", num_classes=10, resolution=32)

Folders always store the un-scanned ("pyloop") parameter layout, which is also
big_vision's ``.npz`` naming; a model built with ``scan=True`` converts on save
and load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from bv.core.hub.timm_interop import hub_config_from_timm, write_timm_folder
from bv.core.hub import ConfigFormatError, HubConfig, PretrainedModel
from bv.vit import big_vision_npz
from bv.vit.model import decode_variant, pyloop_to_scan, resample_posemb, scan_to_pyloop
from bv.vit.version import __version__

Params = Any

# big_vision's ImageNet evaluation preprocessing, scaled to the resolution.
_BIG_VISION_PP = "decode|resize_small({small})|central_crop({res})|value_range(-1, 1)"


class ViT(PretrainedModel, tags=["vit", "image-classification"]):
    """The Vision Transformer with its parameters; see the module docstring."""

    model_name = "vit"
    package = "bv-vit"
    version = __version__

    # ---- layout -------------------------------------------------------------------------------

    @classmethod
    def params_to_saved(cls, params: Params, config: HubConfig) -> Params:
        return scan_to_pyloop(params) if config.model.get("scan") else params

    @classmethod
    def params_from_saved(cls, params: Params, config: HubConfig) -> Params:
        return pyloop_to_scan(params) if config.model.get("scan") else params

    @classmethod
    def adapt_param(cls, name: str, value: np.ndarray, shape: tuple[int, ...], config: HubConfig) -> np.ndarray | None:
        """Resamples a learned position embedding to another patch grid (fine-tuning at a new resolution)."""
        if name.split("/")[-1] != "pos_embedding" or len(shape) != 3 or value.ndim != 3 or value.shape[2] != shape[2]:
            return None
        side = math.isqrt(shape[1])
        if side * side != shape[1]:
            return None
        return resample_posemb(value, side, side)

    # ---- timm ---------------------------------------------------------------------------------

    @classmethod
    def from_timm_folder(
        cls, timm_config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
    ) -> tuple[HubConfig, Params]:
        from bv.vit import timm_convert  # only needed for timm folders

        kwargs = dict(timm_convert.vit_kwargs_from_timm_config(dict(timm_config)))
        pre = timm_convert.timm_preprocessing(dict(timm_config))
        config = hub_config_from_timm(cls.model_name, kwargs, timm_config, pre)
        num_heads = kwargs.get("num_heads") or decode_variant(kwargs["variant"])["num_heads"]
        params = timm_convert.timm_to_params(dict(weights), num_heads=num_heads)
        return config, params

    def timm_state_dict(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        """``(architecture, timm.create_model kwargs, state dict as numpy arrays)`` for this model in timm."""
        from bv.vit import timm_convert

        saved = self.params_to_saved(self.params, self.config)
        saved = {k: _to_numpy(v) for k, v in saved.items()}
        model_kwargs = {**self.module_kwargs(), "num_classes": self.config.num_classes or 0}
        res = self.config.resolution
        arch, create_kwargs = timm_convert.timm_model_args(model_kwargs, image_size=res)
        grid = (res // model_kwargs["patch_size"][0], res // model_kwargs["patch_size"][1])
        state = timm_convert.params_to_timm(saved, num_heads=model_kwargs["num_heads"], posemb_grid=grid)
        return arch, create_kwargs, state

    def save_timm(self, folder: str) -> None:
        """Writes a folder timm loads (``config.json`` with ``architecture`` and ``model_args``, ``model.safetensors``)."""
        arch, create_kwargs, state = self.timm_state_dict()
        config = {
            "architecture": arch,
            "num_classes": self.config.num_classes or 0,
            "num_features": self.module_kwargs()["width"],
            "global_pool": create_kwargs.get("global_pool", "token"),
            "model_args": {k: v for k, v in create_kwargs.items() if k != "num_classes"},
            "pretrained_cfg": {
                "input_size": [self.config.channels, self.config.resolution, self.config.resolution],
                "num_classes": self.config.num_classes or 0,
            },
        }
        write_timm_folder(folder, config, state, self.config.labels)

    # ---- big_vision .npz ----------------------------------------------------------------------

    @classmethod
    def from_big_vision(
        cls, flat: Mapping[str, np.ndarray], *, variant: str | None = None, **kwargs: Any
    ) -> tuple[HubConfig, Params]:
        params = big_vision_npz.vit_params_from_big_vision(flat)
        inferred = big_vision_npz.infer_vit_kwargs(big_vision_npz.vit_params_to_big_vision(params))
        num_classes = inferred.pop("num_classes", None)
        if variant is not None:
            expected = decode_variant(variant)
            for key in ("width", "depth", "mlp_dim", "num_heads", "patch_size"):
                if key in expected and tuple(np.atleast_1d(expected[key])) != tuple(np.atleast_1d(inferred[key])):
                    raise ConfigFormatError(
                        f"The checkpoint is not a ViT-{variant}: its {key} is {inferred[key]}, the variant's is "
                        f"{expected[key]}. Pass the checkpoint's variant, or none to infer it from the weights."
                    )
        patch = int(np.atleast_1d(inferred["patch_size"])[0])
        posemb = params.get("pos_embedding")
        side = math.isqrt(int(posemb.shape[1])) if posemb is not None else 224 // patch
        resolution = side * patch
        config = HubConfig(
            model_name=cls.model_name,
            model={k: (list(v) if isinstance(v, tuple) else v) for k, v in inferred.items()},
            num_classes=num_classes or None,
            resolution=resolution,
            pp=_BIG_VISION_PP.format(small=round(resolution * 8 / 7), res=resolution),
            extra={"converted_from": "big_vision .npz" + (f" (ViT-{variant})" if variant else "")},
        )
        return config, params

    def save_big_vision(self, path: str, *, dtype: Any = None) -> None:
        """Writes the parameters as a big_vision ``.npz`` (bfloat16 stored as big_vision does, if asked)."""
        saved = self.params_to_saved(self.params, self.config)
        big_vision_npz.save_npz(path, big_vision_npz.vit_params_to_big_vision(saved), dtype=dtype)

    def module_kwargs(self) -> dict[str, Any]:
        """The resolved module fields (width, depth, mlp_dim, num_heads, patch_size, pool_type, ...)."""
        m = self.module
        return {
            "width": m.width,
            "depth": m.depth,
            "mlp_dim": m.mlp_dim or 4 * m.width,
            "num_heads": m.num_heads,
            "patch_size": tuple(m.patch_size),
            "pool_type": m.pool_type,
            "posemb": m.posemb,
            "rep_size": m.rep_size,
            "approximate_gelu": m.approximate_gelu,
        }


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
