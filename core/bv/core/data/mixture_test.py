"""Mixtures: weights, per-source pp, determinism, bitwise resume, hosts, and config errors."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bv.core.data import custom, input_pipeline as ip, mixture, sources

N_A, N_B = 40, 30


def _arrays(n: int, offset: int) -> dict[str, np.ndarray]:
    idx = np.arange(offset, offset + n)
    return {"image": np.broadcast_to(idx[:, None, None, None] % 256, (n, 4, 4, 1)).astype(np.uint8), "idx": idx}


@pytest.fixture(scope="module")
def builders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tfds.core.DatasetBuilder]:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return {
        "a": custom.build_from_arrays("mix_a", {"train": _arrays(N_A, 0)}, data_dir),
        "b": custom.build_from_arrays("mix_b", {"train": _arrays(N_B, 1000)}, data_dir),
    }


def _pp(source_id: int) -> ip.PreprocessFn:
    """Each source's own pp: it tags the source and adds noise from the example's ``_rng``."""

    def pp(data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = tf.cast(tf.io.decode_png(data["image"]), tf.float32)
        noise = tf.random.stateless_uniform([], seed=data["_rng"])
        return {"image": image, "idx": data["idx"], "source": tf.constant(source_id), "noise": noise}

    return pp


def _sources(builders: dict[str, tfds.core.DatasetBuilder], wa: float = 0.75, wb: float = 0.25) -> list:
    return [
        mixture.TrainSource("a", builders["a"], "train", _pp(0), wa),
        mixture.TrainSource("b", builders["b"], "train", _pp(1), wb),
    ]


def _take(ds: tf.data.Dataset, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(tfds.as_numpy(ds), n))


def _cat(batches: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.concatenate([b[key] for b in batches])


def _assert_equal(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_weights_set_the_mix_and_each_source_uses_its_own_pp(builders: dict) -> None:
    batches = _take(mixture.make_mixture_for_train(_sources(builders), 8, seed=0, shuffle_buffer_size=64), 40)
    idx, source = _cat(batches, "idx"), _cat(batches, "source")
    np.testing.assert_array_equal(source, (idx >= 1000).astype(source.dtype))  # pp of the right source
    share_a = float(np.mean(source == 0))
    assert abs(share_a - 0.75) < 0.07, share_a  # 320 draws: 3 standard deviations is 0.073
    # Each source walks whole shuffled epochs of its own split.
    from_a = idx[source == 0]
    assert sorted(from_a[:N_A]) == list(range(N_A)) and list(from_a[:N_A]) != list(range(N_A))
    # Positions of the two sources are interleaved, not blocked.
    assert 0 < np.argmax(source == 1) < 20


def test_same_seed_same_stream_other_seed_other_stream(builders: dict) -> None:
    first = _take(mixture.make_mixture_for_train(_sources(builders), 8, seed=3), 6)
    _assert_equal(first, _take(mixture.make_mixture_for_train(_sources(builders), 8, seed=3), 6))
    other = _take(mixture.make_mixture_for_train(_sources(builders), 8, seed=4), 6)
    assert not np.array_equal(_cat(first, "idx"), _cat(other, "idx"))


@pytest.mark.parametrize("block", [16, mixture.CHOICE_BLOCK])
def test_resume_gives_the_batches_of_the_uninterrupted_run(
    builders: dict, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small choice blocks make the resume cross several blocks and several epochs of each source.
    monkeypatch.setattr(mixture, "CHOICE_BLOCK", block)
    full = _take(mixture.make_mixture_for_train(_sources(builders), 8, seed=1, shuffle_buffer_size=64), 20)
    for step in (3, 11):
        resumed = mixture.make_mixture_for_train(
            _sources(builders), 8, seed=1, shuffle_buffer_size=64, start_index=step * 8
        )
        _assert_equal(full[step:], _take(resumed, 20 - step))


def test_source_counts_match_the_stream() -> None:
    key, _ = ip._keys(0, 0, 5)
    stream = np.array(list(mixture._choices(key, [2.0, 1.0, 1.0], 123).take(500).as_numpy_iterator()))
    before = mixture.source_counts(key, [2.0, 1.0, 1.0], 123)
    after = mixture.source_counts(key, [2.0, 1.0, 1.0], 623)
    np.testing.assert_array_equal(after - before, np.bincount(stream, minlength=3))
    assert after.sum() == 623


def test_hosts_read_disjoint_parts_by_default(builders: dict) -> None:
    idx = [
        set(
            _cat(
                _take(
                    mixture.make_mixture_for_train(_sources(builders), 8, seed=0, process_index=h, process_count=2), 10
                ),
                "idx",
            )
        )
        for h in range(2)
    ]
    assert idx[0] and idx[1] and not idx[0] & idx[1]


def _global(builders: dict, hosts: int, steps: int, start_step: int = 0) -> list[dict[str, np.ndarray]]:
    local = 8 // hosts
    per_host = [
        _take(
            mixture.make_mixture_for_train(
                _sources(builders),
                8,
                seed=5,
                host_invariant=True,
                start_index=start_step * local,
                process_index=h,
                process_count=hosts,
            ),
            steps,
        )
        for h in range(hosts)
    ]
    return [{k: np.concatenate([b[s][k] for b in per_host]) for k in per_host[0][s]} for s in range(steps)]


def test_host_invariant_mixture_does_not_depend_on_the_host_count(builders: dict) -> None:
    one = _global(builders, 1, 8)
    _assert_equal(one, _global(builders, 2, 8))
    _assert_equal(one[5:], _global(builders, 4, 3, start_step=5))


def test_sources_must_give_the_same_features(builders: dict) -> None:
    def other_pp(data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"image": tf.io.decode_png(data["image"]), "idx": data["idx"]}

    bad = [_sources(builders)[0], mixture.TrainSource("b", builders["b"], "train", other_pp, 1.0)]
    with pytest.raises(ValueError, match="same features after their pp.*'a' gives.*'b' gives"):
        mixture.make_mixture_for_train(bad, 8, seed=0)


def test_bad_weights_and_names(builders: dict) -> None:
    with pytest.raises(ValueError, match="not all 0"):
        mixture.make_mixture_for_train(_sources(builders, 0.0, 0.0), 8, seed=0)
    with pytest.raises(ValueError, match="finite, >= 0"):
        mixture.make_mixture_for_train(_sources(builders, -1.0, 1.0), 8, seed=0)
    twice = [_sources(builders)[0], _sources(builders)[0]]
    with pytest.raises(ValueError, match="unique"):
        mixture.make_mixture_for_train(twice, 8, seed=0)


# ---------------------------------------------------------------------------
# The config: input.data = {source: weight}, input[source] = dict(data=..., pp=...)
# ---------------------------------------------------------------------------


def test_parse_one_data_set() -> None:
    (src,) = sources.parse_sources({"data": {"name": "mnist5k", "split": "train"}, "pp": "decode"})
    assert (src.name, src.data["split"], src.pp, src.weight) == ("mnist5k", "train", "decode", 1.0)


def test_parse_a_mixture_with_per_source_and_default_pp() -> None:
    import ml_collections

    cfg: dict[str, Any] = {
        "data": {"big": 3, "small": 1, "off": 0},
        "pp": "decode|resize(8)",
        "big": {"data": {"name": "mnist5k", "split": "train"}, "pp": "decode(1)"},
        "small": {"data": {"name": "digits", "split": "train[:50%]"}},
        "off": {"data": {"name": "digits", "split": "test"}},
    }
    parsed = sources.parse_sources(ml_collections.ConfigDict(cfg))
    assert [(s.name, s.data["name"], s.pp, s.weight) for s in parsed] == [
        ("big", "mnist5k", "decode(1)", 3.0),
        ("small", "digits", "decode|resize(8)", 1.0),
    ]  # A weight of 0 turns a source off.


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"data": None}, "must be dict\\(name=..., split=...\\)"),
        ({"data": {"a": "heavy"}}, "maps each source to a weight"),
        ({"data": {"a": -1}}, "maps each source to a weight"),
        ({"data": {"a": 1}}, "Mixture source 'a' has no settings: expected config.input.a"),
        ({"data": {"a": 1}, "a": {"data": {"name": "digits"}}}, "needs both a name and a split"),
        ({"data": {"a": 1}, "a": {"data": {"name": "digits", "split": "train"}}}, "has no pp"),
        ({"data": {"a": 0}, "a": {"data": {"name": "digits", "split": "train"}, "pp": "x"}}, "Every weight"),
    ],
)
def test_bad_mixture_configs_say_what_is_expected(cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sources.parse_sources(cfg)
