"""Tokenizers: one interface for text <-> ids, usable in Python and inside tf.data.

Configs name a tokenizer with a spec string such as ``"sp(model='c4_en')"``; the name is
looked up in ``bv.core.registry.tokenizers`` and :func:`get_tokenizer` keeps one instance
per spec, so a model file is read once however many pp ops use it.

Tokenizers: ``sp`` (SentencePiece), ``words`` (a closed word list) and ``hf`` (a Hugging
Face ``tokenizer.json``, e.g. BERT's WordPiece). Model files are local files. There are no downloads: a config may say
``model='c4_en'`` once the program has called ``register_sp_model('c4_en', '/path/to/file')``.
"""

from __future__ import annotations

import abc
import functools
import os
import re
from typing import Any, Callable, Iterable, Sequence, cast

import numpy as np
import sentencepiece  # type: ignore[import-untyped]
import tensorflow as tf
from sentencepiece import sentencepiece_model_pb2  # type: ignore[import-untyped]

from bv.core.registry import tokenizers

Ids = list[int]

# big_vision's standard model names, and where Google hosts those files (for error messages only).
BIG_VISION_SP_MODELS = {
    "c4_en": "gs://t5-data/vocabs/cc_en.32000/sentencepiece.model",
    "cc_all": "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model",
    "t5": "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model",
    "mc4": "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model",
    "mt5": "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model",
}

_SP_MODELS: dict[str, str] = {}
_TOKENSETS: dict[str, Callable[[], list[str]]] = {}


