r"""UViM colorization on scikit-image's colour photographs: stage I or stage II. Offline, minutes on a CPU.

    ./pants run projects/uvim:photos_demo     # both stages and the README's table
    bv-train --config bv.uvim.configs.photos:stage=1 --workdir runs/uvim_photos/stage1
    bv-train --config bv.uvim.configs.photos:stage=2,oracle=runs/uvim_photos/stage1 --workdir runs/uvim_photos/stage2

Data: ``skimage_photos`` (``bv.uvim.photos``), 32x32 random crops of six photographs for
training and two others for testing. The input is the grey crop (three equal channels), the
output its colours. Stage I: a VQ-VAE (width 64, 2+2 layers, patches of 4 px) guided by the
grey crop squeezes the colours into 16 codes of a 128-entry codebook; stage II (width 96, 2+2
layers) predicts the codes from the grey crop. Evaluated by PSNR on the test crops
(``uvim_psnr``, which also reports the PSNR of the grey input itself, the baseline).
Arguments: ``stage``, ``oracle``, ``steps`` (default 800 for stage 1, 1000 for stage 2),
``runlocal``. Measured figures: projects/uvim/README.md.
"""

from __future__ import annotations

import ml_collections

from bv.core.config import ConfigError, parse_arg

GREY = (
    "copy(inkey='image', outkey='labels')|rgb_to_grayscale_to_rgb|value_range(-1, 1)"
    "|value_range(-1, 1, key='labels')|keep('image', 'labels')"
)
PP_TRAIN = f"decode|flip_lr|{GREY}"
PP_EVAL = f"decode|{GREY}"
SIZE = (32, 32)
ADAPTER = {"kind": "colorization"}
STAGE1_MODEL = {
    "input_size": SIZE,
    "patch_size": (4, 4),
    "code_len": 16,
    "width": 64,
    "enc_depth": 2,
    "dec_depth": 2,
    "num_heads": 4,
    "mlp_dim": 128,
    "dict_size": 128,
    "codeword_dim": 32,
    "with_encoder_ctx": True,
    "with_decoder_ctx": True,
}
STAGE2_MODEL = {
    "input_size": SIZE,
    "patch_size": (4, 4),
    "emb_dim": 96,
    "num_layers": 2,
    "num_heads": 4,
    "mlp_dim": 256,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, stage="1", oracle="", steps=0, runlocal=False)
    stage = str(opts.stage)
    if stage not in ("1", "2"):
        raise ConfigError(f"bv.uvim.configs.photos: stage must be 1 or 2, got {stage!r}.")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.input = {
        "data": {"name": "skimage_photos", "split": "train"},
        "batch_size": 64,
        "shuffle_buffer_size": 3_000,
        "cache_raw": True,
        "pp": PP_TRAIN,
    }
    config.total_steps = opts.steps or (1000 if stage == "2" else 800)
    config.log_training_steps = 50
    config.ckpt_steps = 500
    config.optax_name = "scale_by_adam"
    config.lr = 1e-3
    config.wd = 1e-4
    config.grad_clip_norm = 1.0
    warmup = {"decay_type": "cosine", "warmup_steps": 1 if opts.runlocal else 50}
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    test = {"data": {"name": "skimage_photos", "split": "test"}, "pp_fn": PP_EVAL, "batch_size": 250}
    psnr = {"type": "uvim_psnr", "log_steps": config.total_steps, **test}
    if stage == "1":
        config.task = "uvim_vqvae"
        config.model = dict(STAGE1_MODEL)
        config.uvim = {"adapter": ADAPTER, "dict_momentum": 0.99, "min_count": 0.1, "w_commitment": 0.0}
        config.schedule = warmup
        config.evals = {"test": psnr}
    else:
        if not opts.oracle and not opts.runlocal:
            raise ConfigError("bv.uvim.configs.photos:stage=2 needs oracle=<stage-I workdir or Hub folder>.")
        config.task = "uvim"
        config.model_name = "uvim_vtt"
        config.model = dict(STAGE2_MODEL)
        config.oracle = {"model": dict(STAGE1_MODEL), "uvim": {"adapter": ADAPTER}}
        config.uvim = {"sampling": {"temperature": 0.0, "top_k": 0}, "random_oracle": not opts.oracle}
        if opts.oracle:
            config.model_init = {"oracle": opts.oracle}
        config.schedule = [("oracle/.*", None), (".*", warmup)]
        config.evals = {
            "test": psnr,
            "oracle": {**psnr, "pred": "oracle"},
            "perplexity": {"type": "uvim_perplexity", "log_steps": config.total_steps, **test},
        }
    if opts.runlocal:
        config.total_steps = 3
        config.log_training_steps = 1
        config.input.batch_size = 8
        for ev in config.evals.values():
            ev.log_steps = 3
            ev.batch_size = 8
            ev.data.split = "test[:16]"
    return config
