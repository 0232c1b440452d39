"""Every registered model follows the image-model contract, and every registered task is a complete Task.

A model package that registers a model without an entry in ``SMALL`` fails here,
so a new model cannot skip the check. A planted model that returns the wrong
shape shows that the check has teeth.
"""

from __future__ import annotations

import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

import bv.bit  # noqa: F401  (registers bit, bit_paper)
import bv.mixer  # noqa: F401  (registers mixer)
import bv.vit  # noqa: F401  (registers vit and the flexi_classification task)
from bv.core import registry
from bv.core.contracts import ContractError, ImageModel, check_image_model
from bv.core.tasks import Task, get_task

# Small kwargs per registered model and the image shape it runs on.
SMALL: dict[str, tuple[dict[str, Any], tuple[int, int, int]]] = {
    "vit": (dict(variant="mu/8"), (16, 16, 3)),
    "mixer": (dict(patch_size=8, hidden_dim=16, num_blocks=1, tokens_mlp_dim=8, channels_mlp_dim=32), (16, 16, 3)),
    "bit": (dict(depth=(1, 1, 1, 1), width=0.5), (32, 32, 3)),
    "bit_paper": (dict(depth=(1, 1, 1, 1), width=0.5), (32, 32, 3)),
}


def _registered() -> list[str]:
    """The registered image models (other kinds, such as two towers, have contracts of their own)."""
    names = [n for n in registry.models.names() if not n.startswith(("hub_test", "planted"))]
    return [n for n in names if registry.models.get(n).kind == "image"]


def test_every_registered_model_has_a_contract_check() -> None:
    assert set(_registered()) <= set(SMALL), f"add small kwargs for {set(_registered()) - set(SMALL)} to SMALL"


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("num_classes", [5, None])
def test_registered_models_follow_the_contract(name: str, num_classes: int | None) -> None:
    kwargs, image_shape = SMALL[name]
    module = registry.model_factory(name)(num_classes=num_classes, **kwargs)
    assert isinstance(module, ImageModel)
    shapes = check_image_model(module, image_shape, name=name)
    assert shapes["pre_logits"][0] == 2


class _WrongShape(nn.Module):
    """Planted: returns logits with the class axis missing."""

    num_classes: int | None = 4

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        x = nn.Dense(8)(images.reshape(images.shape[0], -1))
        return jnp.sum(x, axis=-1), {"pre_logits": x}


class _NoIntermediates(nn.Module):
    num_classes: int | None = 4

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        return nn.Dense(4)(images.reshape(images.shape[0], -1))


class _NoTrainKeyword(nn.Module):
    num_classes: int | None = 4

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict]:
        x = nn.Dense(4)(images.reshape(images.shape[0], -1))
        return x, {"pre_logits": x}


@pytest.mark.parametrize(
    "module, message",
    [
        (_WrongShape(), r"returned outputs of shape \(2,\); expected \(2, 4\)"),
        (_NoIntermediates(), r"must return \(outputs, intermediates\)"),
        (_NoTrainKeyword(), "must accept images and a keyword train"),
    ],
)
def test_a_model_that_breaks_the_contract_is_caught(module: nn.Module, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        check_image_model(module, (4, 4, 1), name="planted")


def test_every_registered_task_is_a_complete_task() -> None:
    for name in registry.tasks.names():
        cls: Any = registry.tasks.get(name)
        assert issubclass(cls, Task), name
        assert not getattr(cls, "__abstractmethods__", None), f"{name} leaves {cls.__abstractmethods__} abstract"


def test_a_task_missing_its_loss_cannot_be_built() -> None:
    class Incomplete(Task):
        def init(self, rng, batch_spec):  # type: ignore[no-untyped-def]
            return {}

        def predict_fns(self):  # type: ignore[no-untyped-def]
            return {}

    with pytest.raises(TypeError, match="abstract method.*loss"):
        Incomplete(ml_collections.ConfigDict())  # type: ignore[abstract]


def test_a_model_package_that_fails_to_import_reports_the_real_error(tmp_path, monkeypatch) -> None:
    package = tmp_path / "bv" / "brokenmodel"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import a_dependency_that_is_not_installed\n")
    namespace = sys.modules["bv"]  # the namespace package, already imported with bv.vit
    monkeypatch.setattr(namespace, "__path__", [*namespace.__path__, str(tmp_path / "bv")])
    config = ml_collections.ConfigDict({"model_name": "brokenmodel", "num_classes": 2})
    with pytest.raises(
        ImportError, match="bv.brokenmodel is installed .* No module named 'a_dependency_that_is_not_installed'"
    ):
        get_task(config)
    with pytest.raises(registry.UnknownNameError, match="Unknown model 'nosuchmodel'"):
        get_task(ml_collections.ConfigDict({"model_name": "nosuchmodel", "num_classes": 2}))
