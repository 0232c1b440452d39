"""A transformers SiglipModel folder loads into TwoTowerModel with the same outputs (fp32, 1e-4)."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from bv.core.hub import ConfigFormatError, WeightsError
from bv.core.tree import flatten_with_names
from bv.lit import TwoTowerModel
from bv.lit.siglip_transformers import from_transformers_siglip, is_transformers_siglip

TOL = 1e-4
TEXT = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=100,
    max_position_embeddings=16,
    projection_size=32,
    pad_token_id=1,
    bos_token_id=2,
    eos_token_id=3,
)
VISION = dict(
    hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> tuple[str, Any]:
    torch.manual_seed(0)
    config = transformers.SiglipConfig(text_config=TEXT, vision_config=VISION)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():  # away from the defaults (and from each other), so a swap would show
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-3.7)
        for p in model.parameters():  # random LayerNorms and biases too, not only ones and zeros
            if p.ndim == 1 and p.numel() > 1:
                p.add_(0.1 * torch.randn_like(p))
    folder = str(tmp_path_factory.mktemp("hf") / "siglip")
    model.save_pretrained(folder)
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    return folder, model


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)  # NHWC, as bv takes them
    tokens = rng.integers(0, 100, size=(4, 16)).astype(np.int32)
    return images, tokens


def _hf_outputs(model: Any, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # transformers takes NCHW
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
        img = model.vision_model(pixel_values=pixels).pooler_output
        txt = model.text_model(input_ids=ids).pooler_output
    return {
        "zimg": out.image_embeds.numpy(),
        "ztxt": out.text_embeds.numpy(),
        "logits": out.logits_per_image.numpy(),
        "img": img.numpy(),
        "txt": txt.numpy(),
    }


def _flat(params: Any) -> dict[str, np.ndarray]:
    return {n: np.asarray(v) for n, v in flatten_with_names(jax.device_get(params))}


def test_parity_with_transformers(hf_folder, inputs) -> None:
    folder, hf_model = hf_folder
    images, tokens = inputs
    assert is_transformers_siglip(folder)
    model = TwoTowerModel.from_pretrained(folder)
    ref = _hf_outputs(hf_model, images, tokens)
    zimg, ztxt, out = model(images, tokens)
    diffs = {
        "zimg": np.abs(np.asarray(zimg) - ref["zimg"]).max(),
        "ztxt": np.abs(np.asarray(ztxt) - ref["ztxt"]).max(),
        "img (pre-norm)": np.abs(np.asarray(out["img/pre_logits"]) - ref["img"]).max(),
        "txt (pre-norm)": np.abs(np.asarray(out["txt/logits"]) - ref["txt"]).max(),
        "logits_per_image": np.abs(np.asarray(model.logits(images, tokens)) - ref["logits"]).max(),
    }
    print("max abs diff vs transformers:", {k: f"{float(v):.2e}" for k, v in diffs.items()})
    for name, diff in diffs.items():
        assert diff < TOL, (name, diff)
    np.testing.assert_allclose(np.asarray(out["t"]), np.exp([2.3]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["b"]), [-3.7], rtol=1e-6)


def test_inferred_config(hf_folder) -> None:
    model = TwoTowerModel.from_pretrained(hf_folder[0])
    config = model.config
    assert config.model_name == "two_towers" and config.package == "bv-lit"
    assert config.resolution == 32 and config.channels == 3 and model.text_len == 16
    assert config.pp == "decode|resize(32)|value_range(-1, 1)"
    m = config.model
    assert m["image"] == dict(
        width=32, depth=2, mlp_dim=40, num_heads=2, patch_size=[8, 8], pool_type="map", approximate_gelu=True
    )
    assert m["text"] == dict(
        width=32, depth=2, mlp_dim=48, num_heads=2, vocab_size=100, pool_type="last", approximate_gelu=True
    )
    assert list(m["out_dim"]) == [None, 32]
    assert m["temperature_init"] == pytest.approx(np.exp(2.3), rel=1e-6)
    assert m["bias_init"] == pytest.approx(-3.7, rel=1e-6)
    assert config.extra["converted_from"] == "transformers SiglipModel"


def test_save_pretrained_writes_a_bv_folder(hf_folder, inputs, tmp_path) -> None:
    images, tokens = inputs
    model = TwoTowerModel.from_pretrained(hf_folder[0])
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["format"] == "bv" and saved["model_name"] == "two_towers"
    assert not is_transformers_siglip(str(tmp_path))
    names = set(safetensors.numpy.load_file(str(tmp_path / "model.safetensors")))
    assert "img/MAPHead_0/probe" in names and "txt/head/kernel" in names and "t" in names and "b" in names
    reloaded = TwoTowerModel.from_pretrained(str(tmp_path))
    a, b = _flat(model.params), _flat(reloaded.params)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(model.logits(images, tokens), reloaded.logits(images, tokens))


def test_config_and_state_dict_pair(hf_folder) -> None:
    folder, hf_model = hf_folder
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    hf_config = json.loads(open(os.path.join(folder, "config.json")).read())
    config, params = from_transformers_siglip((hf_config, state))
    from_folder = from_transformers_siglip(folder)[1]
    a, b = _flat(params), _flat(from_folder)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert a["img/MAPHead_0/MultiHeadDotProductAttention_0/query/kernel"].shape == (32, 2, 16)
    assert a["img/Transformer/encoderblock_1/MultiHeadDotProductAttention_0/out/kernel"].shape == (2, 16, 32)
    assert a["img/embedding/kernel"].shape == (8, 8, 3, 32)

    # Defaults transformers leaves out of config.json are assumed (12 heads would not divide 32: say so).
    sparse = {"model_type": "siglip", "text_config": {}, "vision_config": {}}
    with pytest.raises(ConfigFormatError, match="num_attention_heads=12.*does not divide its width 32"):
        from_transformers_siglip((sparse, state))
    sparse = {
        "model_type": "siglip",
        "text_config": {"num_attention_heads": 2},
        "vision_config": {"num_attention_heads": 2},
    }
    assert from_transformers_siglip((sparse, state))[0].model == config.model


def test_variant_sizes_and_pair_parity(inputs) -> None:
    """Sizes of a bv ViT variant are written as its name; the converted pair gives transformers' logits."""
    images, tokens = inputs
    torch.manual_seed(1)
    sizes = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
    text = {**TEXT, **sizes, "max_position_embeddings": 16}
    config = transformers.SiglipConfig(text_config=text, vision_config={**VISION, **sizes})
    hf_model = transformers.SiglipModel(config).eval()
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    hub_config, params = from_transformers_siglip((config.to_dict(), state))
    assert hub_config.model["image"] == dict(variant="mu/8", pool_type="map", approximate_gelu=True)
    assert hub_config.model["text"] == dict(variant="mu", vocab_size=100, pool_type="last", approximate_gelu=True)
    model = TwoTowerModel(hub_config, params)
    diff = np.abs(np.asarray(model.logits(images, tokens)) - _hf_outputs(hf_model, images, tokens)["logits"]).max()
    assert diff < TOL, diff


