"""An evaluation on a ("data", 2) x ("model", 4) mesh of 8 simulated CPU devices equals the one-device evaluation.

A small ViT is trained for a few steps on one device; ``bv.core.evaluate`` then runs the config's
evaluators over that workdir in two fresh processes, one with a single CPU device and one whose CPU is
split into 8 devices, with the params laid out by logical axes over the model axis (Megatron-style)
and the eval batches split over the data axis only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bv.core import evaluate, train  # noqa: F401  (run by the subprocesses; imported so that Pants ships them)

RUNNER = textwrap.dedent(
    """
    import json, sys
    from bv.core import evaluate, train
    from bv.core.config import load_config

    data_dir, workdir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    config = load_config("bv.vit.configs.mnist:runlocal")
    config.input.data.data_dir = data_dir
    config.model.num_heads = 4  # the model axis (4) splits heads and MLP units
    config.evals.test.batch_size = 40  # 1,000 test examples: 25 batches, split over 2 data shards
    config.evals.fewshot = dict(
        type="fewshot_lsr",
        datasets={"digits": ("train[:500]", "train[500:]")},
        pp="decode(channels=1)|resize(28)|value_range(-1, 1)",
        shots=(1, 5),
        seeds=(0, 1),
        batch_size=40,
    )
    if mode == "train":
        config.total_steps = 3
        train.train(config, workdir)
    else:
        if mode == "data_x_model":
            config.mesh = [("data", 2), ("model", 4)]
            config.sharding_strategy = [(".*", "logical")]
            config.sharding_rules = [("act_batch", "data"), ("mlp", "model"), ("heads", "model")]
        print("METRICS", json.dumps(evaluate.evaluate(config, workdir)))
    """
)


def _run(tmp_path: Path, mode: str, devices: int) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path / "tfds"), str(tmp_path / "run"), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("METRICS ")]
    return json.loads(lines[-1][len("METRICS ") :]) if lines else {}


def test_an_eval_on_a_data_by_model_mesh_equals_one_device(tmp_path: Path) -> None:
    _run(tmp_path, "train", 1)
    one = _run(tmp_path, "one_device", 1)
    eight = _run(tmp_path, "data_x_model", 8)
    assert one.keys() == eight.keys() and "test/prec@1" in one and "fewshot/digits_5shot" in one
    for name in one:
        assert eight[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name
