"""Tests for the Hugging Face tokenizer.json tokenizer (``hf``), with a WordPiece vocabulary built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from tokenizers import Tokenizer as RawTokenizer  # type: ignore[import-untyped]
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

import bv.pp
from bv.pp.tokenizers import HFTokenizer, get_tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "the", "number", "seven", "hand", "##written", "7"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A BERT-style tokenizer.json (lower-casing, WordPiece, [CLS] ... [SEP]) with padding and truncation on."""
    raw = RawTokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    raw.enable_padding(pad_id=0, pad_token="[PAD]", length=32)
    raw.enable_truncation(max_length=5)
    folder = tmp_path_factory.mktemp("bert_tok")
    raw.save(str(folder / "tokenizer.json"))
    return str(folder)


def test_ids_specials_and_round_trip(bert_folder):
    tok = get_tokenizer(f"hf(path={bert_folder!r})")
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == len(VOCAB)
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == (0, 2, 3)
    # The file's own padding (32) and truncation (5) are off: the pp op fits lengths.
    assert tok.to_int("A photo of the number Seven, handwritten") == [4, 5, 6, 7, 8, 9, 1, 10, 11]
    assert tok.to_int(["seven", "7"], bos=True, eos=True) == [[2, 9, 3], [2, 12, 3]]
    assert tok.to_str([2, 9, 3, 7, 0]) == "seven"  # stops at [SEP]
    assert tok.to_str([[10, 11], [12]]) == ["handwritten", "7"]
    assert tok.to_piece(11) == "##written" and tok.to_id("[PAD]") == 0


def test_tokenize_op_writes_bert_inputs(bert_folder):
    spec = f"hf(path={bert_folder!r})"
    pp = bv.pp.get_preprocess_fn(
        f'tokenize(max_len=6, eos="sticky", add_bos=True, pad_value="[PAD]", tokenizer="{spec}", inkey="texts")'
    )
    texts = tf.constant(["the number seven", "a photo of the number seven handwritten"])
    out = np.stack([pp({"texts": t})["labels"].numpy() for t in texts])
    # [CLS] text [SEP] [PAD]...; a text cut to fit keeps its [SEP] last.
    np.testing.assert_array_equal(out, [[2, 7, 8, 9, 3, 0], [2, 4, 5, 6, 7, 3]])
    # The same through tf.data, where the tokenizer runs as a numpy_function.
    ds = tf.data.Dataset.from_tensor_slices({"texts": texts}).map(pp)
    np.testing.assert_array_equal([row["labels"] for row in ds.as_numpy_iterator()], out)


def test_bad_paths_and_missing_specials(tmp_path, bert_folder):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        HFTokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        HFTokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="is not in the vocabulary"):
        HFTokenizer(bert_folder, bos="<s>")
    raw = RawTokenizer(models.WordLevel({"[UNK]": 0, "x": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "plain").mkdir()
    raw.save(str(tmp_path / "plain" / "tokenizer.json"))
    plain = HFTokenizer(str(tmp_path / "plain"))
    assert plain.to_int("x y") == [1, 0] and plain.eos_token == -1
    with pytest.raises(ValueError, match="has no eos token"):
        plain.to_int("x", eos=True)
