import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from bv.core import registry  # noqa: E402
from bv.core.data import build_from_arrays  # noqa: E402
from bv.evaluators import EvaluatorConfigError, MeanEvaluator, PerplexityEvaluator  # noqa: E402

# Three examples of three target tokens; 0 is padding.
TARGETS = np.asarray([[1, 2, 0], [2, 2, 1], [1, 0, 0]], np.int32)
WEIGHTS = np.asarray([[1, 0, 1], [0, 0, 1], [1, 1, 1]], bool)
# The model's next-token probabilities depend on the position only: row t is position t.
P = np.asarray([[0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.25, 0.25, 0.5]])
PARAMS = {"logp": jnp.log(jnp.asarray(P, jnp.float32))}


def _logits(params: dict, tokens: jax.Array) -> tuple[jax.Array, dict]:
    return jnp.broadcast_to(params["logp"], (*tokens.shape, 3)), {}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tfds")
    build_from_arrays("three_texts", {"test": {"labels": TARGETS, "weights": WEIGHTS}}, str(folder))
    return folder


def _mesh(devices: int) -> Mesh:
    if devices > jax.device_count():
        pytest.skip(f"needs {devices} devices")
    return Mesh(np.asarray(jax.devices()[:devices]), ("data",))


def _perplexity(data_dir: Path, devices: int = 1, batch_size: int = 2, **kw: object) -> PerplexityEvaluator:
    config: dict = dict(
        data={"name": "three_texts", "split": "test"},
        pp_fn="keep('labels', 'weights')",
        batch_size=batch_size,
        mesh=_mesh(devices),
        data_dir=str(data_dir),
    )
    return PerplexityEvaluator({"predict": _logits}, **{**config, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("devices,batch_size", [(1, 1), (1, 2), (2, 2)])
def test_token_level_nll_skips_padding_tokens_and_padding_examples(
    data_dir: Path, devices: int, batch_size: int
) -> None:
    metrics = _perplexity(data_dir, devices, batch_size).run(PARAMS)
    # Non-padding targets and their probabilities P[position, target]:
    # ex 0: 1 -> .5, 2 -> .7; ex 1: 2 -> .3, 2 -> .7, 1 -> .25; ex 2: 1 -> .5. Six tokens.
    loss = -np.log([0.5, 0.7, 0.3, 0.7, 0.25, 0.5]).sum() / 6
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(np.exp(loss), rel=1e-5)
    per_example = np.mean([-np.log([0.5, 0.7]).mean(), -np.log([0.3, 0.7, 0.25]).mean(), -np.log(0.5)])
    assert abs(metrics["loss"] - per_example) > 0.01  # a mean over tokens, not over examples


def test_every_token_counts_without_a_pad_value_but_padding_examples_never(data_dir: Path) -> None:
    metrics = _perplexity(data_dir, 1, 2, pad_value=None).run(PARAMS)
    # All 9 tokens of the 3 real examples (the 4th, a padding example of zeros, is masked):
    # the six above plus ex 0 position 2 -> P[2, 0] = .25, ex 2 positions 1, 2 -> .1 and .25.
    loss = -np.log([0.5, 0.7, 0.3, 0.7, 0.25, 0.5, 0.25, 0.1, 0.25]).sum() / 9
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)


def test_an_explicit_token_mask_and_shifted_targets(data_dir: Path) -> None:
    masked = _perplexity(data_dir, mask_key="weights", pad_value=None).run(PARAMS)
    # Weights pick ex 0 positions 0, 2 (1 -> .5, 0 -> .25), ex 1 position 2 (1 -> .25), all of ex 2 (.5, .1, .25).
    loss = -np.log([0.5, 0.25, 0.25, 0.5, 0.1, 0.25]).sum() / 6
    assert masked["loss"] == pytest.approx(loss, rel=1e-5)
    shifted = _perplexity(data_dir, shift=True).run(PARAMS)
    # Position t scores target t + 1; padding targets (0) skipped: ex 0: P[0, 2] = .3;
    # ex 1: P[0, 2] = .3, P[1, 1] = .2; ex 2: nothing.
    assert shifted["loss"] == pytest.approx(-np.log([0.3, 0.3, 0.2]).sum() / 3, rel=1e-5)


def test_bad_inputs_are_clear_errors(data_dir: Path) -> None:
    with pytest.raises(EvaluatorConfigError, match=r"Evaluator 'perplexity' \(perplexity\): pred='decode'.*predict"):
        _perplexity(data_dir, pred="decode")
    with pytest.raises(EvaluatorConfigError, match=r"the batch has no 'tokens'"):
        _perplexity(data_dir, input_key="tokens").run(PARAMS)
    flat = {"predict": lambda params, tokens: tokens.astype(jnp.float32)}
    with pytest.raises(EvaluatorConfigError, match=r"logits \[batch, T, vocab\]"):
        PerplexityEvaluator(
            flat,
            data={"name": "three_texts", "split": "test"},
            pp_fn="",
            batch_size=1,
            mesh=_mesh(1),
            data_dir=str(data_dir),
        ).run(PARAMS)


def test_mean_averages_each_per_example_value_over_real_examples(data_dir: Path) -> None:
    def values(params: dict, batch: dict) -> dict:
        return {"length": jnp.sum(batch["labels"] > 0, axis=1), "first": batch["labels"][:, 0] * params["scale"]}

    def lengths(params: dict, labels: jax.Array) -> jax.Array:
        return jnp.sum(labels > 0, axis=1)

    fns: dict[str, Any] = {"predict": values, "lengths": lengths, "bad": lambda params, labels: labels}
    common: dict[str, Any] = dict(
        data={"name": "three_texts", "split": "test"}, pp_fn="keep('labels')", data_dir=str(data_dir)
    )
    for devices, batch_size in [(1, 2), (2, 2)]:
        metrics = MeanEvaluator(fns, batch_size=batch_size, mesh=_mesh(devices), **common).run({"scale": 2.0})
        # Lengths 2, 3, 1 -> 2; first tokens 1, 2, 1 (times 2) -> 8 / 3. The padding example is not counted.
        assert metrics == pytest.approx({"length": 2.0, "first": 8 / 3})
    single = MeanEvaluator(fns, pred="lengths", inputs="labels", batch_size=2, mesh=_mesh(1), **common)
    assert single.run({}) == pytest.approx({"lengths": 2.0})
    with pytest.raises(EvaluatorConfigError, match=r"one value per example \(shape \(2,\)\); 'bad' has shape \(2, 3\)"):
        MeanEvaluator(fns, pred="bad", inputs=["labels"], batch_size=2, mesh=_mesh(1), **common).run({})
    assert registry.evaluators.get("mean") is MeanEvaluator
    assert registry.evaluators.get("perplexity") is PerplexityEvaluator
