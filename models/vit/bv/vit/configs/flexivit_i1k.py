"""FlexiViT-B on ImageNet-1k: one ViT trained at ten patch sizes, evaluated at four (arXiv:2212.08013).

    bv-train --config bv.vit.configs.flexivit_i1k --workdir runs/flexivit_b_i1k
    bv-train --config bv.vit.configs.flexivit_i1k:gpu8 --workdir runs/flexivit_b_i1k_gpu8

The FlexiViT recipe of big_vision's supervised config (``proj/flexivit/i21k_sup.py``),
on ImageNet-1k labels: 240 px images (divisible by every patch size used), a patch
embedding stored at 32x32 and PI-resized each step to a patch size drawn uniformly from
48, 40, 30, 24, 20, 16, 15, 12, 10 and 8 px, a learned position embedding stored at 7x7
and resized to the token grid, class-token pooling, RandAugment(2, 10), mixup 0.2,
Adam with a bf16 first moment, lr 1e-3 with 10k warmup steps and cosine decay, wd 1e-4,
grad clip 1.0, 90 epochs at batch 4096. Evals report validation prec@1 at 48, 30, 16 and
8 px (``val_p16/prec@1``, ...).

Not run: there is no ImageNet or accelerator on the development machine, and big_vision
publishes no figure for this supervised ImageNet-1k setting (its ImageNet-1k FlexiViTs
are distilled from a DeiT III teacher, which is bv-distill's job). The recipe and the
patch-size sampling are checked end to end on MNIST-5k by ``flexivit_mnist``.
Needs ``imagenet2012`` prepared in the TFDS data dir. Arguments: ``gpu8`` (batch 1024,
30 epochs, for one 8-GPU node), ``variant`` (size only, default B), ``runlocal`` (two
steps of a tiny model at 3 patch sizes, 64 px).
"""

import ml_collections

from bv.core.config import parse_arg

TRAIN_PATCH_SIZES = (48, 40, 30, 24, 20, 16, 15, 12, 10, 8)
EVAL_PATCH_SIZES = (48, 30, 16, 8)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, gpu8=False, variant="B", runlocal=False)
    config = ml_collections.ConfigDict()
    config.seed = 0
    res = 64 if opts.runlocal else 240

    pp_common = "|value_range(-1, 1)|onehot(1000, key='label', key_result='labels')|keep('image', 'labels')"
    config.input = dict(
        data=dict(name="imagenet2012", split="train[:99%]"),
        batch_size=1024 if opts.gpu8 else 4096,
        shuffle_buffer_size=250_000,
        cache_raw=False,
        prefetch=8,  # Small patch sizes run fast: keep the input ahead.
        pp=f"decode_jpeg_and_inception_crop({res})|flip_lr|randaug(2, 10)" + pp_common,
    )
    config.total_epochs = 30 if opts.gpu8 else 90
    config.log_training_steps = 50
    config.ckpt_steps = 1000

    config.task = "flexi_classification"
    config.flexi = dict(
        patch_sizes=TRAIN_PATCH_SIZES,
        weights=(1.0,) * len(TRAIN_PATCH_SIZES),
        eval_patch_sizes=EVAL_PATCH_SIZES,
    )
    config.model_name = "vit"
    config.num_classes = 1000
    config.model = dict(variant=opts.variant, patch_size=(32, 32), posemb_grid=7, pool_type="tok", posemb="learn")
    config.loss = "softmax_xent"
    config.mixup = dict(p=0.2)

    config.optax_name = "scale_by_adam"
    config.optax = dict(mu_dtype="bfloat16")
    config.lr = 0.001
    config.wd = 0.0001
    config.schedule = dict(decay_type="cosine", warmup_steps=10_000)
    config.grad_clip_norm = 1.0

    pp_eval = f"decode|resize_small({res // 7 * 8})|central_crop({res})" + pp_common

    def evals(patch_sizes: tuple[int, ...], log_steps: int) -> dict[str, dict]:
        return {
            f"val_p{p}": dict(
                type="classification",
                pred=f"predict_p{p}",
                data=dict(name="imagenet2012", split="validation"),
                pp_fn=pp_eval,
                loss_name=config.loss,
                log_steps=log_steps,
            )
            for p in patch_sizes
        }

    config.evals = evals(EVAL_PATCH_SIZES, log_steps=5000)

    # Scale-out (see docs/scaling.md); change from the command line, e.g.
    # --config.sharding_strategy="[('.*', 'fsdp(axis=\'data\')')]" or --config.grad_accum_steps=4.
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    config.sharding_rules = [("act_batch", "data")]
    config.grad_accum_steps = 1

    if opts.runlocal:
        config.input.shuffle_buffer_size = 100
        config.input.batch_size = 8
        config.input.prefetch = 2
        config.total_steps = 2
        del config.total_epochs
        config.schedule.warmup_steps = 1
        config.flexi = dict(patch_sizes=(32, 16, 8), weights=(1.0, 1.0, 1.0), eval_patch_sizes=(32, 8))
        config.model = dict(
            patch_size=(16, 16), posemb_grid=4, width=32, depth=1, num_heads=2, mlp_dim=64, pool_type="tok"
        )
        config.evals = evals((32, 8), log_steps=2)
    return config
