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
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import jax
    import timm
    import torch

    from bv.vit import ViT

    torch.set_num_threads(os.cpu_count() or 1)
    model = ViT.create(
        variant=args.variant,
        num_classes=args.num_classes,
        resolution=args.resolution,
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

        bv_s, bv_model = _median_seconds(bv_load, args.repeats)
        timm_s, timm_model = _median_seconds(timm_load, args.repeats)

        images = np.random.RandomState(0).uniform(-1, 1, (2, args.resolution, args.resolution, 3)).astype(np.float32)
        start = time.perf_counter()
        logits = np.asarray(bv_model(images))
        first_call_s = time.perf_counter() - start
        with torch.no_grad():
            reference = timm_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
        max_diff = float(np.abs(logits - reference).max())

    print(
        f"ViT-{args.variant} at {args.resolution} px, {args.num_classes} classes: {size_mb:.0f} MiB of float32 weights"
    )
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), torch threads: {torch.get_num_threads()}")
    print(f"bv   ViT.from_pretrained(folder):              {bv_s:7.3f} s (median of {args.repeats})")
    print(f"timm create_model('local-dir:...', pretrained): {timm_s:7.3f} s (median of {args.repeats})")
    print(f"ratio bv / timm: {bv_s / timm_s:.2f}")
    print(
        f"bv first forward (jit compile + run, batch 2): {first_call_s:.2f} s; max |logits bv - timm| = {max_diff:.2e}"
    )


if __name__ == "__main__":
    main()
