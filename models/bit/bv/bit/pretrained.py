"""``BiT`` (ResNet v1, GN+WS) and ``BiTPaper`` (the BiT paper's ResNet v2) as Hub models.

    from bv.bit import BiT, BiTPaper
    model = BiT.from_pretrained("org/name")                  # a bv Hub repo or folder
    model = BiT.from_pretrained("bit_r50.npz")               # a big_vision checkpoint (variant="R50x1" checks it)
    model = BiTPaper.from_pretrained("BiT-M-R50x1.npz")      # the original BiT release, or big_vision's bit_paper
    model = BiTPaper.from_pretrained("timm_folder")          # timm's resnetv2_50x1_bit & co (save_for_hf)
    model = BiT.create(depth=26, width=0.5, num_classes=10, resolution=32)

ResNets have no resolution-bound parameters: ``from_pretrained(..., resolution=384)`` only changes
the input size the config records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bv.bit import big_vision_npz
from bv.bit.model import block_sizes
from bv.bit.version import __version__
from bv.core.hub.timm_interop import crop_pct, hub_config_from_timm, write_timm_folder
from bv.core.hub import ConfigFormatError, HubConfig, PretrainedModel
from bv.core.hub.npz import save_npz

Params = Any

# big_vision's ImageNet evaluation preprocessing (as in its bit_i1k config), scaled to the resolution.
_BIG_VISION_PP = "decode|resize_small({small})|central_crop({res})|value_range(-1, 1)"
_VARIANT_RE = re.compile(r"R?(?P<depth>\d+)x(?P<width>\d+(?:\.\d+)?)")


def _from_big_vision(
    cls: type[PretrainedModel], flat: Mapping[str, np.ndarray], variant: str | None, *, paper: bool
) -> tuple[HubConfig, Params]:
    try:
        params = big_vision_npz.params_from_big_vision(flat, paper=paper)
        inferred = big_vision_npz.infer_kwargs(params, paper=paper)
    except ValueError as e:
        raise ConfigFormatError(str(e)) from None
    num_classes = inferred.pop("num_classes")
    if variant is not None:
        m = _VARIANT_RE.fullmatch(variant)
        if m is None:
            raise ConfigFormatError(f"Unknown BiT variant {variant!r}: expected 'R<depth>x<width>', as in 'R50x1'.")
        try:
            expected = (block_sizes(int(m["depth"])), float(m["width"]))
        except ValueError as e:
            raise ConfigFormatError(f"Unknown BiT variant {variant!r}: {e}") from None
        if expected != (block_sizes(inferred["depth"]), float(inferred["width"])):
            raise ConfigFormatError(
                f"The checkpoint is not a BiT-{variant}: it has depth={inferred['depth']} and width={inferred['width']}. "
                "Pass the checkpoint's variant, or none to infer it from the weights."
            )
    config = HubConfig(
        model_name=cls.model_name,
        model=inferred,
        num_classes=num_classes,
        resolution=224,
        pp=_BIG_VISION_PP.format(small=256, res=224),
        extra={"converted_from": "big_vision .npz" + (f" ({variant})" if variant else "")},
    )
    return config, params


def _module_kwargs(model: PretrainedModel) -> dict[str, Any]:
    m: Any = model.module
    depth = m.depth if isinstance(m.depth, int) else list(m.depth)
    return {"depth": depth, "width": m.width}


class BiT(PretrainedModel, tags=["bit", "resnet", "image-classification"]):
    """big_vision's BiT ResNet v1 (GroupNorm, weight standardisation) with its parameters."""

    model_name = "bit"
    package = "bv-bit"
    version = __version__

    @classmethod
    def from_big_vision(
        cls, flat: Mapping[str, np.ndarray], *, variant: str | None = None, **kwargs: Any
    ) -> tuple[HubConfig, Params]:
        return _from_big_vision(cls, flat, variant, paper=False)

    def save_big_vision(self, path: str, *, dtype: Any = None) -> None:
        """Writes the parameters as a big_vision ``.npz`` (the names are big_vision's; ``dtype`` casts floats)."""
        save_npz(path, self.state_dict(), dtype=dtype)

    def module_kwargs(self) -> dict[str, Any]:
        """The resolved module fields (``depth``, ``width``)."""
        return _module_kwargs(self)


