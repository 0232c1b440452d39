"""The trainer's input: ``config.input`` as training sources, their size, and batches from any step.

One data set (``input.data=dict(name=..., split=...)``) or a weighted mixture
(see :mod:`bv.core.data.mixture`); a resumed run asks for the batches from its
step on and gets exactly those of an uninterrupted run.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import ml_collections

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
