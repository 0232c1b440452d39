"""Training on a weighted mixture of several data sets, each with its own pp.

A config names the sources and their weights in ``input.data`` and gives each
source its data set and pp under its own name, as in big_vision::

    config.input.data = {"imagenet": 0.8, "places": 0.2}
    config.input.imagenet = dict(data=dict(name="imagenet2012", split="train"), pp="decode|...")
    config.input.places = dict(data=dict(name="places365_small", split="train"))  # pp: input.pp

The mixed stream keeps the guarantees of ``input_pipeline.make_for_train``: it is a
pure function of ``(seed, host)`` (or of ``seed`` with ``host_invariant``), and a run
resumed at ``start_index`` gets exactly the batches of the uninterrupted run. To make
that possible the source of every position in the stream is drawn statelessly from
``(seed, block of positions)``, so the number of examples each source gave before
``start_index`` can be recounted on resume; each source is then a single-source stream
started at its own count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from bv.core.config import ConfigError
from bv.core.data import input_pipeline
from bv.core.data.input_pipeline import PreprocessFn

# Sources are drawn for blocks of this many positions at once; a resume recounts whole blocks.
CHOICE_BLOCK = 2**16
# Stream ids (see ``input_pipeline._keys``): the choice of source, then source k is k + 1.
_CHOICE_STREAM = 0x6D6978


@dataclasses.dataclass(frozen=True)
class TrainSource:
    """A source ready to stream: the TFDS builder and split, its pp function and weight."""

    name: str
    builder: tfds.core.DatasetBuilder
    split: str
    preprocess_fn: PreprocessFn
    weight: float


def _normalised(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or not len(w) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(f"Mixture weights must be finite, >= 0, and not all 0; got {list(weights)}.")
    return w / w.sum()


def _block_choices(choice_key: tf.Tensor, logits: tf.Tensor, block: tf.Tensor) -> tf.Tensor:
    """The sources (int64 ``[CHOICE_BLOCK]``) of the positions in ``block``, drawn from (key, block)."""
    seed = tf.stack([choice_key, tf.cast(block, tf.int64)])
    return tf.random.stateless_categorical(logits[None], CHOICE_BLOCK, seed=seed, dtype=tf.int64)[0]


def source_counts(choice_key: tf.Tensor, weights: Sequence[float], positions: int) -> np.ndarray:
    """How many of the first ``positions`` positions of the mixed stream each source fills."""
    logits = tf.math.log(tf.constant(_normalised(weights), tf.float32))
    k = len(weights)
    full_blocks, rest = divmod(positions, CHOICE_BLOCK)

    def count(choices: tf.Tensor) -> tf.Tensor:
        return tf.math.bincount(choices, minlength=k, maxlength=k, dtype=tf.int64)

    counts = (
        tf.data.Dataset.range(full_blocks)
        .map(lambda b: count(_block_choices(choice_key, logits, b)), num_parallel_calls=tf.data.AUTOTUNE)
        .reduce(tf.zeros([k], tf.int64), lambda a, b: a + b)
    )
    if rest:
        counts += count(_block_choices(choice_key, logits, tf.constant(full_blocks, tf.int64))[:rest])
    return counts.numpy()


def _choices(choice_key: tf.Tensor, weights: Sequence[float], start: int) -> tf.data.Dataset:
    """The endless stream of source ids for positions ``start, start + 1, ...``."""
    logits = tf.math.log(tf.constant(_normalised(weights), tf.float32))
    first_block, offset = divmod(start, CHOICE_BLOCK)
    blocks = tf.data.Dataset.counter(first_block)
    ids = blocks.flat_map(lambda b: tf.data.Dataset.from_tensor_slices(_block_choices(choice_key, logits, b)))
    return ids.skip(offset)


def _check_same_outputs(sources: Sequence[TrainSource], streams: Sequence[tf.data.Dataset]) -> None:
    """Every source must give the same keys and dtypes after its pp, or they cannot be batched together."""

    def describe(spec: Any) -> dict[str, str]:
        return {k: v.dtype.name for k, v in spec.items()} if isinstance(spec, Mapping) else {"?": str(spec)}

    first = describe(streams[0].element_spec)
    for source, stream in zip(sources[1:], streams[1:]):
        other = describe(stream.element_spec)
        if other != first:
            raise ConfigError(
                f"Mixture sources must give the same features after their pp, to be batched together: "
                f"{sources[0].name!r} gives {first} but {source.name!r} gives {other}. "
                "Make their pp end alike, e.g. with the same keep(...)."
            )


def make_mixture_for_train(
    sources: Sequence[TrainSource],
    batch_size: int,
    *,
    seed: int,
    start_index: int = 0,
    shuffle_buffer_size: int = 10_000,
    cache_raw: bool = False,
    prefetch: int = 2,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    skip_decode: Sequence[str] = ("image",),
    process_index: int | None = None,
    process_count: int | None = None,
    host_invariant: bool = False,
) -> tf.data.Dataset:
    """An endless stream of this host's training batches drawn from several sources by weight.

    Every position of the stream comes from source ``k`` with probability ``weight_k /
    sum(weights)``, independently; each source is shuffled, repeated and preprocessed with
    its own pp, as ``input_pipeline.make_for_train`` does for one. The arguments mean what
    they mean there, ``start_index`` included: a resumed run recounts how many examples
    each source gave (a fraction of a second per 10M examples) and continues every source
    where it stopped. With ``host_invariant`` each host preprocesses the examples of the
    whole mixed stream, not only its own slice (the pp of a source runs before the mixing).
    """
    if not sources:
        raise ConfigError("A mixture needs at least one source.")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"Mixture source names must be unique, got {names}.")
    weights = [s.weight for s in sources]
    _normalised(weights)
    process_index, process_count = input_pipeline._process(process_index, process_count)
    local_batch_size = input_pipeline._local_batch_size(batch_size, process_count)
    plan = input_pipeline.stream_plan(start_index, batch_size, process_index, process_count, host_invariant)

    choice_key, _ = input_pipeline._keys(seed, plan.key_host, _CHOICE_STREAM)
    counts = source_counts(choice_key, weights, plan.stream_start)
    streams = []
    for k, source in enumerate(sources):
        shuffle_key, example_key = input_pipeline._keys(seed, plan.key_host, k + 1)
        examples, epoch_size = input_pipeline.indexed_examples(
            source.builder,
            source.split,
            plan,
            shuffle_key,
            shuffle_buffer_size=shuffle_buffer_size,
            start=int(counts[k]),
            cache_raw=cache_raw,
            skip_decode=skip_decode,
        )
        pp = input_pipeline._with_rng(source.preprocess_fn, example_key, epoch_size)
        streams.append(examples.map(pp, num_parallel_calls=num_parallel_calls, deterministic=True))
    _check_same_outputs(sources, streams)

    ds = tf.data.Dataset.choose_from_datasets(streams, _choices(choice_key, weights, plan.stream_start))
    if plan.filters:
        ds = ds.enumerate(start=plan.stream_start)
        ds = ds.filter(input_pipeline._owned_by(process_index, batch_size, local_batch_size))
        ds = ds.map(lambda index, example: example)
    return input_pipeline.batch_for_train(ds, local_batch_size, prefetch)


def train_size(sources: Sequence[TrainSource]) -> int:
    """Examples in one epoch of the mixture: the sum of the sources' splits (as big_vision counts)."""
    return sum(input_pipeline.num_examples(s.builder, s.split) for s in sources)