class BiTPaper(PretrainedModel, tags=["bit", "resnet", "resnetv2", "image-classification"]):
    """The BiT paper's ResNet v2 (big_vision's ``bit_paper``) with its parameters; also reads and writes timm."""

    model_name = "bit_paper"
    package = "bv-bit"
    version = __version__

    # ---- big_vision .npz ----------------------------------------------------------------------

    @classmethod
    def from_big_vision(
        cls, flat: Mapping[str, np.ndarray], *, variant: str | None = None, **kwargs: Any
    ) -> tuple[HubConfig, Params]:
        return _from_big_vision(cls, flat, variant, paper=True)

    def save_big_vision(self, path: str, *, dtype: Any = None) -> None:
        """Writes the parameters as a big_vision ``bit_paper`` ``.npz`` (``dtype`` casts floats)."""
        save_npz(path, self.state_dict(), dtype=dtype)

    def module_kwargs(self) -> dict[str, Any]:
        """The resolved module fields (``depth``, ``width``, ``ws_eps``, ``root_pool_pad``)."""
        m: Any = self.module
        return {**_module_kwargs(self), "ws_eps": m.ws_eps, "root_pool_pad": m.root_pool_pad}

    # ---- timm ---------------------------------------------------------------------------------

    @classmethod
    def from_timm_folder(
        cls, timm_config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
    ) -> tuple[HubConfig, Params]:
        from bv.bit import timm_convert

        try:
            kwargs = timm_convert.bit_kwargs_from_timm_config(dict(timm_config))
            params = timm_convert.timm_to_params(weights)
        except ValueError as e:
            raise ConfigFormatError(str(e)) from None
        found = timm_convert.timm_block_sizes(weights)
        if found != block_sizes(kwargs["depth"]):
            raise ConfigFormatError(
                f"The timm weights have {list(found)} units per stage, but {timm_config['architecture']} has "
                f"{list(block_sizes(kwargs['depth']))}."
            )
        pre = timm_convert.timm_preprocessing(timm_config)
        return hub_config_from_timm(cls.model_name, kwargs, timm_config, pre), params

    def timm_state_dict(self, *, exact: bool = True) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        """``(architecture, timm.create_model kwargs, state dict as numpy arrays)`` for this model in timm.

        ``exact`` refuses models that timm would compute slightly differently (see ``timm_model_args``).
        """
        from bv.bit import timm_convert

        saved = self.params_to_saved(self.params, self.config)
        arch, create_kwargs = timm_convert.timm_model_args(
            {**self.module_kwargs(), "num_classes": self.config.num_classes}, exact=exact
        )
        if self.config.channels != 3:
            create_kwargs["in_chans"] = self.config.channels
        return arch, create_kwargs, timm_convert.params_to_timm(_to_numpy(saved))

    def save_timm(self, folder: str, *, exact: bool = True) -> None:
        """Writes a folder timm loads (``timm.create_model("local-dir:<folder>", pretrained=True)``).

        The folder records BiT's input normalisation (mean = std = 0.5, i.e. ``value_range(-1, 1)``).
        """
        arch, create_kwargs, state = self.timm_state_dict(exact=exact)
        num_classes = self.config.num_classes or 0
        width = int(self.module_kwargs()["width"])
        res = self.config.resolution
        config: dict[str, Any] = {
            "architecture": arch,
            "num_classes": num_classes,
            "num_features": 2048 * width,
            "global_pool": "avg",
            "model_args": create_kwargs,
            "pretrained_cfg": {
                "input_size": [self.config.channels, res, res],
                "num_classes": num_classes,
                "interpolation": "bilinear",
                "crop_pct": crop_pct(self.config.pp, res),
                "mean": [0.5] * self.config.channels,
                "std": [0.5] * self.config.channels,
                "first_conv": "stem.conv",
                "classifier": "head.fc",
            },
        }
        write_timm_folder(folder, config, state, self.config.labels)


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
