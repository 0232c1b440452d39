"""The distill task: same pixels for teacher and student, a frozen teacher, and clear errors for bad teachers."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax, softmax

import bv.distill.task as task_module
from bv.core import checkpoint, train
from bv.core.config import ConfigError, load_config
from bv.core.tasks import get_task
from bv.core.tree import flatten_with_names
from bv.distill import DistillTask, distance
from bv.distill.configs import distill_mnist  # noqa: F401  (loaded by name below)
from bv.distill.teachers import Teacher
from bv.vit import ViT

TEACHER = dict(patch_size=(7, 7), width=32, depth=1, num_heads=2, mlp_dim=64, pool_type="gap")


def _teacher(folder: Path, **kw: object) -> str:
    settings = dict(TEACHER, num_classes=10, resolution=28, channels=1, pp="decode(channels=1)|value_range(-1, 1)")
    settings.update(kw)
    ViT.create(**settings).save_pretrained(str(folder))  # type: ignore[arg-type]
    return str(folder)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(autouse=True)
def tfds_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))


def _config(teacher: str, **teacher_kw: object):  # type: ignore[no-untyped-def]
    config = load_config(f"bv.distill.configs.distill_mnist:runlocal,teacher={teacher}")
    config.teachers.vit.update(teacher_kw)
    return config


def test_teacher_and_student_see_the_same_pixels_and_the_teacher_stays_frozen(
    teacher_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, list[np.ndarray]] = {"student": [], "teacher": []}
    loaded: list[Teacher] = []
    real_load, real_logits, real_loss = task_module.load_teacher, Teacher.logits, DistillTask.loss

    def load_teacher(*args, **kw):  # type: ignore[no-untyped-def]
        loaded.append(real_load(*args, **kw))
        return loaded[-1]

    def logits(self, params, images):  # type: ignore[no-untyped-def]
        jax.debug.callback(lambda x: seen["teacher"].append(np.asarray(x)), images)
        return real_logits(self, params, images)

    def loss(self, params, batch, rng):  # type: ignore[no-untyped-def]
        jax.debug.callback(lambda x: seen["student"].append(np.asarray(x)), batch["image"])
        return real_loss(self, params, batch, rng)

    monkeypatch.setattr(task_module, "load_teacher", load_teacher)
    monkeypatch.setattr(Teacher, "logits", logits)
    monkeypatch.setattr(DistillTask, "loss", loss)
    config = _config(teacher_dir)
    assert config.mixup.p == 1.0  # the batch is mixed by the trainer, before the task sees it
    train.train(config, str(tmp_path))

    # Every training step: the teacher got exactly the student's (mixed, cropped) pixels.
    steps = len(seen["student"])
    assert steps == config.total_steps and len(seen["teacher"]) >= steps
    for student, teacher in zip(seen["student"], seen["teacher"][:steps]):
        np.testing.assert_array_equal(teacher, student)
    pixels = np.concatenate([x.ravel() for x in seen["student"]])
    assert len(np.unique(np.round(pixels * 127.5 + 127.5, 3))) > 256  # mixup made values between pixel levels

    # The teacher's params are what its folder holds, bit for bit, after training; none were saved.
    (frozen,) = loaded
    stored = dict(flatten_with_names(ViT.from_pretrained(teacher_dir).params))
    for name, value in flatten_with_names(frozen.params):
        np.testing.assert_array_equal(np.asarray(value), np.asarray(stored[name]), err_msg=name)
    latest = checkpoint.latest(str(tmp_path))
    assert latest is not None
    saved = dict(flatten_with_names(checkpoint.load_params(latest)))
    fresh = get_task(_config(teacher_dir))
    spec = {"image": jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)}
    shapes = dict(flatten_with_names(jax.eval_shape(lambda: fresh.init(jax.random.PRNGKey(0), spec))))
    assert saved.keys() == shapes.keys()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("distill_kl" in r and "agree@1" in r for r in logged)
    assert any("teacher_distance/agree@1" in r for r in logged)


def test_a_teacher_at_another_resolution_sees_the_same_crop_resized(tmp_path: Path) -> None:
    task = get_task(_config(_teacher(tmp_path / "t14", resolution=14)))
    assert isinstance(task, DistillTask) and task.teachers[0].resolution == 14
    images = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1))
    resized = jax.image.resize(images, (3, 14, 14, 1), method="bilinear", antialias=True)
    teacher = task.teachers[0]
    direct, _ = teacher.model.module.apply({"params": teacher.params}, resized, train=False)
    np.testing.assert_allclose(task.predict_fns()["teacher"](None, images), direct, rtol=1e-6, atol=1e-6)


def test_bad_teachers_are_clear_errors_before_training(teacher_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"teacher 'vit' predicts 5 classes, the student 10"):
        get_task(_config(_teacher(tmp_path / "five", num_classes=5)))
    with pytest.raises(ConfigError, match=r"cannot load the teacher from '/nonexistent/teacher'"):
        get_task(_config("/nonexistent/teacher"))
    # A learned position embedding of 4x4 patches of 7 px has nothing to resample to at 6 px.
    learned = _teacher(tmp_path / "learned", posemb="learn")
    with pytest.raises(ConfigError, match=r"cannot run at resolution 6"):
        get_task(_config(learned, resolution=6))
    with pytest.raises(ConfigError, match=r"unknown keys \['resolutoin'\]"):
        get_task(_config(teacher_dir, resolutoin=14))
    config = _config(teacher_dir)
    config.distance = "l2"
    with pytest.raises(ConfigError, match="config.distance must be one of kl, xent"):
        get_task(config)


def test_kl_and_xent_are_the_textbook_ones() -> None:
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
    for t in (1.0, 2.0):
        p = softmax(teacher / t, axis=-1)
        xent = -np.sum(p * log_softmax(student / t, axis=-1), axis=-1)
        kl = np.sum(p * (np.log(p) - log_softmax(student / t, axis=-1)), axis=-1)
        np.testing.assert_allclose(distance(jnp.asarray(p), jnp.asarray(student), "xent", t), xent, rtol=1e-5)
        np.testing.assert_allclose(distance(jnp.asarray(p), jnp.asarray(student), "kl", t), kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        distance(jnp.asarray(softmax(student, -1)), jnp.asarray(student), "kl", 1.0), 0, atol=1e-6
    )
