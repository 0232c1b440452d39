"""The bv-lit configs: the offline LiT demo end to end at smoke size, and the big_vision analogues on small data.

``lit_mnist:runlocal`` runs both stages of ``./pants run projects/lit:train`` with a
one-layer text tower (stage 1 is ``bv.vit.configs.mnist:runlocal``); ``lit_coco``,
``lit_i1k`` and ``siglip_replication`` train two steps on a tiny captions data set or
``tfds.testing.mock_data`` (ImageNet).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from sklearn.datasets import load_digits

from bv.core import checkpoint, export, train
from bv.core.data import custom
from bv.core.config import load_config
from bv.core.optimizers import make_optimizer
from bv.core.run_plan import resolve_schedule
from bv.core.tasks import get_task
from bv.core.tree import flatten_with_names
from bv.lit import TwoTowerModel
from bv.lit import train as lit_train
from bv.lit.configs import lit_coco, lit_i1k, lit_mnist, siglip_replication  # noqa: F401  (loaded by name)


def _params(workdir: Path) -> dict[str, np.ndarray]:
    latest = checkpoint.latest(str(workdir))
    assert latest is not None
    return {k: np.asarray(v) for k, v in flatten_with_names(checkpoint.load_params(latest))}


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_lit_mnist_demo_both_stages_lock_the_trained_vit(tmp_path: Path) -> None:
    vit, lit = tmp_path / "vit", tmp_path / "lit"
    # Stage 1 (the README's MNIST ViT) is trained first by the demo; here its smoke-size version.
    train.main(["--config", "bv.vit.configs.mnist:runlocal", "--workdir", str(vit)])
    lit_train.main(
        [
            "--vit_workdir",
            str(vit),
            "--workdir",
            str(lit),
            "--config",
            f"bv.lit.configs.lit_mnist:runlocal,vit_workdir={vit}",
        ]
    )
    before, after = _params(vit), _params(lit)
    img = {k[len("img/") :]: v for k, v in after.items() if k.startswith("img/")}
    assert img and img.keys() == {k for k in before if not k.startswith("head/")}
    for name, value in img.items():  # loaded from stage 1 and locked while the text tower trained
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    final = _records(lit)[-1]
    for key in ("zeroshot/mnist5k_prec@1", "zeroshot/digits_prec@1", "retrieval/txt2img_R@1", "retrieval/txt2img_R@5"):
        assert 0.0 <= final[key] <= 1.0, key

    # The trained model exported (bv-export) and reloaded: the same params, bit for bit, and the same answers.
    exported = export.export(str(lit), str(tmp_path / "hub"))
    reloaded = TwoTowerModel.from_pretrained(str(tmp_path / "hub"))
    saved = dict(flatten_with_names(reloaded.params))
    assert saved.keys() == after.keys()
    for name, value in saved.items():
        np.testing.assert_array_equal(np.asarray(value), after[name], err_msg=name)
    assert reloaded.config.model["text_len"] == lit_mnist.TEXT_LEN and reloaded.config.channels == 1
    digits = load_digits()
    images = reloaded.preprocess([(img[..., None] * 15.9).astype(np.uint8) for img in digits.images[:20]])
    prompts = reloaded.tokenize([f"the digit {w}" for w, _ in lit_mnist.CLASS_NAMES])
    assert prompts.shape == (10, lit_mnist.TEXT_LEN)
    np.testing.assert_array_equal(reloaded.zero_shot(images, prompts), exported.zero_shot(images, prompts))


@pytest.fixture(scope="module")
def captions_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``tiny_captions``: COCO's layout (``image``, ``captions/text``), 32 train and 16 val images.

    TFDS's mock data cannot stand in for coco_captions: it fakes the nested captions inconsistently.
    """
    folder = tmp_path_factory.mktemp("tfds")
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        }
    )
    rng = np.random.default_rng(0)

    def examples(n: int):  # type: ignore[no-untyped-def]
        def gen():  # type: ignore[no-untyped-def]
            for i in range(n):
                texts = [f"a photo of {'many' if i % 2 else 'the'} small {j}" for j in range(1 + i % 3)]
                yield i, {"image": rng.integers(0, 255, (32, 32, 3), np.uint8), "captions": {"text": texts}}

        return gen

    custom.write_dataset("tiny_captions", features, {"train": examples(32), "val": examples(16)}, data_dir=str(folder))
    return str(folder)


@pytest.mark.parametrize(
    "spec",
    [
        "bv.lit.configs.lit_coco:runlocal,data=tiny_captions",
        "bv.lit.configs.siglip_replication:runlocal,data=tiny_captions",
        "bv.lit.configs.lit_i1k:runlocal",  # ImageNet from TFDS's mock data
    ],
)
def test_config_trains_two_steps(spec: str, tmp_path: Path, captions_dir: str) -> None:
    config = load_config(spec)
    if "tiny_captions" in spec:
        config.input.data.data_dir = captions_dir  # the evaluators' default too
        final = train.train(config, str(tmp_path))
    else:
        with tfds.testing.mock_data(num_examples=64):
            final = train.train(config, str(tmp_path))
    latest = checkpoint.latest(str(tmp_path))
    assert latest is not None and checkpoint.read_metadata(latest)["step"] == 2
    assert any("training_loss" in r for r in _records(tmp_path))
    evals = [k for k in final if "R@1" in k or "prec@1" in k]
    assert evals and all(0.0 <= final[k] <= 1.0 for k in evals)


@pytest.mark.parametrize(
    "spec, text_width",
    [
        ("bv.lit.configs.lit_coco", 384),  # MiniLM-L6
        ("bv.lit.configs.siglip_replication", 768),
        ("bv.lit.configs.lit_mnist", 384),
    ],
)
def test_full_size_configs_build_their_model_and_optimizer(spec: str, text_width: int) -> None:
    config = load_config(spec)
    task = get_task(config)
    size, channels = (28, 1) if "mnist" in spec else (224, 3)
    batch = {
        "image": jax.ShapeDtypeStruct((2, size, size, channels), "float32"),
        "labels": jax.ShapeDtypeStruct((2, 16), "int32"),
    }
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
    assert set(params) >= {"img", "txt", "t"}
    assert ("b" in params) == ("siglip" in spec)
    assert params["txt"]["head"]["kernel"].shape[0] == text_width
    schedule = resolve_schedule(config.get("schedule"), data_size=1_000_000, batch_size=1024, total_steps=100_000)
    tx, _ = make_optimizer(config, params, total_steps=100_000, schedule=schedule)
    jax.eval_shape(tx.init, params)


def test_config_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="text_init must be 'minilm' or 'random'"):
        load_config("bv.lit.configs.lit_mnist:text_init=bert")
    with pytest.raises(ValueError, match="needs names="):
        load_config("bv.lit.configs.lit_i1k")
    with pytest.raises(FileNotFoundError, match="expected 'minilm' or a Hugging Face BERT folder"):
        load_config("bv.lit.configs.lit_coco:txt=/nonexistent")
