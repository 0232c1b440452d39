"""tf.data input pipelines over TFDS data sets, for training and for evaluation.

Everything here stays in numpy/TF land and yields per-host batches; the trainer
places them on devices (``to_global_arrays``).

Training streams are a pure function of ``(seed, host)``: each host reads its own
part of the split, shuffles it with a seed derived from ``(seed, host, epoch)``,
repeats forever, and gives every example a running index and a per-example seed
``_rng`` derived from ``(seed, host, index)``. With ``host_invariant=True`` they are
instead a pure function of ``seed``: every host walks the same global stream and
keeps its slice of each global batch, so the global batches do not depend on the
number of hosts.

Training examples also carry ``_epoch``, the number of earlier passes over the split (0 in
evaluation), so that ``choice_no_replacement`` can cycle through an example's entries
without any state. ``_rng`` and ``_epoch`` are dropped after the pp.

Random pp ops read ``data["_rng"]`` (an int64 ``[2]`` seed for TF's stateless
random ops) instead of global TF seeds, so that the same run gives the same
batches, and a resumed run gives the batches of the uninterrupted one
(``start_index``). One caveat: tf.data's shuffle also mixes in
TF's global seed, so code that calls ``tf.random.set_seed`` changes the order (bv
never sets it).

Eval streams visit each example of the split exactly once over all hosts, pad to
full batches with zeros marked ``_mask=False``, and take the same number of steps
on every host, so that no host waits forever on a collective.

Raw examples carry ``_id``, an int32 hash of TFDS's example id. Images are not
decoded on read (``skip_decode``), so pp strings start with ``decode``, as in
big_vision.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from bv.core import registry
from bv.core.config import ConfigError
from bv.core import tree as bv_tree
from bv.core.data import custom
from bv.core.data import embedded  # noqa: F401  (registers the embedded data sets)

AUTOTUNE = tf.data.AUTOTUNE
PreprocessFn = Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]

# Keys for the strong hash of TFDS ids into ``_id``, and the fixed seed of eval pipelines.
_ID_HASH_KEY = (0x62765F69645F6B31, 0x5446445349445321)
_EVAL_SEED = 0


# ---------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder for ``name``: an embedded data set, or any TFDS data set.

    Embedded names (``bv.core.registry.datasets``: ``mnist5k``, ``digits``, ...) are
    built into ``data_dir`` on first use. Other names go to ``tfds.builder``, which
    also finds data sets written by ``bv.core.data.custom`` into ``data_dir``.
    ``data_dir`` defaults to ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
    """
    data_dir = data_dir or custom.default_data_dir()
    if name in registry.datasets:
        builder: tfds.core.DatasetBuilder = registry.datasets.get(name)(data_dir=data_dir)
        return builder
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown_dataset(name, data_dir) from None


def _unknown_dataset(name: str, data_dir: str) -> registry.UnknownNameError:
    """A short error for a data set name nobody knows: the closest names, not TFDS's list of all 400+."""
    embedded_names = list(registry.datasets.names())
    try:
        built = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)) and d != "downloads")
    except OSError:
        built = []
    base = name.split(":")[0].split("/")[0]  # "name:1.0.0" and "name/config" ask for the data set "name"
    close = difflib.get_close_matches(base, embedded_names + built + list(tfds.list_builders()), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, dict.fromkeys(close)))}?" if close else ""
    return registry.UnknownNameError(
        f"Unknown dataset {name!r}.{hint} It is not an embedded data set ({', '.join(embedded_names)}), not a data set "
        f"of the TFDS catalogue, and not built in {data_dir!r}"
        + (f" (which holds {', '.join(built[:10])}{', ...' if len(built) > 10 else ''})" if built else "")
        + ". Check config.input.data.name (or the evaluator's data.name) and its data_dir."
    )


