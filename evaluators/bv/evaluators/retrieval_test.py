import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from bv.core import registry  # noqa: E402
from bv.core.data import custom  # noqa: E402
from bv.evaluators import EvaluatorConfigError, RetrievalEvaluator  # noqa: E402


@registry.pp_ops.register("test_caption_ids", replace=True)
def _caption_ids() -> object:
    """Caption "3" -> tokens [3] ("" -> [0]): the test's text tower looks its embedding up by that id."""

    def op(data: dict) -> dict:
        text = tf.where(data["texts"] == "", "0", data["texts"])
        return {**data, "labels": tf.reshape(tf.strings.to_number(text, tf.int32), [1])}

    return op


def _unit(degrees: float) -> list[float]:
    return [float(np.cos(np.radians(degrees))), float(np.sin(np.radians(degrees)))]


# Four images at these angles; image 3 has no caption (a distractor only). Captions (text id: angle):
# image 0: t0 10°, t1 95°; image 1: t2 80°; image 2: t3 150°, t4 40°, t5 250°. Similarity = cos(angle gap).
IMAGE_ANGLES = [0, 90, 180, 330]
TEXT_ANGLES = [10, 95, 80, 150, 40, 250]
CAPTIONS = [["0", "1"], ["2"], ["3", "4", "5"], []]
PARAMS = {
    "img": jnp.asarray([_unit(a) for a in IMAGE_ANGLES]),
    "txt": jnp.asarray([_unit(a) for a in TEXT_ANGLES]),
}


def _embed_image(params: dict, images: jax.Array) -> tuple[jax.Array, dict]:
    return params["img"][images[:, 0, 0, 0].astype(jnp.int32)], {}


def _embed_text(params: dict, tokens: jax.Array) -> jax.Array:
    return params["txt"][tokens[:, 0]]


FNS = {"embed_image": _embed_image, "embed_text": _embed_text}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``four_captioned``: COCO's layout (``captions/text``, a list per image); image i is all pixels i."""
    folder = tmp_path_factory.mktemp("tfds")
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(2, 2, 1)),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        }
    )

    def examples():  # type: ignore[no-untyped-def]
        for i, captions in enumerate(CAPTIONS):
            yield i, {"image": np.full((2, 2, 1), i, np.uint8), "captions": {"text": captions}}

    custom.write_dataset("four_captioned", features, {"test": examples}, data_dir=str(folder))
    return folder


