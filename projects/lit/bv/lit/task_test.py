"""The image_text task inside the real trainer: softmax and sigmoid losses, zero-shot and retrieval evals, LiT."""

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import bv.lit  # noqa: F401  (registers two_towers and the image_text task)
from bv.core import checkpoint, registry, train
from bv.core.data import build_from_arrays
from bv.core.tasks import get_task
from bv.core.tree import flatten_with_names
from bv.lit.task import ImageTextTask

CLASSES = ["zero", "one", "two", "three"]
VOCAB = ["a", "photo", "of", "the", "digit", *CLASSES]
TXT_LEN = 6
PP_IMG = "decode(channels=1)|value_range(-1, 1)"


PP_TXT = (
    f"tokenize(max_len={TXT_LEN}, eos='none', tokenizer={f'words(vocab={tuple(VOCAB)!r})'!r}, "
    "pad_value=0, inkey='texts', outkey='labels')"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``lit_toy``: 8x8 images, one noisy template per class, captioned "a photo of the digit two"."""
    folder = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 255, (len(CLASSES), 8, 8, 1))
    splits: dict[str, dict[str, np.ndarray]] = {}
    for split, n in (("train", 256), ("test", 48)):
        labels = np.arange(n) % len(CLASSES)
        images = np.clip(templates[labels] + rng.normal(0, 30, (n, 8, 8, 1)), 0, 255).astype(np.uint8)
        texts = np.asarray([f"a photo of the digit {CLASSES[c]}" for c in labels])
        splits[split] = {"image": images, "label": labels, "texts": texts}
    build_from_arrays("lit_toy", splits, folder, CLASSES)
    return folder


def _config(
    data_dir: str, loss: str = "softmax", steps: int = 24, evals: bool = True, schedule: Any = None
) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "image_text"
    config.model_name = "two_towers"
    config.model = dict(
        image_model="vit",
        image=dict(variant="mu/4", head_zeroinit=False),
        text=dict(variant="mu", vocab_size=len(VOCAB) + 4, pool_type="gap"),
        out_dim=16,
        temperature_init=10.0,
        bias_init=-10.0 if loss.startswith("sigmoid") else None,
    )
    config.loss = loss
    config.input = dict(
        data=dict(name="lit_toy", split="train", data_dir=data_dir),
        batch_size=32,
        shuffle_buffer_size=256,
        cache_raw=True,
        pp=f"{PP_IMG}|{PP_TXT}|keep('image', 'labels')",
    )
    config.total_steps = steps
    config.log_training_steps = steps // 2
    config.optax_name = "scale_by_adam"
    config.lr = 0.003
    config.schedule = schedule or dict(decay_type="cosine", warmup_steps=2)
    config.evals = {}
    if evals:
        config.evals = dict(
            zeroshot=dict(
                type="zeroshot",
                datasets={"lit_toy": dict(split="test")},  # class names: the builder's label names
                pp_img=PP_IMG,
                pp_txt=PP_TXT,
                prompt_templates=["a photo of the digit {}"],
                log_steps=steps,
            ),
            retrieval=dict(
                type="retrieval",
                data=dict(name="lit_toy", split="test"),
                pp_img=PP_IMG,
                pp_txt=PP_TXT,
                text_key="texts",
                log_steps=steps,
            ),
        )
    return config


def _logged(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _params(workdir: Path) -> dict[str, np.ndarray]:
    path = checkpoint.latest(str(workdir))
    assert path is not None
    return {k: np.asarray(v) for k, v in flatten_with_names(checkpoint.load_params(path))}


EVAL_METRICS = ["zeroshot/lit_toy_prec@1"] + [f"retrieval/{d}_R@{k}" for d in ("img2txt", "txt2img") for k in (1, 5)]


@pytest.fixture(scope="module")
def softmax_run(data_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("softmax")
    return workdir, train.train(_config(data_dir, "softmax"), str(workdir))


def _check_training_log(workdir: Path, loss: str) -> list[dict]:
    logged = _logged(workdir)
    training = [m for m in logged if "training_loss" in m]
    assert training[-1]["training_loss"] < training[0]["training_loss"]
    assert 0.5 < training[-1]["nimg"] and training[-1]["t"] > 1
    assert ("b" in training[-1]) == (loss == "sigmoid")
    assert {"img2txt_acc", "txt2img_acc", "ntxt", "t/parameter"} <= set(training[-1])
    return logged


def test_softmax_loss_trains_with_zeroshot_and_retrieval_evals(softmax_run: tuple[Path, dict]) -> None:
    workdir, final = softmax_run
    logged = _check_training_log(workdir, "softmax")
    assert [m for m in logged if "training_loss" in m][0]["t"] == pytest.approx(10.0, rel=0.05)
    evaluated = {k: v for m in logged for k, v in m.items()}
    for name in EVAL_METRICS:
        assert 0.0 <= final[name] <= 1.0, name
        assert evaluated[name] == pytest.approx(final[name]), name
    # Four classes, each captioned with one sentence: chance is 0.25 (zero-shot) and 12/48 (R@1).
    assert final["zeroshot/lit_toy_prec@1"] > 0.5


def test_lit_with_the_sigmoid_loss_freezes_the_image_tower(
    softmax_run: tuple[Path, dict], data_dir: str, tmp_path: Path
) -> None:
    """LiT with SigLIP's loss: start from the softmax run's checkpoint (b fresh) and tune only the text side."""
    pretrained, _ = softmax_run
    frozen = [("img/.*", None), (".*", dict(decay_type="cosine", warmup_steps=1))]
    config = _config(data_dir, "sigmoid", steps=12, evals=False, schedule=frozen)
    config.model_init = str(pretrained)
    config.model_load = dict(dont_load=["b"])  # the softmax run has no bias: it starts at bias_init
    config.log_training_steps = 1
    train.train(config, str(tmp_path / "lit"))

    training = [m for m in _check_training_log(tmp_path / "lit", "sigmoid") if "training_loss" in m]
    assert training[0]["b"] == pytest.approx(-10.0, abs=0.1)
    assert training[-1]["pos_loss"] > 0 and training[-1]["neg_loss"] > 0
    before, after = _params(pretrained), _params(tmp_path / "lit")
    assert after.keys() == before.keys() | {"b"}
    img = [k for k in before if k.startswith("img/")]
    txt = [k for k in before if k.startswith("txt/")]
    assert img and txt
    for name in img:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    moved = [name for name in txt + ["t"] if not np.array_equal(after[name], before[name])]
    assert len(moved) > len(txt) // 2 and "t" in moved


def test_predict_fns_embed_each_side_and_expose_pre_logits(data_dir: str) -> None:
    task = get_task(_config(data_dir, evals=False))
    assert isinstance(task, ImageTextTask)
    spec = {
        "image": jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.float32),
        "labels": jax.ShapeDtypeStruct((4, TXT_LEN), jnp.int32),
    }
    params = jax.jit(lambda rng: task.init(rng, spec))(jax.random.PRNGKey(0))
    fns = {name: jax.jit(fn) for name, fn in task.predict_fns().items()}
    images = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
    zimg, extras = fns["embed_image"](params, images)
    assert zimg.shape == (3, 16) and extras["pre_logits"].shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1.0, rtol=1e-5)
    ztxt, extras = fns["embed_text"](params, jnp.ones((5, TXT_LEN), jnp.int32))
    assert ztxt.shape == (5, 16) and extras["pre_logits"].shape == (5, 32)
    assert task.predict_fns()["predict"].__name__ == "embed_image"
    axes = task.logical_axes(params)
    assert axes is not None and axes["txt/head/kernel"] == ("embed", "classes")


def test_config_mistakes_are_clear_errors(data_dir: str) -> None:
    config = _config(data_dir, evals=False)
    config.loss = "sigmoid"
    with pytest.raises(ValueError, match="config.loss='sigmoid' needs a learned bias.*bias_init"):
        get_task(config)
    config.loss = "sigmoidd"
    with pytest.raises(registry.UnknownNameError, match="Did you mean 'sigmoid'"):
        get_task(config)
    config = _config(data_dir, evals=False)
    config.model_name = "vit"
    config.model = dict(variant="mu/4")
    with pytest.raises(ValueError, match="needs an image-text model.*'vit' is a model of kind 'image'"):
        get_task(config)
    config = _config(data_dir, evals=False)
    config.text_key = "tokens"
    spec = {"image": jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.float32)}
    with pytest.raises(KeyError, match=r"batch\['tokens'\].*config.text_key"):
        get_task(config).init(jax.random.PRNGKey(0), {**spec, "labels": spec["image"]})
    with pytest.raises(TypeError, match="int token ids"):
        get_task(_config(data_dir, evals=False)).init(jax.random.PRNGKey(0), {**spec, "labels": spec["image"]})


def test_a_tokenizer_larger_than_the_embedding_table_fails_before_training(data_dir: str) -> None:
    config = _config(data_dir, evals=False)
    config.model.text.vocab_size = len(VOCAB)  # the words tokenizer adds 4 special ids
    with pytest.raises(ValueError, match=rf"makes ids up to {len(VOCAB) + 3}.*embeds only {len(VOCAB)} ids"):
        get_task(config)
