"""Checkpoint benchmarks: save/restore GB/s, step time with async vs sync saves, host memory of a save.

    ./pants run benchmarks:checkpoint_io -- throughput [--variant B/16]
    ./pants run benchmarks:checkpoint_io -- steps [--variant B/16 --steps 30 --every 5]
    ./pants run benchmarks:checkpoint_io -- memory [--variant g/14 --depth 8]

The state is a ViT's params and Adam moments as the trainer builds them (shapes from
``jax.eval_shape``, then filled with random values on the devices, so each process
only ever holds its own shards), laid out by FSDP over 8 simulated CPU devices.

* ``throughput``: one process; a synchronous save (with and without zstd), the time
  an asynchronous ``save()`` blocks the caller, and a restore onto the same layout,
  in GB/s; and format 1's save (gather, one safetensors file) for reference.
* ``steps``: one process; a loop of jitted steps that update every leaf (and burn a
  fixed amount of compute) with a checkpoint every N steps: mean step time with no
  checkpoints, synchronous ones, and asynchronous ones.
* ``memory``: 2 processes x 4 devices. Each process reports its resident memory
  before and at the peak of an Orbax save, and of the whole-state gather that
  format 1 did (``process_allgather``). With ``--depth`` below the model's, every
  leaf still has the full model's size; the full model's per-process figures are
  then computed from its shapes and layout (no allocation).

Figures are printed; speed figures are noisy on a shared machine, so compare
ratios from one run. Results from the project's CPU machine are in ``README.md``
of bv-core (section "Checkpoints").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["throughput", "steps", "memory"])
    parser.add_argument("--variant", default=None, help="ViT variant (default: B/16; memory: g/14)")
    parser.add_argument("--depth", type=int, default=None, help="fewer blocks than the variant (same leaf sizes)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=5, help="checkpoint every N steps (steps)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB"


def state_shapes(variant: str, depth: int | None) -> Any:
    """``{"params", "opt"}`` of a ViT with Adam as ``jax.ShapeDtypeStruct``s (built as the trainer does)."""
    import jax
    import ml_collections

    from bv.core.optimizers import make_optimizer
    from bv.core.tasks import ClassificationTask

    model: dict[str, Any] = dict(variant=variant, pool_type="gap")
    if depth:
        model["depth"] = depth
    config = ml_collections.ConfigDict(
        dict(
            model_name="vit",
            num_classes=1000,
            model=model,
            optax_name="scale_by_adam",
            lr=1e-3,
            wd=1e-4,
            schedule=dict(decay_type="cosine", warmup_steps=10),
        )
    )
    task = ClassificationTask(config)
    batch_spec = {"image": jax.ShapeDtypeStruct((8, 224, 224, 3), jax.numpy.float32)}
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch_spec)
    tx, _ = make_optimizer(config, params, total_steps=1000)
    return {"params": params, "opt": jax.eval_shape(tx.init, params)}


def fsdp_layout(shapes: Any) -> tuple[Any, Any]:
    """The FSDP shardings of ``shapes`` over all devices, and the mesh."""
    import jax

    from bv.core.sharding import make_mesh, param_shardings

    mesh = make_mesh([("data", jax.device_count())])
    return param_shardings(shapes, mesh, [(".*", "fsdp(axis='data', min_size_mb=0)")]), mesh


def random_state(shapes: Any, shardings: Any) -> Any:
    """Random values of ``shapes`` created on the devices: each process makes only its own shards."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(shapes)

    def make() -> Any:
        keys = jax.random.split(jax.random.key(0), len(leaves))
        values = [
            (
                jax.random.normal(k, s.shape).astype(s.dtype)
                if jnp.issubdtype(s.dtype, jnp.floating)
                else jnp.zeros(s.shape, s.dtype)
            )
            for k, s in zip(keys, leaves)
        ]
        return jax.tree.unflatten(treedef, values)

    return jax.jit(make, out_shardings=shardings)()


def nbytes(tree: Any) -> int:
    import jax
    import numpy as np

    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def copied_per_process(shapes: Any, shardings: Any, processes: int) -> list[int]:
    """Bytes each process copies to host in a save: its devices' shards, one copy per distinct shard."""
    import jax
    import numpy as np

    out = [0] * processes
    for shape, sharding in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
        seen: set[tuple] = set()
        for device, index in sharding.devices_indices_map(shape.shape).items():
            key = tuple((s.start, s.stop) for s in index)
            if key in seen:
                continue  # a replica: Orbax writes each distinct shard once
            seen.add(key)
            size = int(np.prod([len(range(*s.indices(n))) for s, n in zip(index, shape.shape)] or [1]))
            out[device.process_index % processes] += size * np.dtype(shape.dtype).itemsize
    return out


