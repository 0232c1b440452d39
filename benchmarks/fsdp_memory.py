"""Per-device memory of a ViT's params + Adam state under replicate, sharded-optimizer and FSDP layouts.

    ./pants run benchmarks:fsdp_memory -- [--variant L/16] [--mu-dtype bfloat16] [--min-size-mb 0 4]
    python benchmarks/fsdp_memory.py --variant B/16 --devices 8

Nothing is computed: the training state comes from ``jax.eval_shape`` of the
model init and of the optimizer as the trainer builds it
(``bv.core.optimizers.make_optimizer``), its layouts from
``bv.core.sharding.param_shardings`` over a ``("data", N)`` mesh of simulated
CPU devices, and the bytes from ``bv.core.sharding.bytes_per_device``. So the
figures hold for any device kind; activations, gradients and XLA's scratch
space come on top. "max/(total/N)" is the largest device's bytes over a
perfect 1/N split: N for a replicated state, 1.0 for a perfect shard.

Layouts (``config.sharding_strategy``):

* replicate: ``[(".*", "replicate")]``, what plain data parallelism does;
* opt-state fsdp: ``[("opt/.*", "fsdp(axis='data', min_size_mb=X)"), (".*", "replicate")]``,
  params replicated, the Adam moments sharded (ZeRO-1 style);
* fsdp: ``[(".*", "fsdp(axis='data', min_size_mb=X)")]``; leaves under X MiB stay replicated.

Printed on the project's CPU machine (jax 0.10.2, 8 simulated CPU devices; MB = 10**6 bytes)::

    $ PYTHONPATH=core:preprocessing:evaluators:models/vit python benchmarks/fsdp_memory.py
    ViT-B/16, 1000 classes, Adam (mu float32), 8 devices on a ("data", 8) mesh
    params: 86,566,120 in 199 arrays, 346.3 MB; optimizer state: 692.5 MB; total: 1038.8 MB
    layout                                         max/device   of params      of opt  max/(total/8)
    replicate (plain data parallel)                 1038.8 MB    346.3 MB    692.5 MB           8.00
    opt-state fsdp(min_size_mb=4), params repl.      642.4 MB    346.3 MB    296.2 MB           4.95
    fsdp(axis='data', min_size_mb=4)                 444.3 MB    148.1 MB    296.2 MB           3.42

    $ ... benchmarks/fsdp_memory.py --scan --min-size-mb 0 1 4
    ViT-B/16 (scan), 1000 classes, Adam (mu float32), 8 devices on a ("data", 8) mesh
    params: 86,566,120 in 23 arrays, 346.3 MB; optimizer state: 692.5 MB; total: 1038.8 MB
    layout                                         max/device   of params      of opt  max/(total/8)
    replicate (plain data parallel)                 1038.8 MB    346.3 MB    692.5 MB           8.00
    opt-state fsdp(min_size_mb=0), params repl.      432.8 MB    346.3 MB     86.6 MB           3.33
    fsdp(axis='data', min_size_mb=0)                 129.8 MB     43.3 MB     86.6 MB           1.00
    opt-state fsdp(min_size_mb=1), params repl.      434.7 MB    346.3 MB     88.5 MB           3.35
    fsdp(axis='data', min_size_mb=1)                 132.7 MB     44.2 MB     88.5 MB           1.02
    opt-state fsdp(min_size_mb=4), params repl.      444.3 MB    346.3 MB     98.0 MB           3.42
    fsdp(axis='data', min_size_mb=4)                 147.0 MB     49.0 MB     98.0 MB           1.13

    $ ... benchmarks/fsdp_memory.py --variant L/16 --min-size-mb 0 4
    ViT-L/16, 1000 classes, Adam (mu float32), 8 devices on a ("data", 8) mesh
    params: 304,324,584 in 391 arrays, 1217.3 MB; optimizer state: 2434.6 MB; total: 3651.9 MB
    layout                                         max/device   of params      of opt  max/(total/8)
    replicate (plain data parallel)                 3651.9 MB   1217.3 MB   2434.6 MB           8.00
    opt-state fsdp(min_size_mb=0), params repl.     1521.6 MB   1217.3 MB    304.3 MB           3.33
    fsdp(axis='data', min_size_mb=0)                 456.5 MB    152.2 MB    304.3 MB           1.00
    opt-state fsdp(min_size_mb=4), params repl.     1538.0 MB   1217.3 MB    320.7 MB           3.37
    fsdp(axis='data', min_size_mb=4)                 481.0 MB    160.3 MB    320.7 MB           1.05

    $ ... benchmarks/fsdp_memory.py --variant L/16 --mu-dtype bfloat16 --scan
    ViT-L/16 (scan), 1000 classes, Adam (mu bfloat16), 8 devices on a ("data", 8) mesh
    params: 304,324,584 in 23 arrays, 1217.3 MB; optimizer state: 1825.9 MB; total: 3043.2 MB
    layout                                         max/device   of params      of opt  max/(total/8)
    replicate (plain data parallel)                 3043.2 MB   1217.3 MB   1825.9 MB           8.00
    opt-state fsdp(min_size_mb=4), params repl.     1457.8 MB   1217.3 MB    240.5 MB           3.83
    fsdp(axis='data', min_size_mb=4)                 400.8 MB    160.3 MB    240.5 MB           1.05

What they say: ViT-B/16's per-block attention kernels (768x12x64 fp32, 2.4 MB)
and their Adam moments fall under fsdp's default 4 MiB threshold, so with
one array per block (the default layout) about a third of the state (359 MB)
stays whole on every device: 3.42x a perfect split. Stacking the blocks (``model.scan=True``,
one array per weight for all 12 blocks) or a lower ``min_size_mb`` brings it to
1.0-1.1x. ViT-L/16's bigger blocks clear 4 MiB in fp32 (1.05x).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="B/16", help="ViT variant, e.g. B/16 or L/16 (default B/16)")
    parser.add_argument("--res", type=int, default=224, help="image resolution in pixels (sets the posemb size)")
    parser.add_argument("--classes", type=int, default=1000, help="classes of the head")
    parser.add_argument("--scan", action="store_true", help="stack the encoder blocks (model.scan=True)")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices on the data axis")
    parser.add_argument(
        "--mu-dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of Adam's first moment"
    )
    parser.add_argument(
        "--min-size-mb",
        type=float,
        nargs="+",
        default=[4.0],
        help="fsdp's min_size_mb: leaves smaller than this many MiB stay replicated (several values allowed)",
    )
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error(f"--devices must be at least 1, got {args.devices}.")
    return args


def simulate_cpu_devices(count: int) -> None:
    """Asks XLA for ``count`` CPU devices, unless XLA_FLAGS already sets a count (must run before jax starts)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _DEVICE_COUNT_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_DEVICE_COUNT_FLAG}={count}".strip()


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.1f} MB"