def _evaluator(data_dir: Path, mesh: Mesh, batch_size: int, **kw: object) -> RetrievalEvaluator:
    config: dict = dict(
        data={"name": "four_captioned", "split": "test"},
        pp_img="decode(channels=1)",
        pp_txt="test_caption_ids",
        text_key="captions/text",
        batch_size=batch_size,
        mesh=mesh,
        data_dir=str(data_dir),
        ks=(1, 3),
    )
    return RetrievalEvaluator(FNS, **{**config, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("devices,batch_size", [(1, 1), (1, 3), (1, 4), (2, 2), (4, 4)])
def test_recall_is_the_hand_computed_one_on_any_mesh_and_batch(data_dir: Path, devices: int, batch_size: int) -> None:
    if devices > jax.device_count():
        pytest.skip(f"needs {devices} devices")
    mesh = Mesh(np.asarray(jax.devices()[:devices]), ("data",))
    metrics = _evaluator(data_dir, mesh, batch_size).run(PARAMS)
    # Image -> text (images 0-2; image 3 has no caption). Angle gaps to the captions t0..t5:
    #   image 0 (0°):   10, 95, 80, 150, 40, 110 -> best t0, its own: rank 0.
    #   image 1 (90°):  80,  5, 10,  60, 50, 160 -> t1 (image 0's) beats its own t2: rank 1.
    #   image 2 (180°): 170, 85, 100, 30, 140, 70 -> best t3, its own: rank 0.
    # R@1 = 2/3, R@3 = 3/3.
    # Text -> image, gaps to images 0, 1, 2, 3 (own image marked *):
    #   t0 10°:  *10, 80, 170, 40 -> rank 0    t1 95°: *95, 5, 85, 125 -> rank 2
    #   t2 80°:   80, *10, 100, 110 -> rank 0  t3 150°: 150, 60, *30, 180 -> rank 0
    #   t4 40°:   40, 50, *140, 70 -> rank 3   t5 250°: 110, 160, *70, 80 -> rank 0
    # R@1 = 4/6, R@3 = 5/6.
    assert metrics == pytest.approx(
        {"img2txt_R@1": 2 / 3, "img2txt_R@3": 1.0, "txt2img_R@1": 4 / 6, "txt2img_R@3": 5 / 6}
    )


def test_ties_count_against_and_raw_dot_products_can_be_used(data_dir: Path) -> None:
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    # Every caption the same vector: each image's best positive ties with all other captions.
    same = {"img": PARAMS["img"], "txt": jnp.ones((6, 2))}
    metrics = _evaluator(data_dir, mesh, 2, ks=(1, 6)).run(same)
    assert metrics["img2txt_R@1"] == 0.0 and metrics["img2txt_R@6"] == 1.0
    # Unnormalised: a longer image vector does not change image->text ranks, but wins text->image.
    scaled = {"img": PARAMS["img"] * jnp.asarray([[1.0], [1.0], [1.0], [5.0]]), "txt": PARAMS["txt"]}
    raw = _evaluator(data_dir, mesh, 2, normalize=False).run(scaled)
    cosine = _evaluator(data_dir, mesh, 2).run(scaled)
    assert raw["img2txt_R@1"] == cosine["img2txt_R@1"] == pytest.approx(2 / 3)
    assert cosine["txt2img_R@1"] == pytest.approx(4 / 6)
    # Raw dot products, text -> image: image 3 (330°, length 5) scores 5 cos(gap). It beats the own image
    # for t0 (5 cos 40° = 3.83 > cos 10°) and t5 (5 cos 80° = 0.87 > cos 70° = 0.34), not for t2 or t3
    # (gaps 110° and 180°: negative); t1 and t4 missed already. R@1 = 2/6.
    assert raw["txt2img_R@1"] == pytest.approx(2 / 6)


def test_bad_configs_name_the_evaluator_and_the_fix(data_dir: Path) -> None:
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    with pytest.raises(
        EvaluatorConfigError,
        match=r"Evaluator 'retrieval' \(retrieval\): pred_text='embed_txt'.*embed_image, embed_text",
    ):
        _evaluator(data_dir, mesh, 2, pred_text="embed_txt")
    with pytest.raises(EvaluatorConfigError, match=r"no text feature 'caption'.*Set text_key"):
        _evaluator(data_dir, mesh, 2, text_key="caption")
    with pytest.raises(EvaluatorConfigError, match=r"not the tokens key 'tokens'"):
        _evaluator(data_dir, mesh, 2, tokens_key="tokens")
    assert registry.evaluators.get("retrieval") is RetrievalEvaluator


def test_class_level_recall_with_captions_written_from_labels(tmp_path: Path) -> None:
    """label_key matches by class; pp_example writes each image's caption from its label."""
    features = tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(2, 2, 1)), "label": tfds.features.ClassLabel(num_classes=2)}
    )

    def examples():  # type: ignore[no-untyped-def]
        for i, label in enumerate([0, 1, 0, 1]):
            yield i, {"image": np.full((2, 2, 1), i, np.uint8), "label": label}

    custom.write_dataset("four_labelled", features, {"test": examples}, data_dir=str(tmp_path))
    mesh = Mesh(np.asarray(jax.devices()[:2]), ("data",))
    evaluator = _evaluator(
        tmp_path,
        mesh,
        2,
        data={"name": "four_labelled", "split": "test"},
        text_key="texts",
        pp_example="label_caption(class_names=['0', '1'], sample=False)",
        label_key="label",
    )
    # Captions: label 0 -> t0 (10°), label 1 -> t1 (95°); images 0°, 90°, 180°, 330° with labels 0, 1, 0, 1.
    # Image -> text: images 0 and 1 are closest to a caption of their class; image 2 (180°) is nearer the
    # two 95° captions (gap 85°) than to its class's 10° ones (170°), image 3 (330°) nearer the two 10°
    # ones (40°) than its 95° ones (125°): ranks 0, 0, 2, 2.
    # Text -> image: the 10° captions' best image is image 0 (class 0), the 95° ones' image 1 (class 1).
    assert evaluator.run(PARAMS) == pytest.approx(
        {"img2txt_R@1": 0.5, "img2txt_R@3": 1.0, "txt2img_R@1": 1.0, "txt2img_R@3": 1.0}
    )
