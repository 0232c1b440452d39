"""MLP-Mixer-B/16 on ImageNet-1k: big_vision's recipe from the MLP-Mixer paper (arXiv:2105.01601).

    bv-train --config bv.mixer.configs.mlp_mixer_i1k --workdir runs/mixer_b16_i1k
    bv-train --config bv.mixer.configs.mlp_mixer_i1k:gpu8 --workdir runs/mixer_b16_i1k_gpu8

The recipe: 300 epochs at batch 4096, Adam (b1 0.9, b2 0.999), lr 1e-3 with 10k warmup
steps then a linear decay to 1e-5 times it, wd 1e-4, grad clip 1.0, a sigmoid loss with the
head bias started at -6.9 (log 1/1000), stochastic depth 0.1, Inception crop, flips,
RandAugment(2, 15) and mixup (p=0.5). big_vision reports 76.3% top-1 (validation) in 2h11m
on a TPU v3-128, and 70.5% for a 60-epoch run. Left out: big_vision's ImageNet-v2 and ReaL
evals and few-shot probes. ``gpu8``: batch 512, 60 epochs and no raw-data cache (which needs about 120 GB of
RAM), as big_vision's README suggests for one 8-GPU machine. Not run here (no ImageNet on
this machine): the numbers above are big_vision's. Needs ``imagenet2012`` prepared in the
TFDS data dir. Arguments: ``gpu8``, ``variant`` (default B/16; any of S, B, L, H with a
patch size), ``runlocal`` (2 steps of a tiny Mixer with the variant's patch size, batch 8).
"""

import ml_collections

from bv.core.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, gpu8=False, variant="B/16", runlocal=False)
    config = ml_collections.ConfigDict()
    config.seed = 0

    pp_common = "|value_range(-1, 1)|onehot(1000, key='label', key_result='labels')|keep('image', 'labels')"
    config.input = dict(
        data=dict(name="imagenet2012", split="train[:99%]"),
        batch_size=512 if opts.gpu8 else 4096,
        shuffle_buffer_size=250_000,
        cache_raw=not opts.gpu8,
        pp="decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2, 15)" + pp_common,
    )
    config.total_epochs = 60 if opts.gpu8 else 300
    config.log_training_steps = 50
    config.ckpt_steps = 1000

    config.model_name = "mixer"
    config.num_classes = 1000
    config.model = dict(variant=opts.variant, stoch_depth=0.1, head_bias_init=-6.9)
    config.loss = "sigmoid_xent"

    config.optax_name = "scale_by_adam"
    config.lr = 0.001
    config.wd = 0.0001
    config.schedule = dict(decay_type="linear", warmup_steps=10_000, linear_end=1e-5)
    config.grad_clip_norm = 1.0
    config.mixup = dict(p=0.5)

    pp_eval = "decode|resize_small(256)|central_crop(224)" + pp_common
    common = dict(type="classification", pp_fn=pp_eval, loss_name=config.loss, log_steps=2500)
    config.evals = dict(
        train=dict(common, data=dict(name="imagenet2012", split="train[:2%]")),
        minival=dict(common, data=dict(name="imagenet2012", split="train[99%:]")),
        val=dict(common, data=dict(name="imagenet2012", split="validation")),
    )

    # Scale-out (see docs/scaling.md); change from the command line, e.g.
    # --config.sharding_strategy="[('.*', 'fsdp(axis=\'data\')')]" or --config.grad_accum_steps=4.
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    config.sharding_rules = [("act_batch", "data")]
    config.grad_accum_steps = 1

    if opts.runlocal:
        config.input.shuffle_buffer_size = 100
        config.input.batch_size = 8
        config.input.cache_raw = False
        config.total_steps = 2
        del config.total_epochs
        config.schedule.warmup_steps = 1
        config.model.update(hidden_dim=32, num_blocks=2, tokens_mlp_dim=16, channels_mlp_dim=64)
        for evaluator in config.evals.values():
            evaluator.log_steps = 2
    return config