def _split_error(builder: tfds.core.DatasetBuilder, split: Any, reason: Exception) -> ConfigError:
    splits = builder.info.splits
    listing = ", ".join(f"{name} ({int(info.num_examples)} examples)" for name, info in splits.items())
    why = (str(reason).splitlines() or [type(reason).__name__])[0].split(". Should be one of")[0]
    return ConfigError(
        f"No split {split!r} in data set {builder.info.name!r} ({why.rstrip('.')}). Its splits are: {listing}. "
        "A split can also be a slice or a sum of them, such as 'train[:90%]', 'train[1000:]' or 'train+test'."
    )


def num_examples(builder: tfds.core.DatasetBuilder, split: tfds.typing.SplitArg) -> int:
    """Number of examples in a TFDS split string such as ``"train[:90%]"`` or ``"train+test"``."""
    splits = builder.info.splits
    if splits:
        try:
            return int(splits[split].num_examples)
        except (KeyError, ValueError) as e:  # an unknown split name, or a slice TFDS cannot parse
            raise _split_error(builder, split, e) from None
    # No split metadata, as under `tfds.testing.mock_data`: ask the data itself.
    try:
        cardinality = int(builder.as_dataset(split=split).cardinality())
    except (AssertionError, FileNotFoundError):  # TFDS asserts that the data was prepared.
        cardinality = -1
    if cardinality < 0:
        raise ValueError(
            f"Data set {builder.info.name!r} has no prepared data in {builder.data_dir!r}; "
            f"prepare it first (e.g. `tfds build {builder.info.name} --data_dir=...`)."
        )
    return cardinality


def host_split(split: str, process_index: int, process_count: int) -> tfds.typing.SplitArg:
    """The part of ``split`` that host ``process_index`` of ``process_count`` reads (near-even parts)."""
    return tfds.even_splits(split, n=process_count)[process_index]


def _read(
    builder: tfds.core.DatasetBuilder, split: tfds.typing.SplitArg, skip_decode: Sequence[str]
) -> tf.data.Dataset:
    """Raw examples of ``split`` in the stored order, with ``_id`` and undecoded ``skip_decode`` features."""
    features = builder.info.features
    decoders = {k: tfds.decode.SkipDecoding() for k in skip_decode if k in features}
    read_config = tfds.ReadConfig(skip_prefetch=True, try_autocache=False, add_tfds_id=True)
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders or None, read_config=read_config)

    def add_id(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        example = dict(example)
        if "tfds_id" not in example:
            return example
        tfds_id = example.pop("tfds_id")
        example["_id"] = tf.cast(tf.strings.to_hash_bucket_strong(tfds_id, 2**31 - 1, _ID_HASH_KEY), tf.int32)
        return example

    return ds.map(add_id)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    options.experimental_optimization.inject_prefetch = False  # Keeps memory predictable.
    return options


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is out of range for process_count {count}.")
    return index, count


def _local_batch_size(batch_size: int, process_count: int) -> int:
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"The global batch size ({batch_size}) must be a positive multiple of the number of hosts "
            f"({process_count})."
        )
    return batch_size // process_count


# ---------------------------------------------------------------------------
# Per-example seeds
# ---------------------------------------------------------------------------


