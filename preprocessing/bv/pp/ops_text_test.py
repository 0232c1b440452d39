"""Tests for the text pp ops, eagerly and inside tf.data, with a SentencePiece model trained here."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import sentencepiece  # type: ignore[import-untyped]
import tensorflow as tf

import bv.pp  # noqa: F401  (registers the ops)
from bv.core.registry import UnknownNameError, pp_ops
from bv.pp import get_preprocess_fn
from bv.pp.tokenizers import Tokenizer, get_tokenizer, register_sp_model

WORDS = "a cat dog sat on the mat with hat big small red blue green house tree run jump over under".split()
PAD, EOS, UNK, BOS = 0, 1, 2, 3
MODEL = "tiny_ops_text"  # the name the fixture registers the trained model under


@pytest.fixture(scope="session", autouse=True)
def model_path(tmp_path_factory) -> str:
    """Trains a tiny unigram SentencePiece model on random lowercase sentences and registers it as MODEL."""
    rnd = random.Random(0)
    lines = [" ".join(rnd.choice(WORDS) for _ in range(8)) for _ in range(300)]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, vocab_size=64, model_type="unigram",
        hard_vocab_limit=False, minloglevel=2, pad_id=PAD, eos_id=EOS, unk_id=UNK, bos_id=BOS,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("sp") / "tiny.model"
    path.write_bytes(out.getvalue())
    register_sp_model(MODEL, str(path))
    return str(path)


@pytest.fixture(scope="session")
def tok(model_path) -> Tokenizer:
    return get_tokenizer(f"sp(model={MODEL!r})")


def run(spec: str, data: dict) -> dict:
    return tf.nest.map_structure(np.asarray, pp_ops.call(spec)(dict(data)))


def run_in_dataset(spec: str, data: dict) -> dict:
    ds = tf.data.Dataset.from_tensors(data).map(pp_ops.call(spec))
    (out,) = ds.as_numpy_iterator()
    return tf.nest.map_structure(np.asarray, out)


def both(spec: str, data: dict) -> list[dict]:
    """The op's output eagerly and traced by tf.data; the caller checks both."""
    return [run(spec, data), run_in_dataset(spec, data)]


def tokenize_examples(texts: list[str], max_len: int, eos: str, **kwargs) -> list[list[list[int]]]:
    """Tokenizes each text as one example, eagerly and in one tf.data pipeline: [eager ids, traced ids]."""
    args = ", ".join([f"{max_len}", repr(eos), f"model={MODEL!r}"] + [f"{k}={v!r}" for k, v in kwargs.items()])
    op = pp_ops.call(f"tokenize({args})")
    eager = [op({"text": tf.constant(t)})["labels"] for t in texts]
    ds = tf.data.Dataset.from_tensor_slices({"text": texts}).map(op)
    assert ds.element_spec["labels"].shape.as_list() == [max_len] and ds.element_spec["labels"].dtype == tf.int32
    traced = [x["labels"] for x in ds.as_numpy_iterator()]
    return [[np.asarray(x).tolist() for x in eager], [x.tolist() for x in traced]]


def tokenize(text: str, max_len: int, eos: str, **kwargs) -> list[list[int]]:
    """The ids of one text, eagerly and traced."""
    return [rows[0] for rows in tokenize_examples([text], max_len, eos, **kwargs)]


# ---------------------------------------------------------------- tokenize


def test_eos_modes_match_the_table(tok):
    (a,) = tok.to_int("cat")  # one piece, like "a" in big_vision's table
    table = {
        ("none", PAD): [[a, 0, 0], [a, a, 0], [a, a, a]],
        ("yes", PAD): [[a, 1, 0], [a, a, 1], [a, a, a]],
        ("sticky", PAD): [[a, 1, 0], [a, a, 1], [a, a, 1]],
        ("sticky", EOS): [[a, 1, 1], [a, a, 1], [a, a, 1]],
    }
    for (eos, pad), rows in table.items():
        for got in tokenize_examples(["cat", "cat cat", "cat cat cat"], 3, eos, pad_value=pad):
            assert got == rows, (eos, pad)


def test_truncation_against_to_int(tok):
    text = "the big red cat sat on the green mat with a hat"
    ids = tok.to_int(text, eos=True)
    assert len(ids) > 6
    for out in tokenize(text, 6, "none"):
        assert out == ids[:6]
    for out in tokenize(text, 6, "yes"):
        assert out == ids[:6]
    for out in tokenize(text, 6, "sticky"):
        assert out == ids[:5] + [EOS]
    for out in tokenize(text, 6, "sticky", add_bos=True):
        assert out == [BOS] + ids[:4] + [EOS]