class PeakRss:
    """Samples this process's resident memory every 5 ms while active."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> PeakRss:
        self.peak = self.now()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def throughput(args: argparse.Namespace, root: str) -> None:
    import jax

    from bv.core import checkpoint

    shapes = state_shapes(args.variant or "B/16", args.depth)
    shardings, _ = fsdp_layout(shapes)
    state = random_state(shapes, shardings)
    jax.block_until_ready(state)
    size = nbytes(shapes)
    print(f"ViT-{args.variant or 'B/16'} + Adam: {_gb(size)} on {jax.device_count()} devices (FSDP)")
    for attempt in range(2):
        start = time.perf_counter()
        old_format_save(state, os.path.join(root, "format1.safetensors"))
        seconds = time.perf_counter() - start
        print(f"  format 1 (gather, one safetensors file): save {seconds:.2f} s ({size / seconds / 1e9:.2f} GB/s)")
    for attempt, compress in enumerate((True, False, True, False)):
        workdir = os.path.join(root, f"tp{attempt}")
        start = time.perf_counter()
        with checkpoint.CheckpointWriter(workdir, asynchronous=False, compress=compress) as writer:
            writer.save(1, state)
        save_s = time.perf_counter() - start
        on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(workdir) for f in fs)
        with checkpoint.CheckpointWriter(workdir, compress=compress) as writer:
            start = time.perf_counter()
            writer.save(2, state)
            blocked_s = time.perf_counter() - start
            writer.wait()
            async_total_s = time.perf_counter() - start
        template = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
        start = time.perf_counter()
        latest = checkpoint.latest(workdir)
        assert latest is not None
        restored, _ = checkpoint.restore(latest, template)
        jax.block_until_ready(restored)
        restore_s = time.perf_counter() - start
        print(
            f"  zstd {'on ' if compress else 'off'} ({_gb(on_disk)} on disk): sync save {save_s:.2f} s ({size / save_s / 1e9:.2f} GB/s); async save blocks "
            f"{blocked_s:.2f} s, done after {async_total_s:.2f} s; restore {restore_s:.2f} s "
            f"({size / restore_s / 1e9:.2f} GB/s)"
        )
        del restored
        shutil.rmtree(workdir)


def throughput_figures(variant: str, root: str, repeats: int = 3, depth: int | None = None) -> dict[str, Any]:
    """Save and restore rates of a ViT + Adam state (FSDP over all devices, zstd off), ``repeats`` times each.

    Returns the state's bytes and, as ``{"median", "min", "max", "runs"}``: the synchronous save's
    GB/s, the seconds an asynchronous save blocks the caller, and the restore's GB/s. For the suite
    (``benchmarks/all.py``).
    """
    import jax

    from bv.core import checkpoint
    from bvbench.stats import Spread

    shapes = state_shapes(variant, depth)
    shardings, _ = fsdp_layout(shapes)
    state = random_state(shapes, shardings)
    jax.block_until_ready(state)
    size = nbytes(shapes)
    template = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    save, blocked, restore = [], [], []
    for attempt in range(repeats):
        workdir = os.path.join(root, f"suite{attempt}")
        start = time.perf_counter()
        with checkpoint.CheckpointWriter(workdir, asynchronous=False) as writer:
            writer.save(1, state)
        save.append(size / (time.perf_counter() - start) / 1e9)
        with checkpoint.CheckpointWriter(workdir) as writer:
            start = time.perf_counter()
            writer.save(2, state)
            blocked.append(time.perf_counter() - start)
        latest = checkpoint.latest(workdir)
        assert latest is not None
        start = time.perf_counter()
        restored, _ = checkpoint.restore(latest, template)
        jax.block_until_ready(restored)
        restore.append(size / (time.perf_counter() - start) / 1e9)
        del restored
        shutil.rmtree(workdir)
    return {
        "variant": variant,
        "state_bytes": size,
        "devices": jax.device_count(),
        "save_gb_s": Spread.of(save).to_dict(),
        "async_blocks_s": Spread.of(blocked).to_dict(),
        "restore_gb_s": Spread.of(restore).to_dict(),
    }


def old_format_save(state: Any, path: str) -> None:
    """What bv-core's format 1 did: the whole state to host memory, then one file, fsynced."""
    import jax
    import numpy as np
    import safetensors.numpy

    from bv.core.tree import flatten_with_names

    arrays = {name: np.ascontiguousarray(jax.device_get(x)) for name, x in flatten_with_names(state)}
    arrays = {k: v.view(np.uint16) if v.dtype.name == "bfloat16" else v for k, v in arrays.items()}
    safetensors.numpy.save_file(arrays, path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    os.remove(path)


def steps(args: argparse.Namespace, root: str) -> None:
    import jax
    import jax.numpy as jnp

    from bv.core import checkpoint

    shapes = state_shapes(args.variant or "B/16", args.depth)
    shardings, mesh = fsdp_layout(shapes)
    work = jax.device_put(jnp.ones((8, 512, 512)), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))

    @jax.jit
    def step(state: Any, work: jax.Array) -> tuple[Any, jax.Array]:
        for _ in range(6):  # a fixed amount of compute per step, like a forward and backward pass
            work = jnp.tanh(work @ work) * 0.5
        return jax.tree.map(lambda x: x * 0.999 + work.mean().astype(x.dtype), state), work

    step = jax.jit(step, donate_argnums=0)
    print(
        f"ViT-{args.variant or 'B/16'} + Adam: {_gb(nbytes(shapes))} on {jax.device_count()} devices (FSDP); "
        f"{args.steps} steps, a checkpoint every {args.every}"
    )
    for mode in ("none", "sync", "async", "none", "sync", "async"):
        state = random_state(shapes, shardings)
        state, w = step(state, work)  # compile
        jax.block_until_ready(state)
        workdir = os.path.join(root, f"steps-{mode}")
        writer = checkpoint.CheckpointWriter(workdir, asynchronous=mode == "async") if mode != "none" else None
        start = time.perf_counter()
        for i in range(1, args.steps + 1):
            state, w = step(state, w)
            if writer and i % args.every == 0:
                writer.save(i, state)
        jax.block_until_ready(state)
        if writer:
            writer.close()  # the run waits for its last save
        seconds = time.perf_counter() - start
        print(f"  {mode:>5}: {1000 * seconds / args.steps:7.1f} ms/step ({seconds:.1f} s)")
        shutil.rmtree(workdir, ignore_errors=True)
        del state


