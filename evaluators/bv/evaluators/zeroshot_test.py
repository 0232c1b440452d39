import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Mapping, Sequence  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from bv.core import registry, train  # noqa: E402
from bv.core.data import build_from_arrays, get_builder  # noqa: E402
from bv.core.tasks import Task  # noqa: E402
from bv.evaluators import EvaluatorConfigError, ZeroShotEvaluator  # noqa: E402
from bv.evaluators.class_names import DIGIT_WORDS  # noqa: E402


def _pp_txt(vocab: Sequence[str], max_len: int) -> str:
    spec = f"words(vocab={tuple(vocab)!r})"
    return f"tokenize(max_len={max_len}, eos='none', tokenizer={spec!r}, pad_value=0, inkey='texts', outkey='labels')"


# ---------------------------------------------------------------------------
# Hand-computed zero-shot accuracy with known embeddings.
# ---------------------------------------------------------------------------

# A text embeds as the sum of its words' vectors (the words tokenizer: 0 pad, 1 unk, 2 eos, 3 bos, 4 cat, 5 dog, 6 big).
WORDS = {"cat": [1.0, 0.0], "dog": [0.0, 1.0], "big": [0.0, 10.0]}
# Image i (all pixels i) embeds as row i; labels 0 cat, 0 cat, 1 dog, 1 dog.
IMAGES = [[1.0, 0.0], [0.0, 1.0], [0.3, 0.954], [1.0, 0.0]]
LABELS = [0, 1, 0, 1]
PARAMS = {
    "words": jnp.asarray([[0.0, 0.0]] * 4 + list(WORDS.values())),
    "img": jnp.asarray(IMAGES),
}


def _embed_image(params: dict, images: jax.Array) -> tuple[jax.Array, dict]:
    return params["img"][images[:, 0, 0, 0].astype(jnp.int32)], {}


def _embed_text(params: dict, tokens: jax.Array) -> jax.Array:
    return params["words"][tokens].sum(axis=1)


FNS = {"embed_image": _embed_image, "embed_text": _embed_text}


@pytest.fixture(scope="module")
def pets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tfds")
    images = np.broadcast_to(np.arange(4, dtype=np.uint8)[:, None, None, None], (4, 2, 2, 1)).copy()
    build_from_arrays(
        "four_pets", {"test": {"image": images, "label": np.asarray(LABELS)}}, str(folder), ["cat", "dog"]
    )
    return folder


def _zeroshot(pets_dir: Path, devices: int = 1, batch_size: int = 2, fns: dict = FNS, **kw: Any) -> ZeroShotEvaluator:
    config: dict = dict(
        datasets={"pets": dict(name="four_pets", class_names=["cat", "dog"])},
        pp_img="decode(channels=1)",
        pp_txt=_pp_txt(list(WORDS), 4),
        prompt_templates=["{}", "big {}"],
        batch_size=batch_size,
        mesh=Mesh(np.asarray(jax.devices()[:devices]), ("data",)),
        data_dir=str(pets_dir),
    )
    return ZeroShotEvaluator(fns, **{**config, **kw})


@pytest.mark.parametrize("devices,batch_size", [(1, 1), (1, 3), (2, 2), (2, 4)])
def test_accuracy_is_the_hand_computed_one(pets_dir: Path, devices: int, batch_size: int) -> None:
    if devices > jax.device_count():
        pytest.skip(f"needs {devices} devices")
    evaluator = _zeroshot(
        pets_dir,
        devices,
        batch_size,
        datasets={
            "pets": dict(name="four_pets", class_names=["cat", "dog"]),
            # The builder's label names ("cat", "dog"), one template only.
            "pets_big": dict(name="four_pets", prompt_templates=["big {}"]),
        },
    )
    metrics = evaluator.run(PARAMS)
    # Templates "{}" and "big {}": "cat" = (1, 0) and "big cat" = (1, 10) -> unit (0.0995, 0.995); their mean
    # (0.5498, 0.4975) -> unit (0.7415, 0.6710). "dog" (0, 1) and "big dog" (0, 11) -> (0, 1).
    # Image scores (cat, dog): (1, 0): 0.7415 vs 0 -> cat; (0, 1): 0.671 vs 1 -> dog;
    # (0.3, 0.954): 0.2225 + 0.640 = 0.863 vs 0.954 -> dog. Labels cat, dog, cat, dog: 2 of 4 right.
    # (Averaging raw embeddings, (1, 5) -> (0.196, 0.981), would score 0.995 for cat and get 3 of 4.)
    # With "big {}" alone, cat = (0.0995, 0.995): image 2 scores 0.979 > 0.954 -> cat; 3 of 4 right.
    # Two classes: prec@5 is left out.
    assert metrics == pytest.approx({"pets_prec@1": 0.5, "pets_big_prec@1": 0.75})


def test_bad_configs_name_the_evaluator_and_the_fix(pets_dir: Path) -> None:
    with pytest.raises(
        EvaluatorConfigError, match=r"Evaluator 'zeroshot' \(zeroshot\): pred_text='embed_txt'.*embed_text"
    ):
        _zeroshot(pets_dir, pred_text="embed_txt")
    with pytest.raises(EvaluatorConfigError, match=r"3 class names \(class_names\).*'four_pets' has 2 classes"):
        _zeroshot(pets_dir, datasets={"pets": dict(name="four_pets", class_names=["cat", "dog", "cow"])})
    with pytest.raises(EvaluatorConfigError, match=r"exactly one '\{\}'"):
        _zeroshot(pets_dir, prompt_templates=["a photo"])
    with pytest.raises(EvaluatorConfigError, match=r"unknown keys \['splits'\]"):
        _zeroshot(pets_dir, datasets={"pets": dict(name="four_pets", splits="test")})
    # A one-hot label cannot be compared with class ids.
    onehot = "decode(channels=1)|onehot(2, key='label')"
    with pytest.raises(EvaluatorConfigError, match=r"integer class ids"):
        _zeroshot(pets_dir, pp_img=onehot).run(PARAMS)
    assert registry.evaluators.get("zeroshot") is ZeroShotEvaluator


