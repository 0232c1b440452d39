"""Few-shot linear evaluation (big_vision's ``fewshot_lsr``): how well k examples per class train a linear probe.

For each data set, the model's representation (an intermediate such as
``pre_logits``) of every train and test example is computed once per run. Then,
for each seed and each shot count k, k train examples of every class are drawn,
a ridge regression is fitted in closed form from their representations onto
one-hot targets in {-1, +1}, and the test examples are classified by the largest
regression output. The reported accuracy is the mean over seeds.

As in big_vision: features are standardised with the mean and standard deviation
of the drawn examples, a constant feature of 100 is appended so that the bias is
almost unregularised, and the shots are nested (a seed's 5-shot examples include
its 1-shot examples), since each seed shuffles every class once and takes the
first k. The solve runs on the host in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bv.core import registry
from bv.core.data import input_pipeline
from bv.evaluators import common

BIAS_FEATURE = 100.0
"""The constant appended to every standardised representation; large, so the bias is barely regularised."""

STD_EPS = 1e-5
"""Added to the per-feature standard deviation, so constant features do not divide by zero."""


def ridge_weights(x: np.ndarray, y: np.ndarray, l2_reg: float) -> np.ndarray:
    """``argmin_w |x w - y|^2 + l2_reg |w|^2``, exactly, in the cheaper of its primal and dual forms.

    ``x`` is ``[n, d]``, ``y`` is ``[n, c]``; the result is ``[d, c]``. With more
    points than features it solves ``(x'x + l2 I) w = x'y``; otherwise it uses the
    equal ``w = x' (x x' + l2 I)^-1 y``, whose system is only ``n x n``.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n, d = x.shape
    if n >= d:
        return np.linalg.solve(x.T @ x + l2_reg * np.eye(d), x.T @ y)  # type: ignore[no-any-return]
    return x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(n), y)  # type: ignore[no-any-return]


def linear_probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    l2_reg: float,
) -> float:
    """Test accuracy of the ridge regression from ``train_x`` onto {-1, +1} one-hot ``train_y`` (int labels)."""
    train_x = np.asarray(train_x, np.float64)
    mean = train_x.mean(axis=0, keepdims=True)
    std = train_x.std(axis=0, keepdims=True) + STD_EPS

    def features(z: np.ndarray) -> np.ndarray:
        z = (np.asarray(z, np.float64) - mean) / std
        return np.concatenate([z, np.full((len(z), 1), BIAS_FEATURE)], axis=1)

    targets = 2.0 * np.eye(num_classes)[np.asarray(train_y)] - 1.0
    weights = ridge_weights(features(train_x), targets, l2_reg)
    predicted = np.argmax(features(test_x) @ weights, axis=1)
    return float(np.mean(predicted == np.asarray(test_y)))


