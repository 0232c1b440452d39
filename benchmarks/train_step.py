"""Throughput of one bv training step: compile time, step time, img/s and MFU.

    ./pants run benchmarks:train_step -- --variant S/16 --res 224 --batch 32
    python benchmarks/train_step.py --variant B/16 --res 224 --batch 256 --dtype bfloat16

The step is the trainer's own (``bv.core.train.make_train_step``: forward,
backward, Adam update) on random data already on the device, so input
pipeline cost is excluded. Model FLOPs come from XLA's cost analysis of the
compiled step; MFU divides the achieved FLOP/s by the device's peak (bf16 dense
for ``--dtype bfloat16``, else fp32/TF32), known for common accelerators. On a
CPU there is no meaningful peak, so it prints the achieved FLOP/s only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bv.core.optimizers import make_optimizer
from bv.core.tasks import ClassificationTask
from bv.core.train import make_train_step

# Peak dense FLOP/s per device: (bf16, fp32 or TF32 as XLA uses it for fp32 matmuls).
PEAK_FLOPS = {
    "H100": (989e12, 494e12),
    "H200": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L4": (121e12, 60e12),
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),
    "TPU v5p": (459e12, 459e12),
}


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    kind = device.device_kind
    for name, (bf16, fp32) in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return bf16 if dtype == "bfloat16" else fp32
    return None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="S/16", help="ViT variant, e.g. Ti/16, S/16, B/16")
    parser.add_argument("--res", type=int, default=224, help="image resolution in pixels")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="matmul dtype")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--classes", type=int, default=1000)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = ml_collections.ConfigDict(
        dict(
            model_name="vit",
            num_classes=args.classes,
            model=dict(variant=args.variant, pool_type="gap", dtype_mm=args.dtype),
            optax_name="scale_by_adam",
            lr=1e-3,
            wd=1e-4,
            schedule=dict(decay_type="cosine", warmup_steps=10),
            grad_clip_norm=1.0,
        )
    )
    task = ClassificationTask(config)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.uniform(-1, 1, (args.batch, args.res, args.res, 3)), jnp.float32),
        "labels": jax.nn.one_hot(rng.integers(0, args.classes, args.batch), args.classes),
    }
    params = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
    tx, schedules = make_optimizer(config, params, total_steps=1000)
    opt_state = jax.jit(tx.init)(params)
    step_fn = jax.jit(make_train_step(task, tx, schedules), donate_argnums=(0, 1))
    key = jax.random.PRNGKey(1)

    t0 = time.perf_counter()
    compiled = step_fn.lower(params, opt_state, batch, key, jnp.int32(1)).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    params, opt_state, metrics = compiled(params, opt_state, batch, key, jnp.int32(1))  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        params, opt_state, metrics = compiled(params, opt_state, batch, key, jnp.int32(i + 2))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)

    step_s = statistics.median(times)
    device = jax.devices()[0]
    n = jax.device_count()
    achieved = flops / step_s
    peak = peak_flops(device, args.dtype)
    print(f"device: {device.device_kind} x{n} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"model: ViT-{args.variant} at {args.res}px, batch {args.batch}, matmul dtype {args.dtype}")
    print(f"compile: {compile_s:.1f} s")
    print(
        f"step: {step_s * 1e3:.1f} ms (median of {args.steps}; min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})"
    )
    print(f"throughput: {args.batch / step_s:.1f} img/s ({args.batch / step_s / n:.1f} img/s/device)")
    print(f"model FLOPs per step (XLA cost analysis): {flops / 1e9:.1f} GFLOP; achieved {achieved / 1e12:.3f} TFLOP/s")
    if peak:
        print(f"MFU: {100 * achieved / (peak * n):.1f}% of {peak / 1e12:.0f} TFLOP/s peak per device")
    else:
        print(f"MFU: n/a (no known peak for {device.device_kind!r}); achieved {achieved / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