class Tokenizer(abc.ABC):
    """Turns text into int ids and back.

    Subclasses implement the Python methods; the ``*_tf_op`` methods wrap them for use
    inside ``tf.data`` (a subclass with native TF ops may override those for speed).
    """

    @abc.abstractmethod
    def to_int(self, text: str | Sequence[str], *, bos: bool = False, eos: bool = False) -> Ids | list[Ids]:
        """Ids of one text (a list of ints) or of several (a list of such lists), optionally with bos/eos."""

    @abc.abstractmethod
    def to_str(self, ids: Any, *, stop_at_eos: bool = True) -> str | list[str]:
        """The text of one id sequence, or a list of texts for several; ``stop_at_eos`` drops everything from the first eos."""

    @abc.abstractmethod
    def to_piece(self, idx: int) -> str:
        """The vocabulary entry (piece) of one id."""

    @abc.abstractmethod
    def to_id(self, piece: str) -> int:
        """The id of one vocabulary entry, e.g. ``"<pad>"``; an unknown piece is an error."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """The number of ids."""

    @property
    @abc.abstractmethod
    def pad_token(self) -> int:
        """The id used for padding (-1 if the vocabulary has none)."""

    @property
    @abc.abstractmethod
    def eos_token(self) -> int:
        """The end-of-sentence id (-1 if the vocabulary has none)."""

    @property
    @abc.abstractmethod
    def bos_token(self) -> int:
        """The beginning-of-sentence id (-1 if the vocabulary has none)."""

    def _rows_to_str(self, ids: Any, stop_at_eos: bool, decode: Callable[[Ids], str]) -> str | list[str]:
        """:meth:`to_str` for one id sequence or several (lists, arrays, tensors), each cut at eos, by ``decode``."""
        if isinstance(ids, (tf.Tensor, tf.RaggedTensor)):
            ids = ids.to_list() if isinstance(ids, tf.RaggedTensor) else ids.numpy()

        def one(row: Iterable[Any]) -> str:
            row = [int(i) for i in row]
            if stop_at_eos and self.eos_token in row:
                row = row[: row.index(self.eos_token)]
            return decode(row)

        return [one(row) for row in ids] if _is_batch(ids) else one(ids)

    def to_int_tf_op(self, text: Any, *, bos: bool = False, eos: bool = False) -> tf.Tensor | tf.RaggedTensor:
        """:meth:`to_int` as a TF op: a scalar string gives int32 ``[n]``; strings of shape S a ragged ``S + [None]``."""
        text = tf.convert_to_tensor(text)
        if text.dtype != tf.string:
            raise TypeError(f"to_int_tf_op tokenizes strings, got a {text.dtype.name} tensor.")
        rank = text.shape.rank
        if rank is None:
            raise ValueError("to_int_tf_op needs a tensor of known rank (a scalar string or an array of strings).")

        @tf.autograph.experimental.do_not_convert
        def encode(strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            texts = [_decode(s) for s in np.asarray(strings, dtype=object).reshape(-1)]
            ids = cast(list[Ids], self.to_int(texts, bos=bos, eos=eos))
            lengths = np.array([len(row) for row in ids], np.int64)
            return np.array([i for row in ids for i in row], np.int32), lengths

        values, lengths = tf.numpy_function(encode, [text], [tf.int32, tf.int64], stateful=False)
        values.set_shape([None])
        if rank == 0:
            return values
        lengths.set_shape([text.shape.num_elements()])
        ragged = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
        dims = tf.unstack(tf.shape(text, out_type=tf.int64))
        for dim in reversed(dims[1:]):  # regroup the flat rows into the outer dimensions of `text`
            ragged = tf.RaggedTensor.from_uniform_row_length(ragged, dim, validate=False)
        return ragged

    def to_str_tf_op(self, ids: Any, *, stop_at_eos: bool = True) -> tf.Tensor:
        """:meth:`to_str` as a TF op: ids ``S + [n]`` (dense, or 2-D ragged) give strings of shape ``S``."""

        @tf.autograph.experimental.do_not_convert
        def decode_rows(flat: np.ndarray, splits: np.ndarray) -> np.ndarray:
            rows = [flat[a:b].tolist() for a, b in zip(splits[:-1], splits[1:])]
            texts = self.to_str(rows, stop_at_eos=stop_at_eos)
            return np.array([t.encode("utf-8") for t in texts], dtype=object)

        if isinstance(ids, tf.RaggedTensor):
            if ids.ragged_rank != 1 or ids.shape.rank != 2:
                raise ValueError(f"to_str_tf_op takes a 2-D ragged tensor [batch, None], got shape {ids.shape}.")
            texts = tf.numpy_function(decode_rows, [ids.values, ids.row_splits], tf.string, stateful=False)
            return tf.ensure_shape(texts, ids.shape[:1])
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank is None or ids.shape.rank == 0:
            raise ValueError(f"to_str_tf_op needs ids with a last (sequence) axis, got shape {ids.shape}.")
        shape = tf.shape(ids, out_type=tf.int64)
        rows = tf.reshape(ids, [-1, shape[-1]])
        splits = tf.range(tf.shape(rows, out_type=tf.int64)[0] + 1) * shape[-1]
        texts = tf.numpy_function(decode_rows, [tf.reshape(rows, [-1]), splits], tf.string, stateful=False)
        texts = tf.reshape(texts, shape[:-1])
        return tf.ensure_shape(texts, ids.shape[:-1])


def _decode(s: bytes | str) -> str:
    return s if isinstance(s, str) else s.decode("utf-8", errors="replace")


def _is_batch(ids: Any) -> bool:
    """Whether ``ids`` holds several id sequences (a 2-D array or a list of lists) rather than one."""
    if isinstance(ids, tf.RaggedTensor) or getattr(ids, "ndim", 1) >= 2:
        return True
    if isinstance(ids, (list, tuple)) and ids:
        return not isinstance(ids[0], (int, np.integer))
    return False


# ---------------------------------------------------------------- named SentencePiece models


def register_sp_model(name: str, path: str) -> None:
    """Lets configs write ``model=name`` for the SentencePiece model file at ``path`` (a local path)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_sp_model needs a non-empty name, got {name!r}.")
    _SP_MODELS[name] = os.fspath(path)
    get_tokenizer.cache_clear()  # a cached tokenizer may have been built from the old path


def sp_models() -> dict[str, str]:
    """The registered SentencePiece model names and their paths."""
    return dict(_SP_MODELS)


def resolve_sp_model(model: str) -> str:
    """The local file for ``model``: a registered name or a path; anything else is an error saying what is accepted."""
    if model in _SP_MODELS:
        path = _SP_MODELS[model]
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"SentencePiece model {model!r} is registered as {path!r}, but that file does not exist."
            )
        return path
    path = os.path.expanduser(model)
    if os.path.isfile(path):
        return path
    known = ", ".join(sorted(_SP_MODELS)) or "none yet"
    if "://" in model:
        what = f"{model!r} is a remote path; only local files can be read (there are no downloads)."
    else:
        what = f"{model!r} is neither a registered SentencePiece model name (registered: {known}) nor an existing file."
    hint = ""
    if model in BIG_VISION_SP_MODELS:
        hint = f" big_vision's {model!r} is the file {BIG_VISION_SP_MODELS[model]}; copy it here and register it."
    raise FileNotFoundError(
        f"{what} Pass a local path to a .model file, or call "
        f"bv.pp.tokenizers.register_sp_model(name, path) and then use model=name.{hint}"
    )


