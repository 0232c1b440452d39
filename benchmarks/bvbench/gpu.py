"""The GPU section: ViT-B/16 with bf16 matmuls, bv and timm on the same GPU, MFU, timm's published figures.

Runs only where JAX sees a GPU (``jax.default_backend() == "gpu"``); timm runs on the same device
with ``torch.autocast(bfloat16)``. MFU is XLA's FLOP count of bv's step over its time, against the
device's peak dense bf16 FLOP/s (``bvbench.throughput.PEAK_FLOPS``).
"""

from __future__ import annotations

from typing import Any

from bvbench.published import TIMM_PUBLISHED


def published_for(device_kind: str) -> list[dict[str, Any]]:
    """timm's published ViT-B/16 figures measured on this kind of device (empty when there are none)."""
    kind = device_kind.lower().replace("nvidia", "").replace("geforce", "").strip()
    return [p for p in TIMM_PUBLISHED if p["device"].lower() in kind]


def measure(train_batch: int = 256, infer_batch: int = 1024, steps: int = 10, rounds: int = 5) -> dict[str, Any]:
    import jax

    from bvbench import throughput

    if jax.default_backend() != "gpu":
        raise RuntimeError(f"The GPU section needs a GPU; JAX runs on {jax.default_backend()!r}.")
    kind = jax.devices()[0].device_kind
    runs = [
        throughput.compare("vit_b16", "train", "bfloat16", train_batch, rounds, steps),
        throughput.compare("vit_b16", "infer", "bfloat16", infer_batch, rounds, steps),
        throughput.compare("vit_b16", "train", "float32", train_batch // 2, rounds, steps),
    ]
    return {
        "device": kind,
        "device_count": jax.device_count(),
        "peak_bf16_flops": throughput.peak_flops(kind, "bfloat16"),
        "runs": runs,
        "published": published_for(kind),
        "all_published": TIMM_PUBLISHED,
    }
