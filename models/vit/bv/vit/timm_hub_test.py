"""ViT.from_pretrained on folders written by timm itself, and timm loading folders written by bv (real timm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.models import save_for_hf

from bv.vit import ViT

TOL = 1e-4
IMAGES = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


def _timm_logits(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())).numpy()


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """timm starts the cls token, biases and posemb near zero; make every weight matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@pytest.mark.parametrize(
    "arch,kwargs",
    [
        ("vit_tiny_patch16_224", {}),  # [cls] token pooling, exact GELU: timm's stock ViT
        ("vit_small_patch16_224", {"global_pool": "avg", "class_token": False, "fc_norm": False}),
        ("vit_base_patch16_224", {}),
    ],
)
def test_stock_timm_folder_loads_with_equal_logits(tmp_path: Path, arch: str, kwargs: dict) -> None:
    model_args = {"img_size": 32, "num_classes": 10, **kwargs}
    reference = _perturb(timm.create_model(arch, pretrained=False, **model_args), seed=1)
    save_for_hf(reference, str(tmp_path), model_args=model_args, safe_serialization=True)
    model = ViT.from_pretrained(str(tmp_path))
    assert model.config.resolution == 32 and model.config.num_classes == 10
    assert model.config.model["approximate_gelu"] is False
    diff = np.abs(np.asarray(model(IMAGES)) - _timm_logits(reference)).max()
    assert diff <= TOL, f"{arch}: max |bv - timm| = {diff:.2e}"


@pytest.mark.parametrize("pool,approximate_gelu", [("tok", True), ("gap", False)])
def test_timm_loads_a_folder_written_by_bv(tmp_path: Path, pool: str, approximate_gelu: bool) -> None:
    model = ViT.create(
        variant="S/16",
        num_classes=7,
        resolution=32,
        pool_type=pool,
        approximate_gelu=approximate_gelu,
        head_zeroinit=False,
        seed=3,
    )
    model.save_timm(str(tmp_path))
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    diff = np.abs(np.asarray(model(IMAGES)) - _timm_logits(loaded)).max()
    assert diff <= TOL, f"max |bv - timm| = {diff:.2e}"