def memory_worker(args: argparse.Namespace, root: str) -> None:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from bv.core import checkpoint

    shapes = state_shapes(args.variant or "g/14", args.depth)
    shardings, _ = fsdp_layout(shapes)
    state = random_state(shapes, shardings)
    jax.block_until_ready(state)
    local = sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards if s.replica_id == 0)
    report = {"process": jax.process_index(), "state": nbytes(shapes), "local": local}
    multihost_utils.sync_global_devices("ready")
    with PeakRss() as rss:
        before = rss.peak
        checkpoint.save(os.path.join(root, "mem"), 1, state)
    report["save_extra"] = rss.peak - before
    multihost_utils.sync_global_devices("saved")
    with PeakRss() as rss:
        before = rss.peak
        gathered = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in jax.tree.leaves(state)]
    report["gather_extra"] = rss.peak - before
    del gathered
    if args.depth:  # the full model on this topology, from its shapes and layout alone
        full = state_shapes(args.variant or "g/14", None)
        full_shardings, _ = fsdp_layout(full)
        report["full"] = {"state": nbytes(full), "params": sum(x.size for x in jax.tree.leaves(full["params"]))}
        report["full"]["copied"] = copied_per_process(full, full_shardings, jax.process_count())
    print("REPORT " + json.dumps(report), flush=True)


def memory(args: argparse.Namespace, root: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BV_")}
    env.update(XLA_FLAGS=f"{_DEVICE_COUNT_FLAG}=4", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--dir", root]
    procs = [
        subprocess.Popen(
            [*command, "--worker", str(i), "--port", str(port)],
            env={
                **env,
                "BV_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "BV_NUM_PROCESSES": "2",
                "BV_PROCESS_ID": str(i),
            },
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    reports = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed with exit code {p.returncode}")
        reports += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("REPORT ")]
    variant = args.variant or "g/14"
    depth = f", {args.depth} blocks" if args.depth else ""
    print(f"ViT-{variant}{depth} + Adam: {_gb(reports[0]['state'])}; 2 processes x 4 devices, FSDP")
    print(f"  {'process':>7} {'holds':>9} {'Orbax save: extra host memory':>30} {'format 1 gather: extra':>24}")
    for r in sorted(reports, key=lambda r: r["process"]):
        print(
            f"  {r['process']:>7} {_gb(r['local']):>9} {_gb(r['save_extra']):>19} ({r['save_extra'] / r['state']:.2f} x state)"
            f" {_gb(r['gather_extra']):>12} ({r['gather_extra'] / r['state']:.2f} x state)"
        )
    full = reports[0].get("full")
    if full:
        print(
            f"  full ViT-{variant} ({full['params'] / 1e9:.2f}B params) + Adam: {_gb(full['state'])}; an Orbax save "
            "copies "
            + ", ".join(f"{_gb(c)} ({c / full['state']:.2f} x state)" for c in full["copied"])
            + " to host on processes 0 and 1; format 1 gathered the whole state on every process."
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is None and args.what != "memory":
        flags = os.environ.get("XLA_FLAGS", "")
        if _DEVICE_COUNT_FLAG not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {_DEVICE_COUNT_FLAG}=8".strip()
    root = args.dir or tempfile.mkdtemp(prefix="bv-ckpt-bench-")
    try:
        if args.worker is not None:
            from bv.core import distributed

            distributed.initialize_from_env()
            memory_worker(args, root)
        else:
            {"throughput": throughput, "steps": steps, "memory": memory}[args.what](args, root)
    finally:
        if args.worker is None and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
