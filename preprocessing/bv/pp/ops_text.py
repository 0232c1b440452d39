"""Text pp ops: tokenizing to fixed-length ids, lowercasing, and building strings from the data.

``tokenize`` takes its tokenizer either as ``model=`` (a SentencePiece model: a name given to
:func:`bv.pp.tokenizers.register_sp_model`, or a local path, as in big_vision) or as
``tokenizer=`` (any spec of :func:`bv.pp.tokenizers.get_tokenizer`, e.g. ``"sp(model='c4_en',
tokensets=('loc',))"``). The tokenizer is loaded when the op is built, so a wrong name or a
missing file fails before any data is read.
"""

from __future__ import annotations

import string
from typing import Any, Callable

import tensorflow as tf

from bv.core.registry import pp_ops
from bv.pp.tokenizers import Tokenizer, get_tokenizer
from bv.pp.utils import Data, PPOp, inkey_outkey, require

EOS_MODES = ("none", "yes", "sticky")
DEFAULT_SP_MODEL = "c4_en"


def resolve_tokenizer(model: str | None = None, tokenizer: str | None = None) -> Tokenizer:
    """The tokenizer named by ``tokenizer`` (a spec), or else the SentencePiece ``model`` (name or path)."""
    if model is not None and tokenizer is not None:
        raise ValueError(f"Pass either model={model!r} or tokenizer={tokenizer!r}, not both.")
    if tokenizer is not None:
        return get_tokenizer(tokenizer)
    return get_tokenizer(f"sp(model={model or DEFAULT_SP_MODEL!r})")


def fit_length(ids: tf.RaggedTensor, max_len: int, pad_value: int, *, sticky_end: bool = False) -> tf.Tensor:
    """Truncates or pads each row of ragged ``[n, None]`` ids to exactly ``max_len`` (int32 ``[n, max_len]``).

    With ``sticky_end`` a row longer than ``max_len`` keeps its last id (the eos) in the last slot.
    """
    dense = ids.to_tensor(default_value=tf.cast(pad_value, ids.dtype), shape=[None, max_len])
    if sticky_end:
        too_long = ids.row_lengths() > max_len
        last = tf.gather(ids.values, tf.maximum(ids.row_splits[1:] - 1, 0))
        last_slot = tf.range(max_len) == max_len - 1
        dense = tf.where(too_long[:, None] & last_slot[None, :], last[:, None], dense)
    return tf.cast(dense, tf.int32)