# ---------------------------------------------------------------- extra token sets


def register_tokenset(name: str) -> Callable[[Callable[[], list[str]]], Callable[[], list[str]]]:
    """Decorator: registers a function returning extra pieces, usable as ``sp(..., tokensets=(name,))``."""

    def decorator(fn: Callable[[], list[str]]) -> Callable[[], list[str]]:
        _TOKENSETS[name] = fn
        return fn

    return decorator


@register_tokenset("loc")
def loc_tokens(n: int = 1024) -> list[str]:
    """Location tokens ``<loc0000>`` ... ``<loc1023>`` (binned box coordinates, as in PaliGemma)."""
    return [f"<loc{i:04d}>" for i in range(n)]


@register_tokenset("seg")
def seg_tokens(n: int = 128) -> list[str]:
    """Segmentation codeword tokens ``<seg000>`` ... ``<seg127>``."""
    return [f"<seg{i:03d}>" for i in range(n)]


def extra_tokens(tokensets: Iterable[str]) -> list[str]:
    """The pieces of the named token sets, in order and without duplicates."""
    names = [tokensets] if isinstance(tokensets, str) else list(tokensets)
    pieces: dict[str, None] = {}
    for name in names:
        if name not in _TOKENSETS:
            raise ValueError(f"Unknown tokenset {name!r}; known tokensets: {', '.join(sorted(_TOKENSETS))}.")
        pieces.update(dict.fromkeys(_TOKENSETS[name]()))
    return list(pieces)


def _add_pieces(model_bytes: bytes, pieces: Sequence[str]) -> bytes:
    """The model with ``pieces`` as user-defined symbols: existing pieces keep their id, new ones are appended.

    User-defined symbols are always kept whole when they appear in a text.
    """
    pb2: Any = sentencepiece_model_pb2  # generated protobuf classes: attributes mypy cannot see
    proto = pb2.ModelProto.FromString(model_bytes)
    user_defined = pb2.ModelProto.SentencePiece.USER_DEFINED
    index = {p.piece: i for i, p in enumerate(proto.pieces)}
    for piece in pieces:
        piece = piece.replace(" ", "\u2581")  # SentencePiece writes spaces as "▁"
        if piece in index:
            proto.pieces[index[piece]].type = user_defined
            proto.pieces[index[piece]].score = 0.0
        else:
            proto.pieces.add(piece=piece, score=0.0, type=user_defined)
            index[piece] = len(proto.pieces) - 1
    return proto.SerializeToString()


# ---------------------------------------------------------------- SentencePiece


