"""What big_vision's UViM configs share: model sizes, optimizer, and the two stages' shape.

``stage_config`` builds a stage-I (``uvim_vqvae``) or stage-II (``uvim``) config for one
task from its pp strings, adapter and evaluators, with big_vision's settings (ViT-B sized
VQ-VAE with a 4096-entry codebook and 256 codes guided by the image at 512 px, Adafactor,
cosine schedule; a ViT-L/16 sized language model) and a ``runlocal`` variant that shrinks
everything to run a few steps on a CPU (the tests train those on TFDS mock data).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from bv.core.config import ConfigError

VQVAE_BASE = {"enc_depth": 6, "dec_depth": 12, "num_heads": 12, "mlp_dim": 3072, "width": 768}
VTT_SIZES = {
    "base": {"num_layers": 12, "num_heads": 12, "mlp_dim": 3072, "emb_dim": 768},
    "large": {"num_layers": 24, "num_heads": 16, "mlp_dim": 4096, "emb_dim": 1024},
}
TINY_VQVAE = {"enc_depth": 1, "dec_depth": 1, "num_heads": 2, "mlp_dim": 64, "width": 32}
TINY_VTT = {"num_layers": 1, "num_heads": 2, "mlp_dim": 64, "emb_dim": 32}


def oracle_model(res: int, patch: int, runlocal: bool) -> dict[str, Any]:
    """The stage-I model as big_vision's UViM configs set it (or tiny, for ``runlocal``)."""
    size = TINY_VQVAE if runlocal else VQVAE_BASE
    return {
        **size,
        "input_size": (res, res),
        "patch_size": (patch, patch),
        "code_len": 4 if runlocal else 256,
        "dict_size": 16 if runlocal else 4096,
        "codeword_dim": 16 if runlocal else 768,
        "with_encoder_ctx": True,
        "with_decoder_ctx": True,
        "code_dropout": "random",
        "bottleneck_resize": True,
    }


def stage_config(
    *,
    stage: str,
    data: dict[str, Any],
    pp_train: str,
    pp_eval: str,
    adapter: dict[str, Any],
    evals: dict[str, dict[str, Any]],
    res: int,
    patch: int,
    total_epochs: float,
    oracle: str,
    runlocal: bool,
    lr: float = 4e-4,
    wd: float = 4e-5,
    lm_size: str = "large",
) -> ml_collections.ConfigDict:
    if stage not in ("1", "2"):
        raise ConfigError(f"stage must be 1 (the VQ-VAE oracle) or 2 (the language model), got {stage!r}.")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.input = {
        "data": data,
        "batch_size": 1024 if stage == "1" else 512,
        "shuffle_buffer_size": 25_000,
        "pp": pp_train,
    }
    config.total_epochs = total_epochs
    config.log_training_steps = 50
    config.ckpt_steps = 1000
    config.optax_name = "big_vision.scale_by_adafactor"
    config.optax = {"beta2_cap": 0.95}
    config.grad_clip_norm = 1.0
    schedule = {"decay_type": "cosine", "warmup_steps": 1 if runlocal else 4_000}
    model = oracle_model(res, patch, runlocal)
    if stage == "1":
        config.task = "uvim_vqvae"
        config.model = model
        config.uvim = {
            "adapter": adapter,
            "dict_momentum": 0.995,
            "min_count": 0.1,
            "w_commitment": 0.0,
            "freeze_dict": False,
        }
        config.lr, config.wd = lr, wd
        config.schedule = schedule
        config.evals = {
            "val": {"type": "mean", "pred": "validation", "data": dict(data), "pp_fn": pp_eval, "log_steps": 250}
        }
    else:
        config.task = "uvim"
        config.model_name = "uvim_vtt"
        config.model = {
            **(TINY_VTT if runlocal else VTT_SIZES[lm_size]),
            "input_size": (res, res),
            "patch_size": (patch, patch),
            "posemb_type": "learn",
        }
        config.oracle = {"model": model, "uvim": {"adapter": adapter}}
        config.uvim = {"sampling": {"temperature": 0.0, "top_k": 0}, "random_oracle": not oracle}
        if oracle:
            config.model_init = {"oracle": oracle}
        elif not runlocal:
            raise ConfigError("stage=2 needs oracle=<stage-I workdir, checkpoint or Hub folder>.")
        config.lr, config.wd = 1e-3, 1e-6
        config.lr_mults = [
            ("pos_embedding_encoder.*", 0.1),
            ("EmbedPatches.*", 0.1),
            ("encoder.*", 0.1),
            ("decoder.*", 1.0),
        ]
        config.schedule = [("oracle/.*", None), (".*", schedule)]
        config.evals = {
            "perplexity": {"type": "uvim_perplexity", "data": dict(data), "pp_fn": pp_eval, "log_steps": 1000}
        }
    for name, ev in evals.items():
        config.evals[name] = {"log_steps": 2000, "pp_fn": pp_eval, **ev}
    if runlocal:
        del config.total_epochs
        config.total_steps = 3
        config.log_training_steps = 1
        config.input.batch_size = 4
        config.input.shuffle_buffer_size = 8
        for ev in config.evals.values():
            ev.log_steps = 3
            ev.batch_size = 4
            ev.data.split = "validation[:4]" if "validation" in ev.data.split else ev.data.split
    return config