def test_padding_with_piece_or_int(tok):
    ids = tok.to_int("the cat", eos=True)
    for out in tokenize("the cat", 8, "yes"):  # default pad_value "<pad>" is id 0
        assert out == ids + [PAD] * (8 - len(ids))
    for out in tokenize("the cat", 8, "yes", pad_value="<unk>"):
        assert out == ids + [UNK] * (8 - len(ids))
    for out in tokenize("the cat", 8, "yes", pad_value=-1):
        assert out == ids + [-1] * (8 - len(ids))
    for out in tokenize("the cat", 8, "none", add_bos=True):
        assert out == [BOS] + ids[:-1] + [PAD] * (8 - len(ids))


def test_static_shape_in_dataset_and_pipeline(tok):
    pp = get_preprocess_fn(f"lower|tokenize(5, 'sticky', model={MODEL!r}, inkey='text', outkey='tokens')")
    ds = tf.data.Dataset.from_tensor_slices({"text": ["The Cat", "A BIG RED HOUSE ON THE TREE"]}).map(pp)
    assert ds.element_spec["tokens"].shape.as_list() == [5]
    assert ds.element_spec["tokens"].dtype == tf.int32
    got = [x["tokens"].tolist() for x in ds.as_numpy_iterator()]
    cat = tok.to_int("the cat", eos=True)
    house = tok.to_int("a big red house on the tree")
    assert got == [cat + [PAD] * (5 - len(cat)), house[:4] + [EOS]]
    assert ds.batch(2).element_spec["tokens"].shape.as_list() == [None, 5]


def test_lower_option(tok):
    for out in tokenize("THE Cat", 6, "none"):
        assert out[:2] == tok.to_int("the cat")
    for out in tokenize("THE Cat", 6, "none", lower=False):
        assert UNK in out


def test_sample_if_multi_picks_one_per_example_seed(tok):
    texts = ["cat", "dog", "the mat", "a hat"]
    candidates = {tuple(tok.to_int(t, eos=True) + [PAD] * (4 - len(tok.to_int(t, eos=True)))) for t in texts}
    spec = f"tokenize(4, 'yes', model={MODEL!r})"
    op = pp_ops.call(spec)
    seeds = np.stack([np.arange(12), np.full(12, 7)], axis=1).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices({"_rng": seeds}).map(lambda d: op({**d, "text": tf.constant(texts)}))
    picks = [tuple(x["labels"]) for x in ds.as_numpy_iterator()]
    assert set(picks) <= candidates and len(set(picks)) > 1
    for seed in seeds[:3]:  # eagerly, the same seed picks the same text: a pure function of the seed
        eager = op({"text": tf.constant(texts), "_rng": tf.constant(seed)})["labels"]
        assert tuple(eager.numpy()) == picks[int(seed[0])]
    # Without a seed it still picks one of them.
    assert tuple(run(spec, {"text": tf.constant(texts)})["labels"]) in candidates
    # No text at all tokenizes "".
    for out in both(spec, {"text": tf.constant([], tf.string), "_rng": tf.constant([0, 1], tf.int64)}):
        assert out["labels"].tolist() == [EOS, PAD, PAD, PAD]


def test_all_texts_when_not_sampling(tok):
    def expected(text: str) -> list[int]:
        ids = tok.to_int(text, eos=True)[:4]
        return ids + [PAD] * (4 - len(ids))

    texts = [["cat", "the big red house"], ["dog", ""]]
    spec = f"tokenize(4, 'yes', model={MODEL!r}, sample_if_multi=False)"
    for out in both(spec, {"text": tf.constant(texts[0])}):
        assert out["labels"].shape == (2, 4) and out["labels"].tolist() == [expected(t) for t in texts[0]]
    for out in both(spec, {"text": tf.constant(texts)}):
        assert out["labels"].shape == (2, 2, 4)
        assert out["labels"].tolist() == [[expected(t) for t in row] for row in texts]
    ds = tf.data.Dataset.from_tensor_slices({"text": texts}).map(pp_ops.call(spec))
    assert ds.element_spec["labels"].shape.as_list() == [2, 4]
    assert [x["labels"].tolist() for x in ds.as_numpy_iterator()] == [[expected(t) for t in row] for row in texts]


def test_tokenizer_spec_instead_of_model(model_path):
    tokenizer = f"sp(model={model_path!r}, tokensets=('loc',))"
    ids = get_tokenizer(tokenizer).to_int("the cat<loc0003>", eos=True)
    assert len(ids) < 8 and get_tokenizer(tokenizer).to_piece(ids[-2]) == "<loc0003>"
    for out in both(f"tokenize(8, 'yes', tokenizer={tokenizer!r})", {"text": "The Cat<loc0003>"}):
        assert out["labels"].tolist() == ids + [PAD] * (8 - len(ids))


