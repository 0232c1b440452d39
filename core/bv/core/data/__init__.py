"""Data: TFDS data sets (embedded, custom or standard) and tf.data input pipelines.

The names below are imported on first use: ``bv.core.data.sources`` only reads
configs and works without TensorFlow (``bv export`` uses it in the lean install),
while everything else needs the ``train`` extra (TensorFlow, TFDS) and says so
when it is missing. Importing ``bv.core.data.input_pipeline`` registers the
embedded data sets (``mnist5k``, ``digits``) in ``bv.core.registry.datasets``.
"""

from __future__ import annotations

import importlib
from typing import Any

from bv.core.data.sources import SourceConfig, parse_sources

_LAZY = {
    "build_from_arrays": "custom",
    "build_from_image_folder": "custom",
    "default_data_dir": "custom",
    "get_builder": "input_pipeline",
    "make_for_eval": "input_pipeline",
    "make_for_train": "input_pipeline",
    "num_examples": "input_pipeline",
    "to_global_arrays": "input_pipeline",
    "TrainSource": "mixture",
    "make_mixture_for_train": "mixture",
}

__all__ = ["SourceConfig", "parse_sources", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from bv.core.extras import require_train

    require_train(f"bv.core.data.{name}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
