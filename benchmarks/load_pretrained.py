"""Seconds to load a ViT-B/16 checkpoint folder: bv's ``ViT.from_pretrained`` against timm's own loader.

    ./pants run benchmarks:load_pretrained -- [--repeats 5] [--variant B/16]

Both load the same random weights from local folders (bv's format and timm's,
written from one model), so the figures compare only the loaders: reading the
safetensors file and building the model. The first forward pass (compilation in
JAX) is timed separately and not part of the ratio. Prints the median of
``--repeats`` runs; the ratio is bv / timm (below 1 means bv is faster).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def measure(variant: str = "B/16", resolution: int = 224, num_classes: int = 1000, repeats: int = 5) -> dict[str, Any]:
    """Seconds to load one ViT from a local folder with bv and with timm (median, min, max), and the logits check."""
    import jax
    import timm
    import torch

    from bv.vit import ViT
    from bvbench.stats import Spread

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = ViT.create(
        variant=variant,
        num_classes=num_classes,
        resolution=resolution,
        pool_type="tok",
        head_zeroinit=False,  # a random head, so that the logits check below means something
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        bv_dir, timm_dir = os.path.join(tmp, "bv"), os.path.join(tmp, "timm")
        model.save_pretrained(bv_dir)
        model.save_timm(timm_dir)
        size_mb = os.path.getsize(os.path.join(bv_dir, "model.safetensors")) / 2**20

        # Warm the page cache and imports for both, so neither pays for the first disk read.
        ViT.from_pretrained(bv_dir)
        timm.create_model(f"local-dir:{timm_dir}", pretrained=True)

        def bv_load() -> ViT:
            loaded = ViT.from_pretrained(bv_dir)
            jax.block_until_ready(loaded.params)
            return loaded

        def timm_load() -> Any:
            return timm.create_model(f"local-dir:{timm_dir}", pretrained=True).eval()

        bv_times, timm_times = [], []
        bv_model = timm_model = None
        for _ in range(repeats):  # alternated, so that a change of machine load hits both alike
            bv_s, bv_model = _seconds(bv_load)
            timm_s, timm_model = _seconds(timm_load)
            bv_times.append(bv_s)
            timm_times.append(timm_s)

        images = np.random.RandomState(0).uniform(-1, 1, (2, resolution, resolution, 3)).astype(np.float32)
        start = time.perf_counter()
        logits = np.asarray(bv_model(images))
        first_call_s = time.perf_counter() - start
        with torch.no_grad():
            reference = timm_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    return {
        "variant": variant,
        "resolution": resolution,
        "size_mb": size_mb,
        "bv_s": Spread.of(bv_times).to_dict(),
        "timm_s": Spread.of(timm_times).to_dict(),
        "bv_over_timm": Spread.of([b / t for b, t in zip(bv_times, timm_times)]).to_dict(),
        "bv_first_call_s": first_call_s,
        "max_logits_diff": float(np.abs(logits - reference).max()),
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
        "torch_threads": torch.get_num_threads(),
    }


def _seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    r = measure(args.variant, args.resolution, args.num_classes, args.repeats)
    print(
        f"ViT-{args.variant} at {args.resolution} px, {args.num_classes} classes: {r['size_mb']:.0f} MiB of float32 weights"
    )
    print(f"device: {r['device']}, torch threads: {r['torch_threads']}")
    bv_s, timm_s = r["bv_s"], r["timm_s"]
    print(f"bv   ViT.from_pretrained(folder):              {bv_s['median']:7.3f} s (median of {args.repeats})")
    print(f"timm create_model('local-dir:...', pretrained): {timm_s['median']:7.3f} s (median of {args.repeats})")
    print(f"ratio bv / timm: {r['bv_over_timm']['median']:.2f}")
    print(
        f"bv first forward (jit compile + run, batch 2): {r['bv_first_call_s']:.2f} s; "
        f"max |logits bv - timm| = {r['max_logits_diff']:.2e}"
    )


if __name__ == "__main__":
    main()
