"""The "Scaling Vision Transformers" configs (``bv.vit.configs.scaling_vit``): sizes, optimizer state, one step.

The full-size ViT-g/14 and ViT-G/14 are only built as shapes (``jax.eval_shape``), so no memory is
allocated; their parameter counts are checked against the paper's Table 2. A copy shrunk with
``variant=mu/14`` trains one step through the real trainer on ``tfds.testing.mock_data``, with the
config's scanned, rematerialised blocks, bf16 matmuls, Adafactor and FSDP over 2 simulated CPU devices.
"""

from __future__ import annotations

import os

# Two simulated CPU devices, so that the FSDP mesh really splits the state (read when jax starts a backend);
# XLA's CPU optimisations off: they double the compile time of the scanned, rematerialised step.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
)

import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from bv.core import checkpoint, train  # noqa: E402
from bv.core.config import load_config  # noqa: E402
from bv.core.optimizers import make_optimizer  # noqa: E402
from bv.core.run_plan import resolve_schedule  # noqa: E402
from bv.core.tasks import get_task  # noqa: E402
from bv.core.tree import flatten_with_names  # noqa: E402

CONFIG = "bv.vit.configs.scaling_vit"
IMAGE_224 = {"image": jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)}
# The paper's counts: patch embedding + position embedding + transformer blocks (with the final norm).
# They leave out the pooling (MAP) head and the classifier, whose sizes depend on the number of classes.
PAPER_MILLIONS = {"g/14": 1011, "G/14": 1843}
HEADS = ("MAPHead_0", "head")


def _size(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _bytes(tree: Any) -> int:
    return sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def _full_size(variant: str) -> tuple[Any, Any]:
    config = load_config(f"{CONFIG}:variant={variant}")
    params = jax.eval_shape(get_task(config).init, jax.random.PRNGKey(0), IMAGE_224)
    return config, params


@pytest.mark.parametrize("variant", sorted(PAPER_MILLIONS))
def test_full_size_parameter_counts_match_the_paper(variant: str) -> None:
    config, params = _full_size(variant)
    total = _size(params)
    backbone = _size({k: v for k, v in params.items() if k not in HEADS})
    print(
        f"ViT-{variant}: {total:,} parameters with the MAP head and a {config.num_classes}-class head; "
        f"{backbone:,} without them (paper: {PAPER_MILLIONS[variant]}M); MAP head {_size(params['MAPHead_0']):,}, "
        f"classifier {_size(params['head']):,}."
    )
    # The paper gives whole millions; +-1M allows for its rounding and nothing else (one block is 25M or more).
    assert abs(backbone / 1e6 - PAPER_MILLIONS[variant]) < 1.0
    depth = {"g/14": 40, "G/14": 48}[variant]
    blocks = params["Transformer"]["encoderblock"]  # model.scan=True: one stacked block
    assert blocks["MlpBlock_0"]["Dense_0"]["kernel"].shape[0] == depth
    assert params["head"]["kernel"].shape == (params["embedding"]["kernel"].shape[-1], 21843)
    assert "cls" not in params and config.model.pool_type == "map"


def _is_factored(node: Any) -> bool:
    return isinstance(node, optax.FactoredState)


def _adafactor_second_moments(state: Any) -> list[Any]:
    return [s for s in jax.tree.leaves(state, is_leaf=_is_factored) if _is_factored(s)]


@pytest.mark.parametrize("variant", sorted(PAPER_MILLIONS))
def test_adafactor_state_is_a_quarter_of_adams_and_schedule_is_rsqrt_with_cooldown(variant: str) -> None:
    config, params = _full_size(variant)
    batch, total = 4096, 6900  # about 2 epochs of ImageNet-21k
    schedule = resolve_schedule(config.schedule, data_size=14_000_000, batch_size=batch, total_steps=total)
    tx, schedules = make_optimizer(config, params, total_steps=total, schedule=schedule)
    state = jax.eval_shape(tx.init, params)
    adam_state = jax.eval_shape(optax.adam(1e-3).init, params)

    p_bytes, s_bytes = _bytes(params), _bytes(state)
    second = _adafactor_second_moments(state)
    assert second, "no factored second-moment state: is optax_name big_vision.scale_by_adafactor?"
    v_bytes = _bytes(second)
    print(
        f"ViT-{variant}: params {p_bytes / 1e9:.2f} GB, Adafactor state {s_bytes / 1e9:.3f} GB "
        f"(second moments {v_bytes / 1e6:.1f} MB), Adam state {_bytes(adam_state) / 1e9:.2f} GB."
    )
    # Factored: a kernel [.., m, n] keeps m + n statistics instead of m * n, so under 1% of the params' bytes.
    assert v_bytes < 0.01 * p_bytes
    # The rest is the momentum in bfloat16, half the float32 params: the state is ~0.5x the params,
    # where Adam's two float32 moments are 2x.
    assert 0.5 * p_bytes <= s_bytes < 0.51 * p_bytes
    assert s_bytes < 0.26 * _bytes(adam_state)

    # lr 8e-4: linear warmup over 10%, rsqrt decay (timescale 1000 steps), linear cooldown to 0 over the last 20%.
    (_, lr), *_ = schedules
    warmup, cooldown_start = round(0.1 * total), total - round(0.2 * total)
    values = np.array([float(lr(s)) for s in (0, warmup, warmup + 1000, warmup + 3000, cooldown_start, total)])
    np.testing.assert_allclose(values[[0, -1]], 0.0, atol=1e-12)
    np.testing.assert_allclose(values[1:4], 8e-4 / np.sqrt([1.0, 2.0, 4.0]), rtol=1e-5)
    assert 0 < values[4] < values[3]


def test_tiny_copy_trains_one_step_with_fsdp_on_mock_data(tmp_path: Path) -> None:
    config = load_config(f"{CONFIG}:variant=mu/14,dataset=i1k,runlocal")
    assert config.model.scan and config.model.dtype_mm == "bfloat16"
    assert [op for _, op in config.sharding_strategy] == ["fsdp(axis='data')"]
    # Same strategy, but the tiny model's leaves are all far under the 4 MiB default threshold: split them all.
    config.sharding_strategy = [(".*", "fsdp(axis='data', min_size_mb=0)")]
    config.model.depth = 2  # scan over more than one block
    config.total_steps = 1
    config.schedule.warmup_percent = 0.0  # so that the one step has a non-zero lr
    assert sorted(config.evals) == ["minival", "val"]
    config.evals = {}  # an eval would compile the model a second time

    init = get_task(config).init(jax.random.PRNGKey(0), {"image": jax.ShapeDtypeStruct((8, 224, 224, 3), "float32")})
    assert not np.any(np.asarray(init["head"]["kernel"]))  # zero-init head

    with tfds.testing.mock_data(num_examples=16):
        train.train(config, str(tmp_path))

    assert jax.device_count() in (1, 2)  # 2 unless another module started jax first
    latest = checkpoint.latest(str(tmp_path))
    assert latest is not None and checkpoint.read_metadata(latest)["step"] == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["training_loss"] for r in records if "training_loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    params = dict(flatten_with_names(checkpoint.load_params(latest)))
    assert params["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"].shape == (2, 32, 128)
    assert np.any(params["head/kernel"])  # the step moved the zero-init head