def state_shapes(args: argparse.Namespace) -> Any:
    """``{"params": ..., "opt": ...}`` as ``jax.ShapeDtypeStruct``s, built the way the trainer builds them."""
    import jax
    import ml_collections

    from bv.core.optimizers import make_optimizer
    from bv.core.tasks import ClassificationTask

    config = ml_collections.ConfigDict(
        dict(
            model_name="vit",
            num_classes=args.classes,
            model=dict(variant=args.variant, pool_type="gap", scan=args.scan),
            optax_name="scale_by_adam",
            optax=dict(mu_dtype=args.mu_dtype),
            lr=1e-3,
            wd=1e-4,
            schedule=dict(decay_type="cosine", warmup_steps=10),
            grad_clip_norm=1.0,
        )
    )
    task = ClassificationTask(config)
    batch_spec = {"image": jax.ShapeDtypeStruct((args.devices, args.res, args.res, 3), jax.numpy.float32)}
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch_spec)
    tx, _ = make_optimizer(config, params, total_steps=1000)
    return {"params": params, "opt": jax.eval_shape(tx.init, params)}


def per_device_memory(
    variant: str = "B/16", device_counts: Sequence[int] = (1, 2, 4, 8), scan: bool = False, min_size_mb: float = 4.0
) -> dict[str, Any]:
    """The largest device's bytes of params + Adam state for each device count, replicated and FSDP.

    Needs at least ``max(device_counts)`` devices (simulated CPU devices: ``simulate_cpu_devices``
    before jax starts). For the suite (``benchmarks/all.py``).
    """
    import jax

    from bv.core.sharding import bytes_per_device, make_mesh, param_shardings

    args = argparse.Namespace(
        variant=variant, res=224, classes=1000, scan=scan, devices=max(device_counts), mu_dtype="float32"
    )
    state = state_shapes(args)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    fsdp = f"fsdp(axis='data', min_size_mb={min_size_mb:g})"
    rows = []
    for count in device_counts:
        mesh = make_mesh([("data", count)], devices=jax.devices("cpu")[:count])
        row: dict[str, Any] = {"devices": count}
        for label, strategy in (("replicate", [(".*", "replicate")]), ("fsdp", [(".*", fsdp)])):
            per_device = bytes_per_device(state, param_shardings(state, mesh, strategy))
            row[f"{label}_max_bytes"] = max(per_device.values())
        rows.append(row)
    return {"variant": variant, "scan": scan, "strategy": fsdp, "state_bytes": total, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    simulate_cpu_devices(args.devices)

    import jax

    from bv.core.sharding import bytes_per_device, make_mesh, param_shardings

    cpus = jax.devices("cpu")
    if len(cpus) < args.devices:
        raise SystemExit(
            f"fsdp_memory: error: --devices {args.devices} but jax has {len(cpus)} CPU devices; XLA_FLAGS="
            f"{os.environ.get('XLA_FLAGS')!r} already sets the count. Unset it or raise its {_DEVICE_COUNT_FLAG}."
        )
    mesh = make_mesh([("data", args.devices)], devices=cpus[: args.devices])
    state = state_shapes(args)

    def total_bytes(tree: Any) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    params_bytes, opt_bytes = total_bytes(state["params"]), total_bytes(state["opt"])
    total = params_bytes + opt_bytes
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    num_arrays = len(jax.tree.leaves(state["params"]))

    layouts: list[tuple[str, list[tuple[str, str]]]] = [("replicate (plain data parallel)", [(".*", "replicate")])]
    for min_mb in args.min_size_mb:
        fsdp = f"fsdp(axis='data', min_size_mb={min_mb:g})"
        layouts.append(
            (f"opt-state fsdp(min_size_mb={min_mb:g}), params repl.", [("opt/.*", fsdp), (".*", "replicate")])
        )
        layouts.append((fsdp, [(".*", fsdp)]))

    print(
        f"ViT-{args.variant}{' (scan)' if args.scan else ''}, {args.classes} classes, Adam (mu {args.mu_dtype}), "
        f'{args.devices} devices on a ("data", {args.devices}) mesh'
    )
    print(
        f"params: {num_params:,} in {num_arrays} arrays, {_mb(params_bytes)}; "
        f"optimizer state: {_mb(opt_bytes)}; total: {_mb(total)}"
    )
    print(
        f"{'layout':<45}{'max/device':>12}{'of params':>12}{'of opt':>12}{'max/(total/' + str(args.devices) + ')':>15}"
    )
    for label, strategy in layouts:
        shardings = param_shardings(state, mesh, strategy)
        per_device = bytes_per_device(state, shardings)
        if len(per_device) != args.devices:
            raise AssertionError(f"{label}: state found on {len(per_device)} devices, expected {args.devices}.")
        worst = max(per_device, key=lambda d: per_device[d])
        of_params = bytes_per_device(state["params"], shardings["params"])[worst]
        ratio = per_device[worst] / (total / args.devices)
        print(
            f"{label:<45}{_mb(per_device[worst]):>12}{_mb(of_params):>12}"
            f"{_mb(per_device[worst] - of_params):>12}{ratio:>15.2f}"
        )


if __name__ == "__main__":
    main()
