# Names every BUILD file can use ([GLOBAL] build_file_prelude_globs in pants.toml).
#
# The lean install: `pip install bv-vit` gives inference and Hub loading; what only training needs
# (the input pipeline's TensorFlow and TFDS, the embedded data sets' packages, TensorBoard events,
# plots) comes with the `train` extra, `pip install "bv-vit[train]"`. A distribution lists
# BV_TRAIN_ONLY_EXCLUDES in its dependencies, so these requirements stay out of its base metadata
# even where its sources import them, and names its extras with bv_core_extras() (bv-core) or
# bv_package_extras() (every other package). The bv_build plugin replaces each name by its range in
# 3rdparty/python/requirements.txt.

# (Tuples and functions: Pants wants hashable values here.)
BV_TRAIN_ONLY = (
    "tensorflow-cpu",
    "tensorflow-datasets",
    "importlib-resources",
    "mlxtend",
    "scikit-learn",
    "scikit-image",
    "sentencepiece",
    "tokenizers",
    "tensorboardX",
    "matplotlib",
)

BV_TRAIN_ONLY_EXCLUDES = tuple(f"!!3rdparty/python:reqs#{name}" for name in BV_TRAIN_ONLY)


def bv_core_extras():
    """bv-core's extras: ``train`` adds the training-only requirements."""
    return {"train": list(BV_TRAIN_ONLY)}


def bv_package_extras():
    """Every other package's extras: ``train`` is bv-core's."""
    return {"train": ["bv-core[train]"]}
