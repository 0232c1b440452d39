"""Data: TFDS data sets (embedded, custom or standard) and tf.data input pipelines.

Importing this package registers the embedded data sets (``mnist5k``, ``digits``)
in ``bv.core.registry.datasets``. It imports TensorFlow and TFDS.
"""

from bv.core.data.custom import build_from_arrays, build_from_image_folder, default_data_dir
from bv.core.data.input_pipeline import (
    get_builder,
    make_for_eval,
    make_for_train,
    num_examples,
    to_global_arrays,
)
from bv.core.data.mixture import TrainSource, make_mixture_for_train
from bv.core.data.sources import SourceConfig, parse_sources

__all__ = [
    "build_from_arrays",
    "build_from_image_folder",
    "default_data_dir",
    "get_builder",
    "make_for_eval",
    "make_for_train",
    "make_mixture_for_train",
    "num_examples",
    "parse_sources",
    "SourceConfig",
    "to_global_arrays",
    "TrainSource",
]
