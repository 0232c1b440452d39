"""Orbax checkpoints across topologies: 2 processes x 4 devices (FSDP) write only their own shards, and
1 process x 8 devices and 1 device restore the same bits.

The processes are real ``jax.distributed`` processes on 127.0.0.1 (bv's ``BV_*`` variables), each
with 4 simulated CPU devices. The state is built on the devices from a formula, so the test knows
every value without any process holding the whole state.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from bv.core import checkpoint

ROWS = 256  # rows of each FSDP-sharded matrix: 32 per device on 8 devices

STATE = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    ROWS = 256

    def build(fsdp=True):
        devices = np.array(jax.devices())
        mesh = Mesh(devices, ("data",))
        sharded = NamedSharding(mesh, P("data") if fsdp else P())
        replicated = NamedSharding(mesh, P())

        def values(seed, shape, dtype):
            # Random bits do not compress, so the bytes on disk measure what each process wrote.
            # jax.random gives the same values on any sharding (threefry is partitionable).
            return jax.random.normal(jax.random.key(seed), shape).astype(dtype)

        make = jax.jit(
            lambda: {
                "params": {"w": values(1, (ROWS, 512), jnp.float32), "b": values(2, (ROWS, 64), jnp.bfloat16)},
                "opt": {"mu": values(3, (ROWS, 512), jnp.float32), "nu": values(4, (ROWS, 512), jnp.float32)},
                "step": jnp.int32(10),
                "rng": jax.random.key(7),
            },
            out_shardings={"params": sharded, "opt": sharded, "step": replicated, "rng": replicated},
        )
        return make()
    """
)

WRITER = textwrap.dedent(
    """
    import json, resource, sys
    from bv.core import distributed
    distributed.initialize_from_env()
    import jax
    from bv.core import checkpoint
    exec(open(sys.argv[2]).read())

    state = build(fsdp=True)
    local = sum(s.data.nbytes for leaf in jax.tree.leaves(state) if hasattr(leaf, "addressable_shards")
                for s in leaf.addressable_shards if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key))
    with checkpoint.CheckpointWriter(sys.argv[1]) as writer:
        writer.save(10, state, metadata={"data_index": 640})
    print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "local_bytes": local}))
    """
)

READER = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from bv.core import checkpoint
    exec(open(sys.argv[2]).read())

    template = jax.eval_shape(build)  # the FSDP layout on this process's 8 devices
    template = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s.sharding),
                            template, build())
    restored, meta = checkpoint.restore(checkpoint.latest(sys.argv[1]), template)
    want = build()
    same = all(
        np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a).tobytes()
        == np.asarray(jax.random.key_data(b) if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key) else b).tobytes()
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want))
    )
    shardings = sorted({str(leaf.sharding.spec) for leaf in jax.tree.leaves(restored["params"])})
    print(json.dumps({"devices": jax.device_count(), "bitwise": same, "meta": meta, "specs": shardings}))
    """
)


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BV_", "XLA_FLAGS"))}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(sys.path),
        TF_CPP_MIN_LOG_LEVEL="3",
        **extra,
    )
    return env


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    root = tmp_path_factory.mktemp("multihost")
    state_file = root / "state.py"
    state_file.write_text(STATE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root / "run"), str(state_file)],
            env=_env(4, BV_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", BV_NUM_PROCESSES="2", BV_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    return root / "run", state_file, [_last_json(out) for out, _ in outputs]


def _bytes_written_by(path: str, process: int) -> int:
    """Bytes of the array files in the ``ocdbt.process_<i>`` folders (what process ``i`` wrote)."""
    total = 0
    for folder, _, files in os.walk(path):
        if f"ocdbt.process_{process}" in folder.split(os.sep):
            total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total


def test_each_process_writes_only_its_own_shards(written) -> None:
    workdir, _, reports = written
    assert [r["devices"] for r in reports] == [8, 8]
    path = checkpoint.latest(str(workdir))
    assert path is not None and checkpoint.read_metadata(path) == {"data_index": 640, "step": 10}
    state_bytes = ROWS * (512 * 4 * 3 + 64 * 2)
    for report in reports:
        # FSDP over 8 devices, 4 per process: each process holds half the state...
        assert report["local_bytes"] == pytest.approx(state_bytes / 2, rel=0.01)
        # ... and writes about that half (plus small OCDBT indices), never the whole state.
        written_bytes = _bytes_written_by(path, report["process"])
        assert 0.45 * state_bytes < written_bytes < 0.55 * state_bytes, (report, written_bytes, state_bytes)


def test_restore_onto_eight_devices_of_one_process_is_bitwise(written) -> None:
    workdir, state_file, _ = written
    result = subprocess.run(
        [sys.executable, "-c", READER, str(workdir), str(state_file)],
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = _last_json(result.stdout)
    assert report["devices"] == 8 and report["bitwise"], report
    assert report["specs"] == ["P('data',)"]  # placed as FSDP shards, not replicated
    assert report["meta"]["step"] == 10


def test_restore_onto_one_device_is_bitwise(written) -> None:
    workdir, state_file, _ = written
    namespace: dict = {}
    exec(state_file.read_text(), namespace)
    # This process has a single device: the same formula, unsharded, is the expected state.
    want = namespace["build"](fsdp=False)
    latest = checkpoint.latest(str(workdir))
    assert latest is not None
    restored, _ = checkpoint.restore(latest, want)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    params = checkpoint.load_params(latest)  # the export path: no template, no opt state
    assert params["w"].shape == (ROWS, 512) and params["b"].dtype.name == "bfloat16"
