"""Tests for the tokenizer interface, registry and SentencePiece tokenizer, with a model trained here."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import sentencepiece  # type: ignore[import-untyped]
import tensorflow as tf

import bv.pp  # noqa: F401  (registers the tokenizers)
from bv.core.registry import UnknownNameError, tokenizers
from bv.pp.tokenizers import SentencePieceTokenizer, Tokenizer, get_tokenizer, register_sp_model, sp_models

WORDS = "a cat dog sat on the mat with hat big small red blue green house tree run jump over under".split()
PAD, EOS, UNK, BOS = 0, 1, 2, 3


def train_sp(path, **special_ids) -> str:
    """Trains a tiny unigram SentencePiece model on random lowercase sentences; returns its path."""
    rnd = random.Random(0)
    lines = [" ".join(rnd.choice(WORDS) for _ in range(8)) for _ in range(300)]
    out = io.BytesIO()
    ids = dict(pad_id=PAD, eos_id=EOS, unk_id=UNK, bos_id=BOS) | special_ids
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, vocab_size=64, model_type="unigram",
        hard_vocab_limit=False, minloglevel=2, **ids,
    )  # fmt: skip
    path.write_bytes(out.getvalue())
    return str(path)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> str:
    return train_sp(tmp_path_factory.mktemp("sp") / "tiny.model")


@pytest.fixture(scope="session")
def tok(model_path) -> Tokenizer:
    return get_tokenizer(f"sp(model={model_path!r})")


def test_special_tokens_and_pieces(tok):
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == (PAD, EOS, BOS)
    assert tok.to_piece(PAD) == "<pad>" and tok.to_piece(EOS) == "</s>"
    assert tok.to_id("<pad>") == PAD and tok.to_id("</s>") == EOS and tok.to_id("<unk>") == UNK
    pieces = [tok.to_piece(i) for i in range(tok.vocab_size)]
    assert len(set(pieces)) == tok.vocab_size > 20 and "\u2581cat" in pieces
    with pytest.raises(ValueError, match="not a piece"):
        tok.to_id("<nope>")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.to_piece(tok.vocab_size)


def test_to_int_single_batch_bos_eos(tok):
    ids = tok.to_int("the cat sat")
    assert ids and all(isinstance(i, int) and 3 < i < tok.vocab_size for i in ids)
    assert tok.to_int("the cat sat", bos=True, eos=True) == [BOS, *ids, EOS]
    assert tok.to_int(["the cat sat", "dog", ""]) == [ids, tok.to_int("dog"), []]
    assert tok.to_int(("dog",), eos=True) == [tok.to_int("dog") + [EOS]]
    assert tok.to_int(b"the cat sat") == ids
    assert UNK in tok.to_int("THE")  # the vocabulary is lowercase only


def test_round_trip_and_stop_at_eos(tok):
    texts = ["the big cat sat on the mat", "run over the green tree", "a"]
    assert tok.to_str(tok.to_int(texts)) == texts
    for text in texts:
        assert tok.to_str(tok.to_int(text, bos=True, eos=True)) == text
        assert tok.to_str(np.array(tok.to_int(text), np.int32)) == text
    cat, dog = tok.to_int("cat"), tok.to_int("dog")
    assert tok.to_str(cat + [EOS] + dog + [PAD, PAD]) == "cat"
    assert tok.to_str(cat + [EOS] + dog, stop_at_eos=False) == "cat dog"
    assert tok.to_str(np.array([cat + [EOS], dog + [EOS]])) == ["cat", "dog"]
    assert tok.to_str([]) == ""


def test_to_int_tf_op_scalar_eager_and_in_dataset(tok):
    text = "the cat sat on the mat"
    expected = tok.to_int(text, bos=True, eos=True)
    eager = tok.to_int_tf_op(tf.constant(text), bos=True, eos=True)
    assert eager.dtype == tf.int32 and eager.numpy().tolist() == expected

    ds = tf.data.Dataset.from_tensor_slices([text, "dog"]).map(lambda t: tok.to_int_tf_op(t, bos=True, eos=True))
    assert ds.element_spec.shape.as_list() == [None] and ds.element_spec.dtype == tf.int32
    assert [x.tolist() for x in ds.as_numpy_iterator()] == [expected, tok.to_int("dog", bos=True, eos=True)]


def test_to_int_tf_op_ragged(tok):
    texts = ["the cat", "a big red house", ""]
    ragged = tok.to_int_tf_op(tf.constant(texts), eos=True)
    assert isinstance(ragged, tf.RaggedTensor) and ragged.dtype == tf.int32
    assert ragged.to_list() == tok.to_int(texts, eos=True)

    grid = [["the cat", "dog"], ["a", "run over"]]
    ragged2 = tok.to_int_tf_op(tf.constant(grid))
    assert ragged2.shape[:2] == [2, 2]
    assert ragged2.to_list() == [tok.to_int(row) for row in grid]

    ds = tf.data.Dataset.from_tensor_slices(grid).map(lambda t: tok.to_int_tf_op(t))
    assert [r.to_list() for r in ds] == [tok.to_int(row) for row in grid]


def test_to_str_tf_op_dense_ragged_and_in_dataset(tok):
    texts = ["the cat", "a big red house"]
    ids = tok.to_int(texts, eos=True)
    assert tok.to_str_tf_op(tf.constant(ids[0])).numpy() == b"the cat"

    ragged = tf.ragged.constant(ids)
    assert tok.to_str_tf_op(ragged).numpy().tolist() == [b"the cat", b"a big red house"]

    width = max(map(len, ids))
    dense = np.array([row + [PAD] * (width - len(row)) for row in ids], np.int32)
    out = tok.to_str_tf_op(tf.constant(dense))
    assert out.shape == (2,) and out.numpy().tolist() == [b"the cat", b"a big red house"]

    ds = tf.data.Dataset.from_tensor_slices(dense).map(lambda x: tok.to_str_tf_op(x))
    assert ds.element_spec.shape.rank == 0
    assert list(ds.as_numpy_iterator()) == [b"the cat", b"a big red house"]


def test_get_tokenizer_caches_by_spec(model_path):
    spec = f"sp(model={model_path!r})"
    assert get_tokenizer(spec) is get_tokenizer(spec)
    assert "sp" in tokenizers


def test_registered_model_name(model_path):
    register_sp_model("tiny_tok_test", model_path)
    assert sp_models()["tiny_tok_test"] == model_path
    tok = get_tokenizer("sp(model='tiny_tok_test')")
    assert tok.to_int("the cat") == SentencePieceTokenizer(model_path).to_int("the cat")


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(UnknownNameError, match="Known tokenizer names: .*sp"):
        get_tokenizer("nope(model='x')")
    with pytest.raises(FileNotFoundError, match="register_sp_model"):
        get_tokenizer(f"sp(model={str(tmp_path / 'missing.model')!r})")
    with pytest.raises(FileNotFoundError, match="gs://t5-data"):
        SentencePieceTokenizer("c4_en")
    with pytest.raises(FileNotFoundError, match="remote path"):
        SentencePieceTokenizer("gs://bucket/x.model")
    register_sp_model("gone_tok_test", str(tmp_path / "gone.model"))
    with pytest.raises(FileNotFoundError, match="registered as"):
        SentencePieceTokenizer("gone_tok_test")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        SentencePieceTokenizer(str(garbage))


def test_tokensets_add_whole_pieces(model_path, tok):
    loc = get_tokenizer(f"sp(model={model_path!r}, tokensets=('loc', 'seg'))")
    assert loc.vocab_size == tok.vocab_size + 1024 + 128
    ids = loc.to_int("the cat<loc0005><seg017>")
    assert ids[:-2] == tok.to_int("the cat")
    assert [loc.to_piece(i) for i in ids[-2:]] == ["<loc0005>", "<seg017>"]
    assert loc.to_str(ids) == "the cat<loc0005><seg017>"
    with pytest.raises(ValueError, match="Unknown tokenset 'boxes'.*loc"):
        SentencePieceTokenizer(model_path, tokensets=("boxes",))


def test_existing_piece_in_tokenset_keeps_its_id(model_path, tok):
    from bv.pp import tokenizers as tk

    tk.register_tokenset("test_words")(lambda: ["\u2581cat", "<new>"])
    extended = SentencePieceTokenizer(model_path, tokensets=["test_words"])
    assert extended.vocab_size == tok.vocab_size + 1
    assert extended.to_id("\u2581cat") == tok.to_id("\u2581cat")
    assert extended.to_id("<new>") == tok.vocab_size


def test_model_without_bos(tmp_path):
    no_bos = SentencePieceTokenizer(train_sp(tmp_path / "nobos.model", bos_id=-1))
    assert no_bos.bos_token == -1
    with pytest.raises(ValueError, match="no bos token"):
        no_bos.to_int("cat", bos=True)


def test_words_tokenizer_maps_a_closed_vocabulary() -> None:
    tok = get_tokenizer("words(vocab=('a', 'photo', 'of', 'seven'))")
    assert tok.vocab_size == 8 and (tok.pad_token, tok.eos_token, tok.bos_token) == (0, 2, 3)
    assert tok.to_int("A photo of... seven!", bos=True, eos=True) == [3, 4, 5, 6, 7, 2]
    assert tok.to_int(["a cat", "seven"]) == [[4, 1], [7]]  # unknown words are 1
    assert tok.to_str([4, 5, 6, 7, 2, 0, 0]) == "a photo of seven"
    assert tok.to_piece(7) == "seven" and tok.to_id("photo") == 5
    pp = bv.pp.get_preprocess_fn("tokenize(6, eos='yes', tokenizer=\"words(vocab=('a', 'photo', 'of', 'seven'))\")")
    assert pp({"text": "a photo of seven"})["labels"].numpy().tolist() == [4, 5, 6, 7, 2, 0]
    with pytest.raises(ValueError, match="distinct lower-case words"):
        get_tokenizer("words(vocab=('a', 'a'))")
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        tok.to_id("dog")
