"""Bad ``config.sam`` settings are ConfigErrors that say what was wrong and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from bv.core import cli, train
from bv.core.config import ConfigError
from bv.core.tasks import StepInfo, get_task
from bv.sam import SamTask, parse_options, rho_at
from bv.sam.configs import mnist

COSINE = dict(decay_type="cosine", warmup_steps=1)


def _config(sam: dict[str, Any], schedule: Any = None) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            task="sam",
            sam=sam,
            model_name="vit",
            model=dict(variant="mu/8"),
            num_classes=10,
            lr=0.1,
            schedule=COSINE if schedule is None else schedule,
        )
    )


@pytest.mark.parametrize(
    "sam, message",
    [
        (dict(rho=-0.05), r"config.sam.rho \(the radius of the perturbation\) must be >= 0, got -0.05"),
        (dict(rho_max=0.1, rho_min=0.3), r"config.sam.rho_min \(0.3\) is larger than rho_max \(0.1\)"),
        (dict(rho_max=0.3, rho_min=-0.1), r"config.sam.rho_min must be >= 0, got -0.1"),
        (dict(rho_max=0.3, rho_min=0.1, alpha=-1), r"config.sam.alpha .* must be >= 0, got -1.0"),
        (dict(rhoo=0.05), r"unknown keys \['rhoo'\]. Did you mean 'rho'\? Allowed: task, rho, adaptive"),
        (dict(rho=0.05, rho_max=0.1), r"sets rho \(SAM\) and \['rho_max'\] \(GSAM\)"),
        (dict(rho_max=0.3), r"needs rho \(SAM\) or both rho_max and rho_min \(GSAM\); it has \['rho_max'\]"),
        (dict(), r"The sam task needs config.sam = dict\(rho=0.05\)"),
        (dict(rho=0.05, perturbation="local"), r"perturbation must be one of global, per_shard, got 'local'"),
        (dict(rho=0.05, shards=4), r"shards is only read with perturbation='per_shard'"),
        (dict(rho=0.05, perturbation="per_shard", shards=0), r"shards must be a positive integer .* got 0"),
        (dict(rho=0.05, task="sam"), r"config.sam.task names the task SAM trains .* got 'sam'"),
        (dict(rho="big"), r"config.sam.rho must be a number, got 'big'"),
        (dict(rho=0.05, adaptive="yes"), r"config.sam.adaptive must be True or False, got 'yes'"),
        (
            dict(rho_max=0.3, rho_min=0.1, lr_max=0.1, lr_min=0.1),
            r"config.sam.lr_min \(0.1\) must be smaller than lr_max \(0.1\)",
        ),
    ],
)
def test_bad_settings_are_config_errors(sam: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_task(_config(sam))


def test_gsam_needs_a_learning_rate_schedule_to_follow() -> None:
    gsam = dict(rho_max=0.3, rho_min=0.1, alpha=0.5)
    with pytest.raises(ConfigError, match=r"keeps the learning rate constant: there is no schedule to follow"):
        get_task(_config(gsam, dict(decay_type="constant")))
    two = [("head/.*", dict(decay_type="cosine")), (".*", dict(decay_type="linear"))]
    with pytest.raises(ConfigError, match=r"2 trained schedules \(lr, lr_1\); say which .* config.sam.follow"):
        get_task(_config(gsam, two))
    with pytest.raises(ConfigError, match=r"follow='lr_3' names no learning rate of this run; .* gives lr, lr_1"):
        get_task(_config(dict(gsam, follow="lr_3"), two))
    assert isinstance(get_task(_config(dict(gsam, follow="lr_1"), two)), SamTask)
    # A constant rho needs no schedule: GSAM's alpha term with rho_max == rho_min, on a constant lr.
    assert isinstance(get_task(_config(dict(gsam, rho_min=0.3), dict(decay_type="constant"))), SamTask)


def test_a_schedule_that_does_not_move_over_the_run_fails_when_the_step_is_built() -> None:
    options = parse_options(dict(rho_max=0.3, rho_min=0.1, alpha=0.5), dict(decay_type="linear", linear_end=1.0))
    flat = (("lr", lambda step: jnp.full_like(jnp.asarray(step, jnp.float32), 0.1)),)
    with pytest.raises(ConfigError, match=r"lr_max=0.1 to lr_min=0.1, but this run's learning rate does not move"):
        jax.jit(lambda s: rho_at(options, StepInfo(s, 1, 100, flat)))(jnp.int32(1))
    with pytest.raises(ConfigError, match=r"needs the run's total steps .* Give config.sam.lr_max and config.sam"):
        rho_at(options, StepInfo(jnp.int32(1), 1, None, flat))
    with pytest.raises(ConfigError, match=r"follows the learning rate 'lr' .* but the optimizer has no learning rate"):
        rho_at(options, StepInfo(jnp.int32(1), 1, 100, ()))


def test_per_shard_needs_a_batch_it_can_split() -> None:
    task = get_task(_config(dict(rho=0.05, perturbation="per_shard", shards=3)))
    batch = {"image": jnp.zeros((8, 8, 8, 3)), "labels": jnp.zeros((8, 10))}
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0), {"image": jax.ShapeDtypeStruct((8, 8, 8, 3), "float32")})
    with pytest.raises(ConfigError, match=r"into 3 groups of 1 microbatch\(es\) each, but the batch has 8 examples"):
        jax.eval_shape(lambda p: task.step_grads(p, batch, jax.random.PRNGKey(0), StepInfo(jnp.int32(1))), params)


def test_bv_train_reports_the_mistake_and_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(SystemExit) as exit_info:
        train.main(
            ["--config", f"{mnist.__name__}:runlocal,opt=sam", "--config.sam.rho=-1", "--workdir", str(tmp_path)]
        )
    assert exit_info.value.code == cli.EXIT_USER_ERROR  # a user's mistake, not a bug
    assert (
        "bv-train: error: config.sam.rho (the radius of the perturbation) must be >= 0, got -1"
        in capsys.readouterr().err
    )