def shuffled_class_indices(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """For each class, the positions of its examples in ``labels``, shuffled by ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


@dataclasses.dataclass
class _DataSet:
    """One entry of the config's ``datasets``: its metric name, TFDS name, splits and eval data."""

    key: str
    tfds_name: str
    train_split: str
    test_split: str
    train: common.EvalData
    test: common.EvalData
    num_classes: int | None  # None: one more than the largest label seen


@registry.evaluators.register("fewshot_lsr")
class FewshotEvaluator:
    """Few-shot linear-probe accuracy per data set and shot count (see the module docstring).

    Config:

    - ``datasets``: ``{key: (train_split, test_split)}`` with ``key`` the TFDS (or
      embedded) name, or ``{key: (tfds_name, train_split, test_split)}`` to report
      under another name. Splits may be sliced (``"train[:10000]"``), which is how
      to cap a large train split: every train example is represented each run.
    - ``pp_train`` / ``pp_eval``: pp strings for the train / test split, each either
      one string for all data sets or ``{key: pp}``; ``pp`` sets both at once (the
      specific ones win). The pp must give ``image`` at the model's input size and
      keep the integer label ``label_key`` (or a one-hot vector of it).
    - ``shots`` (default ``(1, 5, 10, 25)``), ``seeds`` (default ``(0, 1, 2)``),
      ``l2_reg`` (default ``2**10``, big_vision's).
    - ``representation``: the intermediate of the predict function's extras to
      probe (default ``"pre_logits"``); None probes its first output.
    - ``pred`` (default ``"predict"``), ``label_key`` (default ``"label"``),
      ``per_seed`` (also report each seed), ``cache`` (keep preprocessed batches).

    Metrics: ``<key>_<k>shot`` (mean over seeds), ``<key>_<k>shot_seed<s>`` with
    ``per_seed``, and ``mean_<k>shot`` (mean over data sets) when there are several.
    Every class of the label feature needs at least ``max(shots)`` train examples;
    otherwise ``run`` raises an error naming the classes and their counts.
    """

    def __init__(
        self,
        predict_fns: Mapping[str, Callable[..., Any]],
        *,
        datasets: Mapping[str, Sequence[str]],
        batch_size: int,
        mesh: jax.sharding.Mesh,
        pp_train: str | Mapping[str, str] | None = None,
        pp_eval: str | Mapping[str, str] | None = None,
        pp: str | Mapping[str, str] | None = None,
        shots: Sequence[int] = (1, 5, 10, 25),
        seeds: Sequence[int] = (0, 1, 2),
        l2_reg: float = 2.0**10,
        representation: str | None = "pre_logits",
        pred: str = "predict",
        label_key: str = "label",
        per_seed: bool = False,
        cache: bool = False,
        data_dir: str | None = None,
        workdir: str | None = None,
        name: str = "fewshot",
    ):
        del workdir  # Writes nothing.
        self.where = where = f"Evaluator {name!r} (fewshot_lsr)"
        predict_fn = common.pick(predict_fns, pred, where)
        self.shots = _positive_ints(shots, "shots", where)
        self.seeds = _ints(seeds, "seeds", where)
        if not isinstance(l2_reg, (int, float)) or not l2_reg > 0:
            raise common.EvaluatorConfigError(
                f"{where}: l2_reg must be a positive number (big_vision uses 2**10 = 1024), got {l2_reg!r}."
            )
        self.l2_reg = float(l2_reg)
        self.per_seed = bool(per_seed)
        self.label_key = label_key
        entries = _entries(datasets, where)
        for option, value in (("pp_train", pp_train), ("pp_eval", pp_eval), ("pp", pp)):
            unknown = sorted(set(value) - {k for k, _ in entries}) if isinstance(value, Mapping) else []
            if unknown:
                raise common.EvaluatorConfigError(
                    f"{where}: {option} has entries for {unknown}, which are not keys of datasets "
                    f"({', '.join(k for k, _ in entries)})."
                )
        self.datasets = [
            self._make_dataset(key, spec, pp_train, pp_eval, pp, batch_size, mesh, data_dir, cache)
            for key, spec in entries
        ]

        def represent(params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
            outputs = predict_fn(params, batch["image"])
            if representation is None:
                rep = common.first_output(outputs)
            else:
                rep = common.named_output(outputs, representation, where)
            labels = batch[label_key]
            if labels.ndim == 2:  # one-hot
                labels = jnp.argmax(labels, axis=-1)
            return jnp.reshape(rep, (rep.shape[0], -1)), labels.astype(jnp.int32), batch["_mask"]

        # Replicated outputs: every host gets every example's representation (the solve needs them all).
        self._represent_step = jax.jit(represent, out_shardings=common.replicated(mesh))

    def _make_dataset(
        self,
        key: str,
        spec: Sequence[str],
        pp_train: str | Mapping[str, str] | None,
        pp_eval: str | Mapping[str, str] | None,
        pp: str | Mapping[str, str] | None,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        data_dir: str | None,
        cache: bool,
    ) -> _DataSet:
        where = self.where
        if isinstance(spec, str) or not isinstance(spec, Sequence) or len(spec) not in (2, 3):
            raise common.EvaluatorConfigError(
                f"{where}: datasets[{key!r}] must be (train_split, test_split) or (tfds_name, train_split, "
                f"test_split), e.g. ('train', 'test'); got {spec!r}."
            )
        tfds_name, train_split, test_split = (key, *spec) if len(spec) == 2 else tuple(spec)
        pps = {
            split: _pp_for(key, specific, pp, option, where)
            for split, specific, option in (("train", pp_train, "pp_train"), ("test", pp_eval, "pp_eval"))
        }
        keys = ("image", self.label_key)
        train, test = (
            common.EvalData(
                {"name": tfds_name, "split": split},
                pps[part],
                batch_size,
                mesh,
                where=f"{where}, data set {key!r}",
                data_dir=data_dir,
                cache=cache,
                keys=keys,
            )
            for part, split in (("train", train_split), ("test", test_split))
        )
        label_ranks = set()
        for part, data in (("train", train), ("test", test)):
            element = data.element_spec()
            missing = [k for k in keys if k not in element]
            if missing:
                raise common.EvaluatorConfigError(
                    f"{where}: the {part} pp of data set {key!r} gives {sorted(element)}, without {missing}. "
                    f"It must give 'image' at the model's input size and keep the label {self.label_key!r} "
                    "(set label_key if the label is elsewhere)."
                )
            label_ranks.add(element[self.label_key].shape.rank)
        if not label_ranks <= {1, 2} or len(label_ranks) != 1:
            raise common.EvaluatorConfigError(
                f"{where}: data set {key!r}: {self.label_key!r} must be an integer class per example (or a one-hot "
                "vector), the same in the train and test pp."
            )
        label_spec = train.element_spec()[self.label_key]
        if label_spec.shape.rank == 2:
            num_classes = label_spec.shape[-1]
        else:
            feature = _feature(tfds_name, data_dir, self.label_key)
            num_classes = getattr(feature, "num_classes", None)
        return _DataSet(key, tfds_name, train_split, test_split, train, test, num_classes)

    def _represent(self, params: Any, data: common.EvalData) -> tuple[np.ndarray, np.ndarray]:
        reps, labels = [], []
        for batch, _ in data.batches():
            rep, label, mask = jax.device_get(self._represent_step(params, batch))
            keep = np.asarray(mask).astype(bool)
            reps.append(np.asarray(rep)[keep])
            labels.append(np.asarray(label)[keep])
        return np.concatenate(reps), np.concatenate(labels)

    def _check_shots(self, ds: _DataSet, labels: np.ndarray, num_classes: int) -> None:
        counts = np.bincount(labels, minlength=num_classes)[:num_classes]
        need = max(self.shots)
        short = np.flatnonzero(counts < need)
        if len(short):
            listed = ", ".join(f"class {c}: {counts[c]}" for c in short[:10]) + (" ..." if len(short) > 10 else "")
            raise common.EvaluatorConfigError(
                f"{self.where}: data set {ds.key!r} ({ds.tfds_name}:{ds.train_split}) has fewer than {need} "
                f"train examples in {len(short)} of its {num_classes} classes ({listed}), so {need}-shot "
                f"cannot be drawn. Lower shots to at most {int(counts.min())}, or use a larger train split."
            )

    def run(self, params: Any) -> dict[str, float]:
        """The few-shot accuracies of ``params`` (see the class docstring for the names)."""
        metrics: dict[str, float] = {}
        for ds in self.datasets:
            train_x, train_y = self._represent(params, ds.train)
            test_x, test_y = self._represent(params, ds.test)
            num_classes = ds.num_classes or int(max(train_y.max(), test_y.max())) + 1
            self._check_shots(ds, train_y, num_classes)
            accuracy: dict[int, list[float]] = {k: [] for k in self.shots}
            for seed in self.seeds:
                per_class = shuffled_class_indices(train_y, num_classes, seed)
                for k in self.shots:
                    chosen = np.concatenate([idx[:k] for idx in per_class])
                    acc = linear_probe_accuracy(
                        train_x[chosen], train_y[chosen], test_x, test_y, num_classes, self.l2_reg
                    )
                    accuracy[k].append(acc)
                    if self.per_seed:
                        metrics[f"{ds.key}_{k}shot_seed{seed}"] = acc
            for k in self.shots:
                metrics[f"{ds.key}_{k}shot"] = float(np.mean(accuracy[k]))
        if len(self.datasets) > 1:
            for k in self.shots:
                metrics[f"mean_{k}shot"] = float(np.mean([metrics[f"{ds.key}_{k}shot"] for ds in self.datasets]))
        return metrics


def _entries(datasets: Mapping[str, Sequence[str]], where: str) -> list[tuple[str, Sequence[str]]]:
    if not isinstance(datasets, Mapping) or not datasets:
        raise common.EvaluatorConfigError(
            f"{where}: datasets must be a non-empty dict such as {{'mnist5k': ('train', 'test')}}, got {datasets!r}."
        )
    if "mean" in datasets:
        raise common.EvaluatorConfigError(
            f"{where}: 'mean' names the average over data sets; give that data set another key, as in "
            "{'my_mean': ('mean', 'train', 'test')}."
        )
    return [(str(k), v) for k, v in datasets.items()]


def _pp_for(
    key: str,
    specific: str | Mapping[str, str] | None,
    shared: str | Mapping[str, str] | None,
    option: str,
    where: str,
) -> str:
    """The pp string for data set ``key`` from ``pp_train``/``pp_eval`` (``specific``) or ``pp`` (``shared``)."""
    for value in (specific, shared):
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping) and key in value:
            return str(value[key])
    raise common.EvaluatorConfigError(
        f"{where}: no pp for data set {key!r}. Set {option} (or pp, for both splits) to a pp string, or to a "
        f'dict {{data set: pp}} with an entry for {key!r}, e.g. "decode(3)|resize(224)|value_range(-1, 1)".'
    )


def _feature(name: str, data_dir: str | None, label_key: str) -> Any:
    features = input_pipeline.get_builder(name, data_dir).info.features
    return features[label_key] if features is not None and label_key in features else None


def _positive_ints(values: Sequence[int], option: str, where: str) -> tuple[int, ...]:
    out = _ints(values, option, where)
    if any(v <= 0 for v in out):
        raise common.EvaluatorConfigError(f"{where}: {option} must be positive integers, got {tuple(values)!r}.")
    return out


def _ints(values: Sequence[int], option: str, where: str) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)):
        values = (int(values),)
    if (
        not isinstance(values, Sequence)
        or not values
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    ):
        raise common.EvaluatorConfigError(f"{where}: {option} must be a non-empty list of integers, got {values!r}.")
    return tuple(int(v) for v in values)