def _config(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, "config.json")) as f:
        return dict(json.load(f))


def _write(folder: str, config: dict[str, Any]) -> None:
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def test_errors(hf_folder, tmp_path) -> None:
    folder, hf_model = hf_folder
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    hf_config = _config(folder)

    # A SigLIP config without weights.
    empty = tmp_path / "no_weights"
    empty.mkdir()
    shutil.copy(os.path.join(folder, "config.json"), empty / "config.json")
    with pytest.raises(WeightsError, match="transformers SigLIP config.json.*no model.safetensors"):
        TwoTowerModel.from_pretrained(str(empty))

    # Other transformers models: the message names the supported type.
    for model_type in ("clip", "bert"):
        other = tmp_path / model_type
        shutil.copytree(folder, other)
        _write(str(other), {**hf_config, "model_type": model_type})
        assert not is_transformers_siglip(str(other))
        with pytest.raises(ConfigFormatError, match=f"type '{model_type}'.*only 'siglip'"):
            TwoTowerModel.from_pretrained(str(other))
    assert not is_transformers_siglip(str(tmp_path / "missing"))

    # Shapes that do not fit together, weights missing or left over.
    bad = dict(state)
    bad["text_model.encoder.layers.1.self_attn.q_proj.weight"] = np.zeros((32, 16), np.float32)
    with pytest.raises(ConfigFormatError, match=r"layers.1.self_attn.q_proj.weight has shape \(32, 16\).*\(32, 32\)"):
        from_transformers_siglip((hf_config, bad))
    missing = {k: v for k, v in state.items() if k != "vision_model.head.probe"}
    with pytest.raises(ConfigFormatError, match="no 'vision_model.head.probe'"):
        from_transformers_siglip((hf_config, missing))
    with pytest.raises(ConfigFormatError, match="does not have: vision_model.extra.weight"):
        from_transformers_siglip((hf_config, {**state, "vision_model.extra.weight": np.zeros(3, np.float32)}))
    wrong = {**hf_config, "text_config": {**hf_config["text_config"], "vocab_size": 200}}
    with pytest.raises(ConfigFormatError, match="vocab_size=200, but the weights have 100"):
        from_transformers_siglip((wrong, state))

    # What bv's modules cannot compute.
    def vision(**changes: Any) -> dict[str, Any]:
        return {**hf_config, "vision_config": {**hf_config["vision_config"], **changes}}

    with pytest.raises(ConfigFormatError, match="layer_norm_eps=1e-05"):
        from_transformers_siglip((vision(layer_norm_eps=1e-5), state))
    with pytest.raises(ConfigFormatError, match="hidden_act='relu'"):
        from_transformers_siglip((vision(hidden_act="relu"), state))
    with pytest.raises(ConfigFormatError, match="vision_use_head=false"):
        from_transformers_siglip((vision(vision_use_head=False), state))
    with pytest.raises(ConfigFormatError, match="variant="):
        TwoTowerModel.from_pretrained(folder, variant="B/16")