def test_tokenize_bad_arguments(tmp_path, model_path):
    with pytest.raises(ValueError, match="eos must be one of 'none', 'yes', 'sticky', got 'maybe'"):
        pp_ops.call(f"tokenize(4, 'maybe', model={MODEL!r})")
    with pytest.raises(ValueError, match="max_len"):
        pp_ops.call(f"tokenize(0, 'yes', model={MODEL!r})")
    with pytest.raises(FileNotFoundError, match="register_sp_model"):
        pp_ops.call(f"tokenize(4, 'yes', model={str(tmp_path / 'missing.model')!r})")
    with pytest.raises(UnknownNameError, match="Unknown tokenizer 'bert'.*sp"):
        pp_ops.call("tokenize(4, 'yes', tokenizer='bert(vocab=1)')")
    both_spec = f"tokenize(4, 'yes', model={MODEL!r}, tokenizer={f'sp(model={model_path!r})'!r})"
    with pytest.raises(ValueError, match="not both"):
        pp_ops.call(both_spec)
    with pytest.raises(ValueError, match="not a piece"):
        pp_ops.call(f"tokenize(4, 'yes', model={MODEL!r}, pad_value='<blank>')")
    with pytest.raises(TypeError, match="string tensor"):
        run(f"tokenize(4, 'yes', model={MODEL!r})", {"text": np.array([1, 2])})
    with pytest.raises(ValueError, match="sample_if_multi"):
        run(f"tokenize(4, 'yes', model={MODEL!r})", {"text": tf.constant([["a", "b"]])})


# ---------------------------------------------------------------- string ops


def test_lower():
    for out in both("lower", {"text": "Hello WORLD Äpfel"}):
        assert out["text"].item().decode() == "hello world äpfel"
    for out in both("lower(inkey='caption', outkey='low')", {"caption": tf.constant(["A", "bC"])}):
        assert out["low"].tolist() == [b"a", b"bc"] and out["caption"].tolist() == [b"A", b"bC"]


def test_strfmt_with_number_and_string():
    data = {"label": np.int64(3), "name": "cat", "score": np.float32(0.5)}
    for out in both("strfmt('a photo of a {name} (class {label}, p={score})', outkey='prompt')", data):
        assert out["prompt"].item().decode() == "a photo of a cat (class 3, p=0.5)"
    for out in both("strfmt('{name}{name}')", {"name": "ab"}):
        assert out["text"].item() == b"abab"


def test_strfmt_errors():
    with pytest.raises(ValueError, match="format specs"):
        pp_ops.call("strfmt('p={score:.2f}')")
    with pytest.raises(ValueError, match="conversions"):
        pp_ops.call("strfmt('{name!r}')")
    with pytest.raises(ValueError, match="positional"):
        pp_ops.call("strfmt('a {} b')")
    with pytest.raises(ValueError, match="cannot parse"):
        pp_ops.call("strfmt('a {b')")
    with pytest.raises(KeyError, match="'missing'"):
        run("strfmt('{missing}')", {"text": "x"})


def test_strjoin_and_coco_captions():
    for out in both("strjoin(' / ', inkey='texts', outkey='text')", {"texts": ["a", "b", "c"]}):
        assert out["text"].item() == b"a / b / c"
    data = {"captions": {"text": tf.constant(["one", "two"]), "id": tf.constant([1, 2])}}
    for out in both("coco_captions", data):
        assert out["captions"].tolist() == [b"one", b"two"]
    with pytest.raises(KeyError, match="'text' entry"):
        run("coco_captions", {"captions": {"id": [1]}})


def test_label_caption_samples_names_and_templates_and_is_fixed_without_sample():
    names = [["zero", "0"], "one"]
    templates = ["a photo of the number {}", "handwritten {}"]
    op = bv.pp.get_preprocess_fn(f"label_caption(class_names={names!r}, templates={templates!r})")
    seen = {op({"label": tf.constant(i % 2), "_rng": tf.constant([i, 7])})["texts"].numpy().decode() for i in range(60)}
    assert seen == {
        "a photo of the number zero", "a photo of the number 0", "handwritten zero", "handwritten 0",
        "a photo of the number one", "handwritten one",
    }  # fmt: skip
    fixed = bv.pp.get_preprocess_fn(f"label_caption(class_names={names!r}, templates={templates!r}, sample=False)")
    assert fixed({"label": tf.constant(1, tf.int64)})["texts"].numpy() == b"a photo of the number one"
    with pytest.raises(ValueError, match="one '{}'"):
        bv.pp.get_preprocess_fn("label_caption(class_names=['a'], templates=['no field'])")
    with pytest.raises(ValueError, match="a name or a non-empty list"):
        bv.pp.get_preprocess_fn("label_caption(class_names=[[], 'b'])")
    with pytest.raises(tf.errors.InvalidArgumentError, match="beyond class_names"):
        op({"label": tf.constant(5)})
