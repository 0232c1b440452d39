"""``bv bench MODEL``: how fast a model runs here (inference: images per second and ms per batch).

    bv bench "vit(variant='B/16', resolution=224)"      # a fresh model, by its registered name
    bv bench org/vit-mnist --batch-size 64             # a Hub repo id or a model folder
    bv bench runs/vit_mnist                             # a training workdir (its latest checkpoint)

The first call (tracing and compilation) is timed apart from the ``--steps`` timed
calls that follow, each waited for on the device. Works in the lean install.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bv.core import cli, progress, registry
from bv.core.errors import UserError

__all__ = ["BenchError", "bench", "load_for_bench", "main"]


class BenchError(UserError, ValueError):
    """A model source that cannot be benchmarked, or bad settings."""


def load_for_bench(source: str) -> Any:
    """A Hub model: ``name(kwargs)`` creates a fresh one; a workdir is exported in memory; else from_pretrained."""
    if "(" in source and source.rstrip().endswith(")"):
        name, args, kwargs = registry.parse_call(source)
        if args:
            raise BenchError(f"{source!r}: give the model's settings as keywords, e.g. vit(variant='Ti/16').")
        hub_cls = registry.hub_class(name)
        if hub_cls is None:
            raise BenchError(
                f"The model {name!r} has no Hub class; models with one: {', '.join(registry.hub_model_names())}."
            )
        kwargs.setdefault("num_classes", 1000)
        return hub_cls.create(**kwargs)
    if os.path.isdir(os.path.join(source, "checkpoints")):
        from bv.core.export import build_model

        return build_model(source)[0]
    from bv.core.hub.model import load_model

    return load_model(source)


def bench(model: Any, *, batch_size: int = 32, steps: int = 20, seed: int = 0) -> dict[str, float]:
    """Times ``model(images)`` on random images of its input shape; returns the figures."""
    import jax

    if batch_size <= 0 or steps <= 0:
        raise BenchError(f"--batch-size and --steps must be positive, got {batch_size} and {steps}.")
    resolution, channels = int(model.config.resolution), int(model.config.channels)
    images = np.random.default_rng(seed).uniform(-1, 1, (batch_size, resolution, resolution, channels))
    images = jax.device_put(images.astype(np.float32))
    start = time.perf_counter()
    jax.block_until_ready(model(images))
    compile_s = time.perf_counter() - start
    times = []
    for _ in progress.bar(range(steps), total=steps, desc="bv bench", unit="batch", delay=0.5):
        start = time.perf_counter()
        jax.block_until_ready(model(images))
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params))
    return {
        "params_millions": params / 1e6,
        "first_call_s": compile_s,
        "ms_per_batch": 1000 * median,
        "images_per_s": batch_size / median,
        "images_per_s_per_device": batch_size / median / jax.device_count(),
    }


def main(argv: Sequence[str] | None = None, *, prog: str = "bv bench") -> None:
    """Console entry point of ``bv bench``."""
    parser = argparse.ArgumentParser(prog=prog, description="Time a model's inference on this machine.")
    parser.add_argument(
        "model",
        help="a Hub repo id, a model folder, a training workdir, or a fresh model as NAME(key=value, ...), "
        "e.g. \"vit(variant='Ti/16', resolution=224)\"",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per call (default 32)")
    parser.add_argument("--steps", type=int, default=20, help="timed calls after the first (default 20)")
    args = parser.parse_args(argv)
    with cli.user_errors(prog):
        model = load_for_bench(args.model)
        figures = bench(model, batch_size=args.batch_size, steps=args.steps)
    import jax

    res = model.config.resolution
    print(
        f"{model.config.model_name} ({figures['params_millions']:.2f} M params), batch {args.batch_size} at "
        f"{res}x{res} on {jax.device_count()} {jax.devices()[0].platform} device(s): "
        f"{figures['images_per_s']:.1f} images/s, {figures['ms_per_batch']:.1f} ms per batch "
        f"(median of {args.steps}); first call (compilation) {figures['first_call_s']:.1f} s"
    )
