"""The shared timm layout helpers: Dense/LayerNorm/MLP both ways, the state-dict reader, timm configs."""

from __future__ import annotations

import numpy as np
import pytest

from bv.core.hub import timm_interop as ti


def test_mlp_and_norm_round_trip_through_timm_names() -> None:
    rng = np.random.default_rng(0)
    mlp = {"Dense_0": {"kernel": rng.normal(size=(4, 8)), "bias": rng.normal(size=8)},
           "Dense_1": {"kernel": rng.normal(size=(8, 4)), "bias": rng.normal(size=4)}}  # fmt: skip
    ln = {"scale": rng.normal(size=4), "bias": rng.normal(size=4)}
    out: dict[str, np.ndarray] = {}
    ti.mlp_to_timm(out, "blocks.0.mlp", mlp)
    ti.norm_to_timm(out, "norm", ln)
    assert out["blocks.0.mlp.fc1.weight"].shape == (8, 4)  # torch Linear: [out, in]
    assert all(v.dtype == np.float32 for v in out.values())
    sd = ti.TimmStateDict({**out, "extra": np.zeros(1)}, "Thing")
    back_mlp, back_ln = ti.mlp_from_timm(sd, "blocks.0.mlp"), ti.norm_from_timm(sd, "norm")
    for name in ("Dense_0", "Dense_1"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(back_mlp[name][leaf], np.float32(mlp[name][leaf]))
    np.testing.assert_array_equal(back_ln["scale"], np.float32(ln["scale"]))
    assert sd.unused == {"extra"} and "extra" in sd
    with pytest.raises(ValueError, match="has no 'head.weight': not a plain timm Thing"):
        ti.linear_from_timm(sd, "head")


@pytest.mark.parametrize("width, mlp_dim", [(192, 768), (1408, 6144), (1664, 8192), (64, 24), (768, 3072)])
def test_mlp_ratio_gives_timm_the_exact_width(width: int, mlp_dim: int) -> None:
    assert int(width * ti.mlp_ratio(width, mlp_dim)) == mlp_dim


def test_timm_configs() -> None:
    assert ti.pair(16) == (16, 16) and ti.pair([8, 4]) == (8, 4)
    assert ti.pretrained_cfg({"pretrained_cfg": {"mean": 1}}) == {"mean": 1}
    assert ti.pretrained_cfg({"mean": 1, "pretrained_cfg": None}) == {"mean": 1, "pretrained_cfg": None}
    with pytest.raises(ValueError, match="expected a mapping"):
        ti.pretrained_cfg({"pretrained_cfg": [1]})
    imagenet = {
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    assert ti.eval_pp(imagenet, 224) == (
        "decode|resize_small(248, method='bicubic')|central_crop(224)|"
        "vgg_value_range(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))"
    )
    half = {"crop_pct": 0.875, "interpolation": "random", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    pp = ti.eval_pp(half, 224)
    assert pp == "decode|resize_small(256, method='bilinear')|central_crop(224)|value_range(-1, 1)"
    assert ti.crop_pct(pp, 224) == 0.875 and ti.crop_pct("decode|resize(224)", 224) == 0.875


def test_timm_folders(tmp_path) -> None:
    import json

    import safetensors.numpy

    from bv.core.hub.config import ConfigFormatError

    timm_config = {"architecture": "x_net", "pretrained_cfg": None, "label_names": ["a", "b"]}
    kwargs = {"image_size": (32, 32), "num_classes": 2, "depth": 3}
    config = ti.hub_config_from_timm("x", kwargs, timm_config, {"crop_pct": 1.0})
    assert (config.resolution, config.channels, config.num_classes, config.labels) == (32, 3, 2, ["a", "b"])
    assert config.model == {"depth": 3} and config.extra["converted_from"] == "timm x_net"
    with pytest.raises(ConfigFormatError, match="square images; this timm model takes 32x16"):
        ti.hub_config_from_timm("x", {"image_size": (32, 16)}, timm_config, {})
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3).T}  # not C-contiguous
    ti.write_timm_folder(str(tmp_path / "out"), {"architecture": "x_net"}, state, ["a", "b"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["label_names"] == ["a", "b"]
    np.testing.assert_array_equal(
        safetensors.numpy.load_file(str(tmp_path / "out" / "model.safetensors"))["w"], state["w"]
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
