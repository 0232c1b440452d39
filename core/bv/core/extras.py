"""What the ``train`` extra installs, and the error that names it when it is missing.

``pip install bv-vit`` is the lean install: inference and Hub loading (JAX, Flax,
huggingface_hub, safetensors). Training, evaluation on data sets, the data
tools, TensorBoard events and plots need the input pipeline stack that
``pip install "bv-vit[train]"`` (or ``"bv-core[train]"``) adds. The modules that
need it call :func:`require_train` before importing it, so a user without the
extra reads which extra to install instead of ``No module named 'tensorflow'``.
"""

from __future__ import annotations

import importlib.util

from bv.core.errors import UserError

__all__ = ["INSTALL_TRAIN", "MissingExtraError", "has_train_extra", "require", "require_train"]

INSTALL_TRAIN = 'pip install "bv-core[train]"'

# The modules of the train extra that the input pipeline cannot do without.
_TRAIN_MODULES = {"tensorflow": "tensorflow-cpu", "tensorflow_datasets": "tensorflow-datasets"}


class MissingExtraError(UserError, ImportError):
    """A feature needs a package of an extra that is not installed; the message names the extra."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        return False


def _missing(modules: dict[str, str]) -> list[str]:
    return [dist for module, dist in modules.items() if not _installed(module)]


def has_train_extra() -> bool:
    """Whether the train extra's input pipeline (TensorFlow, TFDS) is installed."""
    return not _missing(_TRAIN_MODULES)


def require_train(feature: str) -> None:
    """Raises :class:`MissingExtraError` unless the train extra is installed; ``feature`` is what needs it."""
    require(feature, _TRAIN_MODULES)


def require(feature: str, modules: dict[str, str], extra: str = "train") -> None:
    """Raises :class:`MissingExtraError` unless every module in ``{module: distribution}`` is importable."""
    missing = _missing(modules)
    if missing:
        raise MissingExtraError(
            f"{feature} needs bv's {extra!r} extra, which is not installed here (missing: {', '.join(missing)}). "
            f'Install it with: pip install "bv-core[{extra}]" (or "bv-vit[{extra}]", the same for every bv '
            "package). Inference and Hub loading (from_pretrained, save_pretrained, bv export) work without it."
        )