@tokenizers.register("sp")
class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (unigram or BPE) read from a local file or a registered name.

    ``tokensets`` names extra sets of pieces (``"loc"``, ``"seg"``, or any registered with
    :func:`register_tokenset`) added as user-defined symbols: a piece already in the
    vocabulary keeps its id, a new one gets the next free id.
    """

    def __init__(self, model: str, tokensets: Sequence[str] = ()):
        path = resolve_sp_model(model)
        with open(path, "rb") as f:
            model_bytes = f.read()
        extras = extra_tokens(tokensets)
        try:
            if extras:
                model_bytes = _add_pieces(model_bytes, extras)
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
        except Exception as e:  # protobuf DecodeError or sentencepiece's RuntimeError
            raise ValueError(f"{path!r} is not a valid SentencePiece model file ({e}).") from e
        self.model = model
        self.path = path
        self.extras = {self._sp.piece_to_id(p.replace(" ", "\u2581")): p for p in extras}

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(model={self.model!r}, vocab_size={self.vocab_size})"

    def _special(self, name: str, token: int) -> list[int]:
        if token < 0:
            raise ValueError(f"SentencePiece model {self.model!r} has no {name} token, so {name}=True cannot be used.")
        return [token]

    def to_int(self, text: str | Sequence[str], *, bos: bool = False, eos: bool = False) -> Ids | list[Ids]:
        head = self._special("bos", self.bos_token) if bos else []
        tail = self._special("eos", self.eos_token) if eos else []
        if isinstance(text, (str, bytes)):
            return head + self._sp.encode(_decode(text), out_type=int) + tail
        texts = [_decode(t) for t in text]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"to_int takes a string or a sequence of strings, got {text!r}.")
        return [head + ids + tail for ids in self._sp.encode(texts, out_type=int)]

    def to_str(self, ids: Any, *, stop_at_eos: bool = True) -> str | list[str]:
        return self._rows_to_str(ids, stop_at_eos, self._sp.decode)

    def to_piece(self, idx: int) -> str:
        if not 0 <= int(idx) < self.vocab_size:
            raise ValueError(f"id {idx} is outside the vocabulary [0, {self.vocab_size}) of {self.model!r}.")
        return self._sp.id_to_piece(int(idx))

    def to_id(self, piece: str) -> int:
        idx = self._sp.piece_to_id(piece)
        if idx == self._sp.unk_id() and piece != self._sp.id_to_piece(idx):
            raise ValueError(f"{piece!r} is not a piece of SentencePiece model {self.model!r}.")
        return int(idx)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def pad_token(self) -> int:
        return int(self._sp.pad_id())

    @property
    def eos_token(self) -> int:
        return int(self._sp.eos_id())

    @property
    def bos_token(self) -> int:
        return int(self._sp.bos_id())


# ---------------------------------------------------------------- words


@tokenizers.register("words")
class WordTokenizer(Tokenizer):
    """Lower-case words (runs of ``a-z0-9``) to ids over a fixed vocabulary; punctuation is dropped.

    For small closed vocabularies (captions made from labels, tests), where training a
    SentencePiece model would be overkill. Ids: 0 pads, 1 is unknown, 2 ends a text
    (eos), 3 starts one (bos), then ``vocab`` in order.
    """

    SPECIALS = ("<pad>", "<unk>", "</s>", "<s>")

    def __init__(self, vocab: Sequence[str]):
        if isinstance(vocab, str) or not vocab:
            raise ValueError(f"words(vocab=...) takes a non-empty sequence of words, got {vocab!r}.")
        words = [str(w).lower() for w in vocab]
        bad = [w for w in words if not re.fullmatch(r"[a-z0-9]+", w)]
        if bad or len(set(words)) != len(words):
            raise ValueError(f"words(vocab=...) needs distinct lower-case words of a-z0-9; check {bad or words}.")
        self.vocab = [*self.SPECIALS, *words]
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"

    def _one(self, text: Any) -> Ids:
        return [self.ids.get(w, 1) for w in re.findall(r"[a-z0-9]+", _decode(text).lower())]

    def to_int(self, text: str | Sequence[str], *, bos: bool = False, eos: bool = False) -> Ids | list[Ids]:
        head, tail = ([self.bos_token] if bos else []), ([self.eos_token] if eos else [])
        if isinstance(text, (str, bytes)):
            return head + self._one(text) + tail
        return [head + self._one(t) + tail for t in text]

    def to_str(self, ids: Any, *, stop_at_eos: bool = True) -> str | list[str]:
        def decode(row: Ids) -> str:
            return " ".join(self.vocab[i] for i in row if i not in (self.pad_token, self.bos_token))

        return self._rows_to_str(ids, stop_at_eos, decode)

    def to_piece(self, idx: int) -> str:
        if not 0 <= int(idx) < self.vocab_size:
            raise ValueError(f"id {idx} is outside the vocabulary [0, {self.vocab_size}).")
        return self.vocab[int(idx)]

    def to_id(self, piece: str) -> int:
        if piece not in self.ids:
            raise ValueError(f"{piece!r} is not in this tokenizer's vocabulary.")
        return self.ids[piece]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_token(self) -> int:
        return 0

    @property
    def eos_token(self) -> int:
        return 2

    @property
    def bos_token(self) -> int:
        return 3


# ---------------------------------------------------------------- lookup


@functools.lru_cache(maxsize=None)
def get_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer described by ``spec`` (e.g. ``"sp(model='c4_en', tokensets=('loc',))"``), built once per spec.

    An unknown name is an error listing the registered tokenizers.
    """
    tokenizer = tokenizers.call(spec)
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(
            f"Tokenizer spec {spec!r} built a {type(tokenizer).__name__}, not a bv.pp.tokenizers.Tokenizer."
        )
    return tokenizer


# ---------------------------------------------------------------- Hugging Face tokenizer.json

# Special tokens by role, as the common Hugging Face vocabularies spell them (BERT's first).
HF_SPECIALS = {
    "bos": ("[CLS]", "<s>", "<|startoftext|>", "<bos>"),
    "eos": ("[SEP]", "</s>", "<|endoftext|>", "<eos>"),
    "pad": ("[PAD]", "<pad>"),
}


