"""The plug-in contract of an image model, written as code and checkable.

Every model a config can name (``registry.models``) builds a Flax module that
follows :class:`ImageModel`: called on a batch of images with a keyword
``train``, it returns ``(outputs, intermediates)``: ``outputs`` are logits
``[batch, num_classes]`` (or the pre-logits ``[batch, width]`` when
``num_classes`` is None), and ``intermediates`` a dict of named arrays that
holds at least ``pre_logits``. Tasks, evaluators (few-shot reads
``pre_logits``) and the Hub classes rely on this. :func:`check_image_model`
runs a model and says exactly which part of the contract it breaks.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Array = jax.Array


@runtime_checkable
class ImageModel(Protocol):
    """``model.apply({"params": p}, images, train=False) -> (outputs, intermediates)``."""

    num_classes: int | None

    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, Mapping[str, Array]]: ...


class ContractError(TypeError):
    """A model that does not follow :class:`ImageModel`; the message says how."""


def check_image_model(
    module: Any, image_shape: tuple[int, int, int], *, batch: int = 2, name: str = "the model"
) -> dict[str, tuple[int, ...]]:
    """Initialises and runs ``module`` (in both modes) on zeros; returns the shapes of its intermediates.

    Raises :class:`ContractError` if the module does not take ``train=``, does not return
    ``(outputs, intermediates)``, returns outputs of the wrong shape, or has no ``pre_logits``.
    """
    if not isinstance(module, ImageModel):
        raise ContractError(f"{name} has no num_classes field or is not callable; see bv.core.contracts.ImageModel.")
    flax_module: Any = module  # a flax.linen.Module: init and apply come from there
    images = jnp.zeros((batch, *image_shape), jnp.float32)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    try:
        variables = jax.eval_shape(lambda: flax_module.init(rngs, images, train=False))
    except TypeError as e:
        raise ContractError(f"{name} must accept images and a keyword train=...: {e}") from None
    shapes: dict[str, tuple[int, ...]] = {}
    for train in (False, True):
        result = jax.eval_shape(
            lambda v: flax_module.apply(v, images, train=train, rngs={"dropout": rngs["dropout"]}), variables
        )
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping)):
            raise ContractError(
                f"{name} (train={train}) must return (outputs, intermediates) with intermediates a dict; "
                f"it returned {type(result).__name__}{'' if not isinstance(result, tuple) else f' of {len(result)}'}."
            )
        outputs, extras = result
        if "pre_logits" not in extras:
            raise ContractError(f"{name} must return 'pre_logits' among its intermediates; it has {sorted(extras)}.")
        width = extras["pre_logits"].shape[-1]
        expected = (batch, module.num_classes if module.num_classes else width)
        if tuple(outputs.shape) != expected:
            raise ContractError(
                f"{name} (train={train}) returned outputs of shape {tuple(outputs.shape)}; expected {expected} "
                f"([batch, {'num_classes' if module.num_classes else 'pre_logits width'}])."
            )
        shapes = {k: tuple(v.shape) for k, v in extras.items() if hasattr(v, "shape")}
    return shapes
