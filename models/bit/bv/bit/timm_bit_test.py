"""bv's BiT-paper ResNet v2 against real timm (``resnetv2_50x1_bit``): logits parity both ways, Hub folders.

One bv ResNet-v2-50x1 is compiled once (cheaply) and run with every parameter set; timm runs at
64 px with random non-zero weights everywhere (its GroupNorm and head start at 1/0).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import timm
import torch
from timm.models import save_for_hf

from bv.bit import BiTPaper, create_paper_model
from bv.bit.timm_convert import (
    bit_kwargs_from_timm_config,
    params_to_timm,
    timm_model_args,
    timm_to_params,
)
from bv.core.hub import ConfigFormatError, HubConfig
from bv.core.tree import flatten_with_names, map_with_names

ARCH = "resnetv2_50x1_bit"
IMAGES = np.random.RandomState(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
TOL = 1e-4  # max abs logits difference, fp32
MODULE = create_paper_model(10, depth=50, width=1, ws_eps=1e-8, root_pool_pad="zero")


@functools.lru_cache
def _apply() -> Any:
    """The one compile of this file; an unoptimised compile is far cheaper and computes the same."""
    return jax.jit(MODULE.apply, compiler_options={"xla_backend_optimization_level": 0})


@functools.lru_cache
def _abstract_params() -> Any:
    return jax.eval_shape(MODULE.init, jax.random.PRNGKey(0), IMAGES)["params"]


def _bv_logits(params: Any) -> np.ndarray:
    return np.asarray(_apply()({"params": params}, IMAGES)[0])


def _timm_logits(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.fixture(scope="module")
def timm_model() -> torch.nn.Module:
    model = timm.create_model(ARCH, pretrained=False, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # GroupNorm scale 1 / bias 0 at init
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
            elif name.startswith("head"):  # zero-ish at init
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _bv_random_params(seed: int) -> Any:
    abstract = _abstract_params()
    rng = np.random.default_rng(seed)

    def fill(name: str, leaf: Any) -> np.ndarray:
        shape = leaf.shape
        if name.endswith("scale"):
            return rng.normal(1.0, 0.2, shape).astype(np.float32)
        if name.endswith("bias"):
            return rng.normal(0.0, 0.2, shape).astype(np.float32)
        fan_in = int(np.prod(shape[:-1]))
        return rng.normal(0.0, fan_in**-0.5, shape).astype(np.float32)

    return map_with_names(fill, abstract)


def _timm_with(state: dict[str, np.ndarray], num_classes: int = 10) -> torch.nn.Module:
    model = timm.create_model(ARCH, pretrained=False, num_classes=num_classes, device="meta")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def test_timm_to_bv_logits_match(timm_model: torch.nn.Module) -> None:
    state = {k: v.numpy() for k, v in timm_model.state_dict().items()}
    params = timm_to_params(state)
    expected = {n: tuple(v.shape) for n, v in flatten_with_names(_abstract_params())}
    assert {n: tuple(v.shape) for n, v in flatten_with_names(params)} == expected
    diff = np.abs(_bv_logits(params) - _timm_logits(timm_model)).max()
    assert diff <= TOL, f"max |bv - timm| = {diff:.2e}"


def test_bv_to_timm_logits_match_and_names_round_trip() -> None:
    params = _bv_random_params(seed=2)
    state = params_to_timm(params)
    diff = np.abs(_bv_logits(params) - _timm_logits(_timm_with(state))).max()
    assert diff <= TOL, f"max |bv - timm| = {diff:.2e}"
    back = dict(flatten_with_names(timm_to_params(state)))
    assert all(np.array_equal(back[n], np.asarray(v)) for n, v in flatten_with_names(params))


def test_timm_save_for_hf_folder_loads_with_equal_logits(tmp_path: Path, timm_model: torch.nn.Module) -> None:
    save_for_hf(timm_model, str(tmp_path), model_args={"num_classes": 10}, safe_serialization=True)
    model = BiTPaper.from_pretrained(str(tmp_path))
    assert model.module == MODULE  # timm's epsilon and stem padding, depth 50, width 1, 10 classes
    assert model.config.num_classes == 10 and model.config.resolution == 224
    assert "value_range(-1, 1)" in model.config.pp and "central_crop(224)" in model.config.pp
    diff = np.abs(_bv_logits(model.params) - _timm_logits(timm_model)).max()
    assert diff <= TOL, f"max |bv - timm| = {diff:.2e}"


def test_timm_loads_a_folder_written_by_bv(tmp_path: Path) -> None:
    params = _bv_random_params(seed=3)
    config = HubConfig(
        model_name="bit_paper",
        model={"depth": 50, "width": 1, "ws_eps": 1e-8, "root_pool_pad": "zero"},
        num_classes=10,
        resolution=64,
        pp="decode|resize_small(73)|central_crop(64)|value_range(-1, 1)",
    )
    BiTPaper(config, params).save_timm(str(tmp_path))
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, 64, 64)
    diff = np.abs(_bv_logits(params) - _timm_logits(loaded)).max()
    assert diff <= TOL, f"max |bv - timm| = {diff:.2e}"


def test_exports_timm_cannot_match_are_refused() -> None:
    with pytest.raises(ValueError, match="ws_eps=1e-10 and root_pool_pad='-inf'"):
        timm_model_args({"depth": 50, "width": 1})
    assert timm_model_args({"depth": 50, "width": 1}, exact=False) == (ARCH, {"num_classes": 0})
    with pytest.raises(ValueError, match="no BiT architecture for depth=26"):
        timm_model_args({"depth": 26, "width": 1, "ws_eps": 1e-8, "root_pool_pad": "zero"})
    assert timm_model_args({"depth": [3, 8, 36, 3], "width": 2, "ws_eps": 1e-8, "root_pool_pad": "zero"})[0] == (
        "resnetv2_152x2_bit"
    )


def test_timm_configs_bv_cannot_represent_are_refused() -> None:
    assert bit_kwargs_from_timm_config({"architecture": "resnetv2_101x3_bit"})["width"] == 3
    with pytest.raises(ValueError, match="not a BiT ResNet v2"):
        bit_kwargs_from_timm_config({"architecture": "resnetv2_50"})
    with pytest.raises(ValueError, match="output_stride=16"):
        bit_kwargs_from_timm_config({"architecture": ARCH, "model_args": {"output_stride": 16}})
    with pytest.raises(ConfigFormatError, match="units per stage"):
        BiTPaper.from_timm_folder({"architecture": "resnetv2_101x1_bit"}, params_to_timm(_bv_random_params(4)))