def _pick_one(texts: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
    """One random entry of a 1-D string tensor (from ``seed`` if given); an empty one gives ``""``."""
    count = tf.shape(texts)[0]
    if seed is None:
        index = tf.random.uniform([], 0, tf.maximum(count, 1), dtype=tf.int32)
    else:
        index = tf.random.stateless_uniform([], seed, minval=0, maxval=tf.maximum(count, 1), dtype=tf.int32)
    return tf.cond(count > 0, lambda: tf.gather(texts, index), lambda: tf.constant(""))


@pp_ops.register("tokenize")
@inkey_outkey(indefault="text", outdefault="labels", with_seed=True)
def get_tokenize(
    max_len: int,
    eos: str,
    model: str | None = None,
    lower: bool = True,
    sample_if_multi: bool = True,
    pad_value: str | int = "<pad>",
    add_bos: bool = False,
    tokenizer: str | None = None,
) -> Callable[[tf.Tensor, tf.Tensor | None], tf.Tensor]:
    """Tokenizes text into int32 ids of length exactly ``max_len``.

    ``eos`` says whether to append the end-of-sentence id and whether it survives truncation;
    with ``max_len=3``, ``pad_value=0``, ids ``a=2`` and ``</s>=1``:

    ======== ========= ========= =========
    eos      "a"       "aa"      "aaa"
    ======== ========= ========= =========
    "none"   [2, 0, 0] [2, 2, 0] [2, 2, 2]
    "yes"    [2, 1, 0] [2, 2, 1] [2, 2, 2]
    "sticky" [2, 1, 0] [2, 2, 1] [2, 2, 1]
    ======== ========= ========= =========

    "yes" lets a generative model tell finished from cut-off text; "sticky" always ends with
    eos, for models that embed a text from its last token.

    Args:
      max_len: length of the output.
      eos: "none", "yes" or "sticky", as above.
      model: a SentencePiece model: a registered name or a local path (default ``"c4_en"``,
        which must have been registered). Not together with ``tokenizer``.
      lower: lowercase the text first.
      sample_if_multi: for several texts (a 1-D input) tokenize one picked at random with the
        example's seed (an empty list gives ``""``); otherwise tokenize them all to
        ``[..., max_len]``.
      pad_value: the padding id, or a vocabulary piece (such as ``"<pad>"``) whose id is used.
      add_bos: start with the beginning-of-sentence id.
      tokenizer: a tokenizer spec for :func:`bv.pp.tokenizers.get_tokenizer`, instead of ``model``.
    """
    if eos not in EOS_MODES:
        raise ValueError(f"tokenize: eos must be one of {', '.join(map(repr, EOS_MODES))}, got {eos!r}.")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise ValueError(f"tokenize: max_len must be a positive int, got {max_len!r}.")
    tok = resolve_tokenizer(model, tokenizer)
    if isinstance(pad_value, str):
        pad_id = tok.to_id(pad_value)
    elif isinstance(pad_value, int) and not isinstance(pad_value, bool):
        pad_id = pad_value
    else:
        raise ValueError(
            f"tokenize: pad_value must be an int id or a vocabulary piece such as '<pad>', got {pad_value!r}."
        )

    def tokenize(text: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        if text.dtype != tf.string:
            raise TypeError(f"tokenize needs a string tensor, got {text.dtype.name}.")
        if text.shape.rank is None:
            raise ValueError("tokenize needs text of known rank (a string or an array of strings).")
        if sample_if_multi and text.shape.rank > 0:
            if text.shape.rank != 1:
                raise ValueError(
                    f"tokenize with sample_if_multi picks one of a 1-D list of texts, got shape {text.shape}. "
                    "Pass sample_if_multi=False to tokenize them all."
                )
            text = _pick_one(text, seed)
        if lower:
            text = tf.strings.lower(text, encoding="utf-8")
        flat = tf.reshape(text, [-1])
        ids = tok.to_int_tf_op(flat, bos=add_bos, eos=eos != "none")
        out = fit_length(ids, max_len, pad_id, sticky_end=eos == "sticky")
        out = tf.reshape(out, tf.concat([tf.shape(text), [max_len]], axis=0))
        return tf.ensure_shape(out, text.shape.concatenate([max_len]))

    return tokenize


@pp_ops.register("lower")
@inkey_outkey(indefault="text", outdefault="text")
def get_lower() -> Callable[[tf.Tensor], tf.Tensor]:
    """Lowercases strings (UTF-8 aware, so "Ä" becomes "ä")."""

    def lower(text: tf.Tensor) -> tf.Tensor:
        return tf.strings.lower(text, encoding="utf-8")

    return lower


@pp_ops.register("strfmt")
def get_strfmt(template: str, outkey: str = "text") -> PPOp:
    """Writes ``template`` with each ``{key}`` replaced by ``data[key]`` into ``data[outkey]``.

    Non-string values are written as ``tf.strings.format`` shows them (``3``, ``0.5``,
    ``[1 2 3]``). Only plain ``{key}`` fields are supported: no format specs or conversions.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"strfmt: cannot parse template {template!r}: {e}.") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if not field or field.isdigit():
            raise ValueError(
                f"strfmt: template {template!r} has a positional field; name a data key, as in '{{label}}'."
            )
        if spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"strfmt: template {template!r} uses {shown!r}; only plain '{{{field}}}' fields are supported "
                "(no format specs or !conversions)."
            )

    def strfmt(data: Data) -> Data:
        pieces: list[Any] = []
        for literal, field, _, _ in parts:
            if literal:
                pieces.append(tf.constant(literal))
            if field is not None:
                value = tf.convert_to_tensor(require(data, field, "strfmt"))
                if value.dtype != tf.string:
                    value = tf.strings.format("{}", value, summarize=-1)
                pieces.append(value)
        return {**data, outkey: tf.strings.join(pieces) if pieces else tf.constant("")}

    return strfmt


@pp_ops.register("strjoin")
@inkey_outkey(indefault="text", outdefault="text")
def get_strjoin(glue: str = "") -> Callable[[tf.Tensor], tf.Tensor]:
    """Joins all strings of a tensor into one, with ``glue`` between them."""

    def strjoin(texts: tf.Tensor) -> tf.Tensor:
        return tf.strings.reduce_join(texts, separator=glue)

    return strjoin


@pp_ops.register("coco_captions")
def get_coco_captions(outkey: str = "captions") -> PPOp:
    """Moves COCO's nested ``data["captions"]["text"]`` (all captions of an image) to ``data[outkey]``."""

    def coco_captions(data: Data) -> Data:
        captions = require(data, "captions", "coco_captions")
        if not isinstance(captions, dict) or "text" not in captions:
            raise KeyError(
                "coco_captions expects data['captions'] to be a dict with a 'text' entry, as in TFDS coco_captions."
            )
        return {**data, outkey: captions["text"]}

    return coco_captions


@pp_ops.register("label_caption")
@inkey_outkey(indefault="label", outdefault="texts", with_seed=True)
def get_label_caption(
    class_names: Any, templates: Any = ("{}",), sample: bool = True
) -> Callable[[tf.Tensor, tf.Tensor | None], tf.Tensor]:
    """A caption made from an int class label: ``templates`` with the class's name written into ``{}``.

    ``class_names`` holds one entry per label id: a name, or a list of names for the class
    ("seven", "7"). With ``sample`` (for training) one name and one template are drawn at
    random per example (from the example's seed); without it the caption is the first template
    with the first name, so evaluation is deterministic. Turns a classification data set into
    image-text pairs, as for LiT on class labels.
    """
    names = [[n] if isinstance(n, str) else list(n) for n in class_names]
    if not names or any(not group or not all(isinstance(n, str) for n in group) for group in names):
        raise ValueError(
            f"label_caption: class_names must hold a name or a non-empty list of names per class, got {class_names!r}."
        )
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates or any(not isinstance(t, str) or t.count("{}") != 1 for t in templates):
        raise ValueError(f"label_caption: each template must be a string with one '{{}}', got {templates!r}.")
    width = max(len(group) for group in names)
    # [class, name slot, template]: a class with fewer names repeats its first to fill the slots.
    table = [
        [[t.replace("{}", (group + group[:1] * width)[i]) for t in templates] for i in range(width)] for group in names
    ]
    counts = [len(group) for group in names]

    def label_caption(label: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        if label.shape.rank != 0 or not label.dtype.is_integer:
            raise ValueError(
                f"label_caption needs one int class label per example, got {label.dtype.name}{label.shape}."
            )
        tf.debugging.assert_less(
            label, tf.cast(len(names), label.dtype), message="label_caption: label beyond class_names"
        )
        label = tf.cast(label, tf.int32)
        if not sample:
            return tf.gather(tf.constant(table), label)[0, 0]
        if seed is None:
            u = tf.random.uniform([2])
        else:
            u = tf.random.stateless_uniform([2], seed)
        count = tf.gather(tf.constant(counts), label)
        name = tf.minimum(tf.cast(u[0] * tf.cast(count, tf.float32), tf.int32), count - 1)
        template = tf.minimum(tf.cast(u[1] * len(templates), tf.int32), len(templates) - 1)
        return tf.gather_nd(tf.constant(table), tf.stack([label, name, template]))

    return label_caption