def _keys(seed: int, process_index: int, stream: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Two int64 keys, (shuffle key, example key), derived statelessly from (seed, host, stream).

    ``stream`` tells apart the independent streams of one host (the sources of a mixture
    and its choice of source); stream 0 is the plain single-source stream.
    """
    if not isinstance(seed, (int, np.integer)) or not -(2**63) <= int(seed) < 2**63:
        raise ValueError(f"seed must be an int64 integer, got {seed!r}.")
    base = tf.constant([int(seed), process_index], tf.int64)
    keys = tf.random.stateless_uniform([2], seed=base, dtype=tf.int64, minval=None, maxval=None, alg="philox")
    if stream:
        keys = tf.random.stateless_uniform(
            [2],
            seed=tf.stack([keys[0] ^ keys[1], tf.constant(stream, tf.int64)]),
            dtype=tf.int64,
            minval=None,
            maxval=None,
            alg="philox",
        )
    return keys[0], keys[1]


def example_rng(key: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """The int64 ``[2]`` seed of example ``index`` in the stream keyed by ``key``."""
    seed = tf.stack([tf.cast(key, tf.int64), tf.cast(index, tf.int64)])
    return tf.random.stateless_uniform([2], seed=seed, dtype=tf.int64, minval=None, maxval=None, alg="philox")


def _with_rng(
    preprocess_fn: PreprocessFn, key: tf.Tensor, epoch_size: int | None = None
) -> Callable[[tf.Tensor, dict[str, tf.Tensor]], Any]:
    """Wraps ``preprocess_fn`` to see ``_rng`` and ``_epoch`` for (index, example) pairs and to drop them after.

    ``_epoch`` is ``index // epoch_size`` (the passes over the split before this one), or 0
    without ``epoch_size`` (evaluation).
    """

    def fn(index: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        example = dict(example)
        example["_rng"] = example_rng(key, index)
        example["_epoch"] = tf.cast(index // epoch_size if epoch_size else 0, tf.int64)
        result = preprocess_fn(example)
        if not isinstance(result, Mapping):
            raise TypeError(f"preprocess_fn must return a dict of tensors, got {type(result).__name__}.")
        result = dict(result)
        result.pop("_rng", None)
        result.pop("_epoch", None)
        return result

    return fn


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def make_for_train(
    builder: tfds.core.DatasetBuilder,
    split: str,
    batch_size: int,
    preprocess_fn: PreprocessFn,
    *,
    shuffle_buffer_size: int = 10_000,
    seed: int,
    start_index: int = 0,
    cache_raw: bool = False,
    prefetch: int = 2,
    num_parallel_calls: int = AUTOTUNE,
    skip_decode: Sequence[str] = ("image",),
    process_index: int | None = None,
    process_count: int | None = None,
    host_invariant: bool = False,
) -> tf.data.Dataset:
    """An endless stream of this host's training batches (``batch_size // process_count`` each).

    By default each host reads its own even part of ``split``; every epoch of it is
    shuffled (buffer ``shuffle_buffer_size``, 0 to keep the stored order) with a seed
    from ``(seed, host, epoch)``. Examples then get a running index and ``_rng``, are
    preprocessed in parallel (deterministically ordered), and batched dropping the
    remainder. The global batch (all hosts' batches, concatenated in host order) thus
    depends on the number of hosts.

    ``host_invariant=True`` makes the global batches independent of the number of
    hosts, e.g. to compare or resume a run on a different number of hosts: every host
    reads the whole ``split`` with the shuffle and example keys of a single host
    (so the example order and each example's ``_rng`` are those of a 1-host run),
    cuts that global stream into global batches of ``batch_size`` consecutive
    examples, and keeps the ``batch_size // process_count`` examples at its own
    positions ``[host * local, (host + 1) * local)`` of each. Hosts drop the other
    examples before preprocessing, so preprocessing costs the same as by default,
    but every host reads (and, with ``cache_raw``, caches) every raw example of the
    split: ``process_count`` times the reading of the default mode in total.

    ``start_index`` counts examples already consumed on this host: after ``k`` steps,
    pass ``k * batch_size // process_count`` to get exactly batches ``k, k+1, ...`` of the
    uninterrupted run, in either mode (with ``host_invariant`` the global stream
    resumes at ``start_index * process_count``). Whole epochs are skipped without
    reading them; the rest of the current epoch is read raw and dropped before
    preprocessing.

    ``process_index``/``process_count`` default to JAX's; pass them to build another
    host's stream (tests, debugging).
    """
    process_index, process_count = _process(process_index, process_count)
    local_batch_size = _local_batch_size(batch_size, process_count)
    plan = stream_plan(start_index, batch_size, process_index, process_count, host_invariant)
    shuffle_key, example_key = _keys(seed, plan.key_host)
    ds, epoch_size = indexed_examples(
        builder,
        split,
        plan,
        shuffle_key,
        shuffle_buffer_size=shuffle_buffer_size,
        start=plan.stream_start,
        cache_raw=cache_raw,
        skip_decode=skip_decode,
    )
    if plan.filters:
        ds = ds.filter(_owned_by(process_index, batch_size, local_batch_size))
    pp = _with_rng(preprocess_fn, example_key, epoch_size)
    ds = ds.map(pp, num_parallel_calls=num_parallel_calls, deterministic=True)
    return batch_for_train(ds, local_batch_size, prefetch)


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """Which stream one host walks, and where it starts (see ``make_for_train``).

    ``stream_start`` is the first index of the stream this host still needs;
    ``key_host`` the host whose keys the stream uses (0 for host-invariant streams);
    ``filters`` whether the host keeps only its slice of each global batch.
    """

    process_index: int
    process_count: int
    host_invariant: bool
    key_host: int
    stream_start: int

    @property
    def filters(self) -> bool:
        return self.host_invariant and self.process_count > 1

    def split_to_read(self, split: str) -> tfds.typing.SplitArg:
        return split if self.host_invariant else host_split(split, self.process_index, self.process_count)


def stream_plan(
    start_index: int, batch_size: int, process_index: int, process_count: int, host_invariant: bool
) -> StreamPlan:
    """The ``StreamPlan`` of a host that has consumed ``start_index`` examples."""
    local_batch_size = _local_batch_size(batch_size, process_count)
    if start_index < 0:
        raise ValueError(f"start_index must be >= 0, got {start_index}.")
    if host_invariant:
        # The first global index this host still needs: its position in the global batch it is in.
        steps_done, in_batch = divmod(start_index, local_batch_size)
        stream_start = steps_done * batch_size + process_index * local_batch_size + in_batch
        return StreamPlan(process_index, process_count, True, 0, stream_start)
    return StreamPlan(process_index, process_count, False, process_index, start_index)


def indexed_examples(
    builder: tfds.core.DatasetBuilder,
    split: str,
    plan: StreamPlan,
    shuffle_key: tf.Tensor,
    *,
    shuffle_buffer_size: int,
    start: int,
    cache_raw: bool,
    skip_decode: Sequence[str],
) -> tuple[tf.data.Dataset, int]:
    """The endless (index, raw example) stream of ``split`` for ``plan``'s host from index ``start``, and its epoch size.

    Each epoch is shuffled with a seed from ``(shuffle_key, epoch)``; whole epochs before
    ``start`` are skipped without reading them. Index ``i`` is in epoch ``i // epoch size``.
    """
    split_to_read = plan.split_to_read(split)
    epoch_size = num_examples(builder, split_to_read)
    if epoch_size == 0:
        whose = "The split" if plan.host_invariant else f"Host {plan.process_index} of {plan.process_count}"
        raise ValueError(f"{whose} gets no examples of {split!r} in {builder.info.name!r}.")

    raw = _read(builder, split_to_read, skip_decode)
    if cache_raw:
        raw = raw.cache()

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        if not shuffle_buffer_size:
            return raw
        epoch_seed = tf.random.stateless_uniform(
            [], seed=tf.stack([shuffle_key, e]), dtype=tf.int64, minval=None, maxval=None, alg="philox"
        )
        return raw.shuffle(shuffle_buffer_size, seed=epoch_seed, reshuffle_each_iteration=False)

    first_epoch, offset = divmod(start, epoch_size)
    ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
    return ds.skip(offset).enumerate(start=start), epoch_size


def batch_for_train(ds: tf.data.Dataset, local_batch_size: int, prefetch: int) -> tf.data.Dataset:
    """Batches preprocessed training examples (dropping the remainder) with bv's tf.data options."""
    ds = ds.batch(local_batch_size, drop_remainder=True)
    if prefetch:
        ds = ds.prefetch(prefetch)
    return ds.with_options(_options())


def _owned_by(
    process_index: int, batch_size: int, local_batch_size: int
) -> Callable[[tf.Tensor, dict[str, tf.Tensor]], tf.Tensor]:
    """Predicate on (global index, example): whether the example falls in this host's slice of its global batch."""

    def owned(index: tf.Tensor, example: dict[str, tf.Tensor]) -> tf.Tensor:
        del example
        return tf.equal((index % batch_size) // local_batch_size, process_index)

    return owned


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def make_for_eval(
    builder: tfds.core.DatasetBuilder,
    split: str,
    batch_size: int,
    preprocess_fn: PreprocessFn,
    *,
    cache: bool = False,
    prefetch: int = 1,
    num_parallel_calls: int = AUTOTUNE,
    skip_decode: Sequence[str] = ("image",),
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[tf.data.Dataset, int]:
    """This host's eval batches over ``split`` and their number, equal on all hosts.

    Over all hosts each example appears exactly once, with ``_mask=True``; the last
    batches are filled with all-zero examples with ``_mask=False``. ``_id`` is carried
    over from the raw example when ``preprocess_fn`` drops it. ``_rng`` is given as in
    training, from a fixed seed and the example's position in the split, so random pp
    ops work and give the same result on any number of hosts.
    All examples must have the same shapes after ``preprocess_fn`` (they are batched).
    The dataset is finite; iterate it once per evaluation. ``cache`` keeps the
    preprocessed batches in memory after the first full pass.
    """
    process_index, process_count = _process(process_index, process_count)
    local_batch_size = _local_batch_size(batch_size, process_count)
    parts = [host_split(split, i, process_count) for i in range(process_count)]
    counts = [num_examples(builder, part) for part in parts]
    if not sum(counts):
        raise ValueError(f"Split {split!r} of {builder.info.name!r} has no examples to evaluate.")
    steps = math.ceil(max(counts) / local_batch_size)
    _, example_key = _keys(_EVAL_SEED, 0)

    wrapped = _with_rng(preprocess_fn, example_key)

    def pp(index: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        result = wrapped(index, example)
        result.setdefault("_mask", tf.constant(True))
        if "_id" in example:
            result.setdefault("_id", example["_id"])
        return result

    ds = _read(builder, parts[process_index], skip_decode).enumerate(start=sum(counts[:process_index]))
    ds = ds.map(pp, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.concatenate(_padding(ds, has_examples=counts[process_index] > 0))
    ds = ds.batch(local_batch_size, drop_remainder=True).take(steps)
    if cache:
        ds = ds.cache()
    if prefetch:
        ds = ds.prefetch(prefetch)
    return ds.with_options(_options()), steps


def _padding(ds: tf.data.Dataset, has_examples: bool) -> tf.data.Dataset:
    """An endless stream of all-zero examples (so ``_mask`` is False) shaped like those of ``ds``.

    The zeros copy the shapes of the first real example, so that pp outputs whose static
    shape is unknown (e.g. a decoded image) still batch with them; a host without
    examples uses the static shapes, with unknown dimensions as 0.
    """
    for name, spec in bv_tree.flatten_with_names(ds.element_spec):
        if not isinstance(spec, tf.TensorSpec):
            raise TypeError(f"Eval pp outputs must be dense tensors to be padded; {name!r} is {spec}.")
    if has_examples:
        return ds.take(1).map(lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).repeat()
    zeros = tf.nest.map_structure(lambda spec: tf.zeros([d or 0 for d in spec.shape], spec.dtype), ds.element_spec)
    return tf.data.Dataset.from_tensors(zeros).repeat()


# ---------------------------------------------------------------------------
# To devices
# ---------------------------------------------------------------------------


def to_global_arrays(batch: Mapping[str, Any], sharding: jax.sharding.Sharding) -> Any:
    """Assembles this host's batch into global ``jax.Array``s laid out by ``sharding``.

    Each host passes its own local batch; the global batch is their concatenation
    along the first axis (``jax.make_array_from_process_local_data``).
    """

    def host_array(name: str, x: Any) -> np.ndarray:
        x = x.numpy() if isinstance(x, tf.Tensor) else np.asarray(x)
        if x.dtype.kind in "SUO":
            raise ValueError(
                f"Batch entry {name!r} holds strings ({x.dtype}), which cannot go to devices; "
                "drop it in the pp (e.g. with keep) or keep it on the host."
            )
        return x

    arrays = bv_tree.map_with_names(host_array, dict(batch))
    if jax.process_count() == 1:  # the local batch is the global one: one batched copy for all entries
        return jax.device_put(arrays, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), arrays)
