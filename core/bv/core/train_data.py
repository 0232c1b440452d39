"""The trainer's input: ``config.input`` as training sources, their size, and batches from any step.

One data set (``input.data=dict(name=..., split=...)``) or a weighted mixture
(see :mod:`bv.core.data.mixture`); a resumed run asks for the batches from its
step on and gets exactly those of an uninterrupted run.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import ml_collections
import tensorflow_datasets as tfds

from bv.core import registry
from bv.core.config import ConfigError
from bv.core.data import input_pipeline, mixture, sources


class TrainData:
    """The training sources of a config; :meth:`batches` streams this host's share of each global batch."""

    def __init__(self, config: ml_collections.ConfigDict):
        import bv.pp

        self.input = config.input
        self.seed = int(config.get("seed", 0))
        parsed = sources.parse_sources(config.input)
        self.data_dir: str | None = parsed[0].data.get("data_dir")  # also the evaluators' default
        self.sources = [
            mixture.TrainSource(
                src.name,
                input_pipeline.get_builder(src.data["name"], src.data.get("data_dir")),
                src.data["split"],
                bv.pp.get_preprocess_fn(src.pp),
                src.weight,
            )
            for src in parsed
        ]
        for src, source in zip(parsed, self.sources):
            where = f"config.input.{src.name}" if len(parsed) > 1 else "config.input"
            check_labels(where, source.builder, src.pp or "", config)
        self.size = mixture.train_size(self.sources)
        self.batch_size = int(config.input.batch_size)

    def batches(self, start_step: int) -> Iterator[dict[str, Any]]:
        """Numpy batches of this host from ``start_step`` on (the first one is that of step ``start_step + 1``)."""
        local_batch = self.batch_size // jax.process_count()
        options: dict[str, Any] = dict(
            shuffle_buffer_size=self.input.get("shuffle_buffer_size", 10_000),
            seed=self.seed,
            start_index=start_step * local_batch,
            cache_raw=self.input.get("cache_raw", False),
            prefetch=self.input.get("prefetch", 2),
            host_invariant=self.input.get("host_invariant", False),
        )
        if len(self.sources) == 1:
            (src,) = self.sources
            ds = input_pipeline.make_for_train(src.builder, src.split, self.batch_size, src.preprocess_fn, **options)
        else:
            ds = mixture.make_mixture_for_train(self.sources, self.batch_size, **options)
        return ds.as_numpy_iterator()  # type: ignore[no-any-return]

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of one global batch, from a real one (a pp without a resize leaves sizes unknown to tf.data)."""
        first = next(self.batches(0))
        return {k: jax.ShapeDtypeStruct((self.batch_size, *v.shape[1:]), v.dtype) for k, v in first.items()}


def check_labels(where: str, builder: tfds.core.DatasetBuilder, pp: str, config: ml_collections.ConfigDict) -> None:
    """Labels that the pp would one-hot out of range, or into vectors the model's head does not match.

    ``tf.one_hot`` turns a label >= depth into an all-zero vector without a word, so a data set with
    more classes than the pp's ``onehot(depth)`` would train on garbage; this catches it before training,
    from the data set's metadata (its ``label`` ClassLabel).
    """
    features = builder.info.features
    label = features["label"] if "label" in features else None
    classes = getattr(label, "num_classes", None)
    if not isinstance(classes, int) or classes <= 0:
        return
    num_classes = config.get("num_classes")
    for op in (part.strip() for part in pp.split("|")):
        if not op:
            continue
        name, args, kwargs = registry.parse_call(op)
        if name != "onehot":
            continue
        key = kwargs.get("key", args[1] if len(args) > 1 else "labels")
        depth = kwargs.get("depth", args[0] if args else None)
        if key != "label" or not isinstance(depth, int):
            continue
        dataset = builder.info.name
        if classes > depth:
            raise ConfigError(
                f"{where}: data set {dataset!r} has {classes} classes (labels 0 to {classes - 1}), but the pp "
                f"one-hot encodes its labels into {depth} ({op!r}): labels {depth} to {classes - 1} would become "
                f"all-zero vectors and train nothing. Use onehot({classes}, ...) and config.num_classes={classes}, "
                "or a data set with the classes you mean."
            )
        task = config.get("task", "classification")
        if task == "classification" and isinstance(num_classes, int) and depth != num_classes:
            raise ConfigError(
                f"{where}: the pp one-hot encodes labels into {depth} classes ({op!r}), but the model's head has "
                f"config.num_classes={num_classes}. Make them equal (data set {dataset!r} has {classes} classes)."
            )
