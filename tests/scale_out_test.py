"""One config on 1 device, 8 simulated devices (data-parallel, FSDP, data x model), 2 processes: same losses
(and, for 2 processes, the same evaluation).

Each case trains a small ViT on MNIST-5k for 20 steps in a fresh Python process whose CPU is split into
simulated devices (``--xla_force_host_platform_device_count``), and the per-step training losses from
``metrics.jsonl`` are compared. Two-process runs use ``jax.distributed`` on 127.0.0.1 (bv's BV_* variables).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

STEPS = 20
RTOL = 1e-5

CASES = {
    "dp": {},
    "fsdp": {"sharding_strategy": [(".*", "fsdp(axis='data', min_size_mb=0)")]},
    "data_x_model": {
        "mesh": [("data", 4), ("model", 2)],
        "sharding_strategy": [(".*", "logical")],
        "sharding_rules": [("act_batch", "data"), ("mlp", "model"), ("heads", "model")],
    },
    "accum4": {"grad_accum_steps": 4},
}
# Scanned blocks with remat (initialised differently from the loop, so compared with each other):
# replicated, and sharded by FSDP over the devices.
SCAN_MODEL = dict(patch_size=(7, 7), width=32, depth=2, num_heads=2, mlp_dim=64, pool_type="gap", scan=True)
SCAN_CASES = {
    "dp_scan": {"model": SCAN_MODEL},
    "fsdp_scan": {"model": SCAN_MODEL, "sharding_strategy": [(".*", "fsdp(axis='data', min_size_mb=0)")]},
}

RUNNER = textwrap.dedent(
    """
    import json, logging, sys
    from bv.core import distributed
    distributed.initialize_from_env()
    import jax
    from bv.core import train
    from bv.core.config import load_config

    data_dir, runs = sys.argv[1], json.loads(sys.argv[2])
    for workdir, total_steps, extra in runs:
        config = load_config("bv.vit.configs.mnist:runlocal")
        config.input.data.data_dir = data_dir
        config.evals = {}
        config.total_steps = total_steps
        config.ckpt_steps = 10
        config.log_training_steps = 1
        config.input.batch_size = 32
        config.input.host_invariant = True
        config.model = dict(patch_size=(7, 7), width=32, depth=2, num_heads=2, mlp_dim=64, pool_type="gap")
        # A constant lr with warmup: a run stopped at step 10 is the first half of the 20-step run.
        config.schedule = dict(decay_type="constant", warmup_steps=2)
        with config.unlocked():
            for key, value in extra.items():
                config[key] = value
        train.train(config, workdir)
        print("DONE", workdir, jax.process_index(), jax.device_count(), flush=True)
    """
)


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BV_", "XLA_FLAGS"))}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(sys.path),
        **extra,
    )
    return env


def _run(data_dir: Path, runs: list, devices: int, processes: int = 1) -> None:
    arg = json.dumps([[str(w), n, extra] for w, n, extra in runs])
    if processes == 1:
        result = subprocess.run(
            [sys.executable, "-c", RUNNER, str(data_dir), arg],
            env=_env(devices),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(data_dir), arg],
            env=_env(
                devices,
                BV_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                BV_NUM_PROCESSES=str(processes),
                BV_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    try:
        outputs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]


def _losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["training_loss"] for r in records if "training_loss" in r}


def _assert_same_losses(got: dict[int, float], want: dict[int, float], steps: range) -> None:
    assert set(steps) <= set(got), f"missing steps {sorted(set(steps) - set(got))}"
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=RTOL)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scale")


# The classification eval at the last step: every process of a multi-process run evaluates, and the
# metrics must equal the one-process run's (1,000 test images, batches of 40 split over the processes).
EVAL = {
    "evals": {
        "test": {
            "type": "classification",
            "data": {"name": "mnist5k", "split": "test"},
            "pp_fn": "decode(channels=1)|resize(32)|central_crop(28)|value_range(-1, 1)"
            "|onehot(10, key='label', key_result='labels')|keep('image', 'labels')",
            "batch_size": 40,
            "log_steps": STEPS,
        }
    }
}


def _final_eval(workdir: Path) -> dict[str, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "test/prec@1" in r][-1]


@pytest.fixture(scope="module")
def baseline(root: Path) -> dict[int, float]:
    _run(root / "tfds", [(root / "one_device", STEPS, EVAL)], devices=1)
    return _losses(root / "one_device")


def test_eight_devices_match_one_device(root: Path, baseline: dict[int, float]) -> None:
    cases = {**CASES, **SCAN_CASES}
    _run(root / "tfds", [(root / name, STEPS, extra) for name, extra in cases.items()], devices=8)
    for name in CASES:
        _assert_same_losses(_losses(root / name), baseline, range(1, STEPS + 1))
    _assert_same_losses(_losses(root / "fsdp_scan"), _losses(root / "dp_scan"), range(1, STEPS + 1))


def test_two_processes_match_and_checkpoints_cross_topologies(root: Path, baseline: dict[int, float]) -> None:
    # Two processes with 2 devices each, against one process with 4 devices.
    _run(root / "tfds", [(root / "two_proc", STEPS, EVAL)], devices=2, processes=2)
    _assert_same_losses(_losses(root / "two_proc"), baseline, range(1, STEPS + 1))
    two, one = _final_eval(root / "two_proc"), _final_eval(root / "one_device")
    assert two["test/loss"] == pytest.approx(one["test/loss"], rel=1e-5)
    assert two["test/prec@1"] == pytest.approx(one["test/prec@1"], abs=1e-3)  # at most one image flips

    # A 2-process checkpoint (step 10) resumed by 1 process with 4 devices, and the reverse.
    _run(root / "tfds", [(root / "from_two", 10, {})], devices=2, processes=2)
    _run(root / "tfds", [(root / "from_two", STEPS, {}), (root / "from_one", 10, {})], devices=4)
    _run(root / "tfds", [(root / "from_one", STEPS, {})], devices=2, processes=2)
    for workdir in ("from_two", "from_one"):
        _assert_same_losses(_losses(root / workdir), baseline, range(1, STEPS + 1))