@tokenizers.register("hf")
class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (WordPiece for BERT, BPE, Unigram) read with the ``tokenizers`` library.

    ``path`` is the file or a folder holding it (a transformers or sentence-transformers
    model folder). ``to_int`` gives the bare word pieces; the special tokens come from the
    ``bos``/``eos`` flags, so the ``tokenize`` pp op writes BERT's input with
    ``add_bos=True, eos="sticky", pad_value="[PAD]"``: ``[CLS] ... [SEP] [PAD] ...``, a cut
    text still ending in ``[SEP]``. The bos, eos and pad tokens are found by their usual
    spellings (``[CLS]``/``<s>``, ``[SEP]``/``</s>``, ``[PAD]``/``<pad>``) or given by name.
    The file's own padding and truncation settings are switched off: the pp op fits lengths.
    """

    def __init__(self, path: str, bos: str | None = None, eos: str | None = None, pad: str | None = None):
        import tokenizers as hf_tokenizers  # type: ignore[import-untyped]

        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else os.path.expanduser(path)
        if not os.path.isfile(file):
            raise FileNotFoundError(
                f"hf(path={path!r}): no tokenizer.json there. Pass the file, or a model folder that holds one."
            )
        try:
            self._tok = hf_tokenizers.Tokenizer.from_file(file)
        except Exception as e:  # the library raises a bare Exception for a malformed file
            raise ValueError(f"hf(path={path!r}): {file} is not a Hugging Face tokenizer.json ({e}).") from e
        self._tok.no_padding()
        self._tok.no_truncation()
        self.path = file
        self._special = {role: self._find(role, given) for role, given in (("bos", bos), ("eos", eos), ("pad", pad))}

    def _find(self, role: str, given: str | None) -> int:
        if given is not None:
            idx = self._tok.token_to_id(given)
            if idx is None:
                raise ValueError(f"hf(path={self.path!r}): {role}={given!r} is not in the vocabulary.")
            return int(idx)
        for piece in HF_SPECIALS[role]:
            idx = self._tok.token_to_id(piece)
            if idx is not None:
                return int(idx)
        return -1

    def __repr__(self) -> str:
        return f"HFTokenizer(path={self.path!r}, vocab_size={self.vocab_size})"

    def _marks(self, bos: bool, eos: bool) -> tuple[Ids, Ids]:
        for flag, role in ((bos, "bos"), (eos, "eos")):
            if flag and self._special[role] < 0:
                raise ValueError(
                    f"The tokenizer {self.path} has no {role} token (looked for {', '.join(HF_SPECIALS[role])}); "
                    f"name it with hf(path=..., {role}='...') or don't ask for it."
                )
        return ([self._special["bos"]] if bos else []), ([self._special["eos"]] if eos else [])

    def to_int(self, text: str | Sequence[str], *, bos: bool = False, eos: bool = False) -> Ids | list[Ids]:
        head, tail = self._marks(bos, eos)
        if isinstance(text, (str, bytes)):
            return head + self._tok.encode(_decode(text), add_special_tokens=False).ids + tail
        encodings = self._tok.encode_batch([_decode(t) for t in text], add_special_tokens=False)
        return [head + e.ids + tail for e in encodings]

    def to_str(self, ids: Any, *, stop_at_eos: bool = True) -> str | list[str]:
        marks = {self.bos_token, self.eos_token, self.pad_token}

        def decode(row: Ids) -> str:
            return str(self._tok.decode([i for i in row if i not in marks], skip_special_tokens=True))

        return self._rows_to_str(ids, stop_at_eos, decode)

    def to_piece(self, idx: int) -> str:
        piece = self._tok.id_to_token(int(idx)) if 0 <= int(idx) < self.vocab_size else None
        if piece is None:
            raise ValueError(f"id {idx} is outside the vocabulary [0, {self.vocab_size}) of {self.path}.")
        return str(piece)

    def to_id(self, piece: str) -> int:
        idx = self._tok.token_to_id(piece)
        if idx is None:
            raise ValueError(f"{piece!r} is not in the vocabulary of {self.path}.")
        return int(idx)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def pad_token(self) -> int:
        return self._special["pad"]

    @property
    def eos_token(self) -> int:
        return self._special["eos"]

    @property
    def bos_token(self) -> int:
        return self._special["bos"]