# ---------------------------------------------------------------------------
# Inside the trainer: a tiny two-tower task trained contrastively on MNIST digits with captions.
# ---------------------------------------------------------------------------

VOCAB = ["a", "photo", "of", "the", "digit", *DIGIT_WORDS]
TXT_LEN = 8
PP_IMG = "decode(channels=1)|resize(14)|value_range(-1, 1)"


class _ImageTower(nn.Module):
    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        return nn.Dense(32)(images.reshape(images.shape[0], -1))


class _TextTower(nn.Module):
    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        mask = (tokens > 0)[..., None].astype(jnp.float32)
        x = nn.Embed(len(VOCAB) + 4, 32)(tokens)
        return nn.Dense(32)((x * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0))


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-6)


@registry.tasks.register("test_two_tower", replace=True)
class TwoTowerTask(Task):
    """Images and their captions pulled together by a softmax contrastive loss in both directions."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.image, self.text = _ImageTower(), _TextTower()

    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> dict:
        r_img, r_txt = jax.random.split(rng)
        images = jnp.zeros((1, *batch_spec["image"].shape[1:]), jnp.float32)
        tokens = jnp.zeros((1, *batch_spec["labels"].shape[1:]), jnp.int32)
        return {
            "img": self.image.init(r_img, images)["params"],
            "txt": self.text.init(r_txt, tokens)["params"],
            "t": jnp.log(10.0),
        }

    def embed_image(self, params: dict, images: jax.Array) -> tuple[jax.Array, dict]:
        zimg: jax.Array = self.image.apply({"params": params["img"]}, images)  # type: ignore[assignment]
        return _unit(zimg), {}

    def embed_text(self, params: dict, tokens: jax.Array) -> tuple[jax.Array, dict]:
        ztxt: jax.Array = self.text.apply({"params": params["txt"]}, tokens)  # type: ignore[assignment]
        return _unit(ztxt), {}

    def loss(self, params: dict, batch: Mapping[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        zimg, _ = self.embed_image(params, batch["image"])
        ztxt, _ = self.embed_text(params, batch["labels"])
        logits = zimg @ ztxt.T * jnp.exp(params["t"])
        labels = jnp.arange(len(logits))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        loss_t = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
        return (loss.mean() + loss_t.mean()) / 2, {}

    def predict_fns(self) -> dict:
        return {"embed_image": self.embed_image, "embed_text": self.embed_text}


def _captioned_digits(data_dir: str) -> None:
    """``digit_captions``: MNIST-5k digits (1,000 train, 100 test) captioned "a photo of the digit seven"."""
    splits = {}
    for split, count in (("train", 1000), ("test", 100)):
        ds = get_builder("mnist5k", data_dir).as_dataset(split=f"{split}[:{count}]", shuffle_files=False)
        rows = list(ds.as_numpy_iterator())
        splits[split] = {
            "image": np.stack([r["image"] for r in rows]),
            "texts": np.asarray([f"a photo of the digit {DIGIT_WORDS[r['label']]}" for r in rows]),
        }
    build_from_arrays("digit_captions", splits, data_dir)


def test_zeroshot_and_retrieval_run_inside_the_trainer(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "tfds")
    _captioned_digits(data_dir)
    pp_txt = _pp_txt(VOCAB, TXT_LEN)
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "test_two_tower"
    config.input = dict(
        data=dict(name="digit_captions", split="train", data_dir=data_dir),
        batch_size=64,
        shuffle_buffer_size=1000,
        cache_raw=True,
        pp=f"{PP_IMG}|{pp_txt}|keep('image', 'labels')",
    )
    config.total_steps = 40
    config.log_training_steps = 20
    config.optax_name = "scale_by_adam"
    config.lr = 0.01
    config.schedule = dict(decay_type="cosine", warmup_steps=5)
    config.evals = dict(
        zeroshot=dict(
            type="zeroshot",
            datasets={"mnist5k": dict(split="test[:200]")},  # class names: the embedded "zero" ... "nine"
            pp_img=PP_IMG,
            pp_txt=pp_txt,
            prompt_templates=["a photo of the digit {}.", "the digit {}"],
            log_steps=40,
        ),
        retrieval=dict(
            type="retrieval",
            data=dict(name="digit_captions", split="test"),
            pp_img=PP_IMG,
            pp_txt=pp_txt,
            text_key="texts",
            log_steps=40,
        ),
    )
    final = train.train(config, str(tmp_path / "run"))

    names = ["zeroshot/mnist5k_prec@1", "zeroshot/mnist5k_prec@5"]
    names += [f"retrieval/{d}_R@{k}" for d in ("img2txt", "txt2img") for k in (1, 5, 10)]
    logged = {}
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        logged.update(json.loads(line))
    for name in names:
        assert 0.0 <= final[name] <= 1.0, name
        assert logged[name] == pytest.approx(final[name]), name
    # Chance is 0.1 for zero-shot; 1 caption in 100 for image->text R@1 (10 of them say the right digit).
    assert final["zeroshot/mnist5k_prec@1"] > 0.5
    assert final["retrieval/img2txt_R@10"] > 0.3
