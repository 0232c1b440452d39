"""Fine-tune a pre-trained model on a TFDS classification data set (big_vision's transfer recipe).

    bv-train --config "bv.vit.configs.transfer:model=runs/vit_s16_i1k,dataset=cifar10,crop=resmall_crop" \\
        --workdir runs/transfer_cifar10

``model`` is the pre-trained checkpoint: a bv workdir or checkpoint folder, a Hub
repo id or model folder (bv's or timm's format), or a big_vision ``.npz`` (with
``file.npz:subtree``); its head is dropped and re-initialised, and a learned
position embedding is resampled to ``res``. SGD with momentum, lr 0.03, 500 warmup steps then cosine, batch
512, 10k steps (2.5k for small data sets), no weight decay, 384 px. ``crop``:
``resmall_crop`` (resize the small side to 384*1.14 then crop 384) or
``resize_crop`` (resize to 384, inception crop), ``central`` for eval.
Data sets: cifar10, cifar100, oxford_iiit_pet, oxford_flowers102 (any TFDS
data set with ``image`` and ``label``, given ``num_classes``). Not run here.
Arguments: ``model``, ``dataset``, ``variant``, ``crop``, ``res``, ``runlocal``.
"""

import ml_collections

from bv.core.config import parse_arg

# name: (num_classes, train split, eval split, steps)
DATASETS = {
    "cifar10": (10, "train[:98%]", "test", 10_000),
    "cifar100": (100, "train[:98%]", "test", 10_000),
    "oxford_iiit_pet": (37, "train[:90%]", "test", 500),
    "oxford_flowers102": (102, "train", "test", 500),
}
CROPS = ("resmall_crop", "resize_crop")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, model="", dataset="cifar10", variant="B/16", crop="resmall_crop", res=384, runlocal=False)
    if opts.dataset not in DATASETS:
        raise ValueError(f"transfer: unknown dataset {opts.dataset!r}; known: {', '.join(DATASETS)}.")
    if opts.crop not in CROPS:
        raise ValueError(f"transfer: unknown crop {opts.crop!r}; expected one of {', '.join(CROPS)}.")
    num_classes, train_split, eval_split, steps = DATASETS[opts.dataset]
    res = opts.res

    config = ml_collections.ConfigDict()
    config.seed = 0
    pp_common = f"|value_range(-1, 1)|onehot({num_classes}, key='label', key_result='labels')|keep('image', 'labels')"
    if opts.crop == "resmall_crop":
        pp_train = f"decode|resize_small({int(res * 1.14)})|random_crop({res})|flip_lr"
    else:
        pp_train = f"decode|inception_crop({res})|flip_lr"
    pp_eval = f"decode|resize_small({int(res * 1.14)})|central_crop({res})"
    config.input = dict(
        data=dict(name=opts.dataset, split=train_split),
        batch_size=512,
        shuffle_buffer_size=50_000,
        pp=pp_train + pp_common,
    )
    config.total_steps = steps
    config.log_training_steps = 10
    config.ckpt_steps = 1000

    config.model_name = "vit"
    config.num_classes = num_classes
    config.model = dict(variant=opts.variant, pool_type="tok")
    config.model_init = opts.model or None
    config.model_load = dict(dont_load=["head/.*"])
    config.loss = "softmax_xent"

    config.optax_name = "big_vision.momentum_hp"
    config.lr = 0.03
    config.wd = 0.0
    config.schedule = dict(decay_type="cosine", warmup_steps=500)
    config.grad_clip_norm = 1.0

    config.evals = dict(
        val=dict(
            type="classification",
            data=dict(name=opts.dataset, split=eval_split),
            pp_fn=pp_eval + pp_common,
            loss_name=config.loss,
            log_percent=0.25,
        )
    )

    if opts.runlocal:
        config.input.shuffle_buffer_size = 100
        config.input.batch_size = 8
        config.total_steps = 2
        config.schedule.warmup_steps = 1
        config.evals.val.log_steps = 2
        del config.evals.val.log_percent
    return config
