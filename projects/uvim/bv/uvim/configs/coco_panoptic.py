r"""UViM panoptic segmentation on COCO panoptic (big_vision's ``vqvae_coco_panoptic`` and
``train_coco_panoptic_pretrained``), stage I or stage II.

    bv-train --config bv.uvim.configs.coco_panoptic:stage=1 --workdir runs/uvim_panoptic_stage1
    bv-train --config bv.uvim.configs.coco_panoptic:stage=2,oracle=runs/uvim_panoptic_stage1 --workdir runs/uvim_panoptic

big_vision reports about 75.7 PQ for its stage I oracle and 43.7 PQ for stage II (ViT-L/16
language model initialised from ImageNet-21k) on its COCO holdout, on TPU pods over days;
nothing of that size was run here (no COCO on this machine). ``runlocal`` shrinks every
model to run three steps on a CPU; the tests run it on TFDS mock data. Labels are the
semantic class + 1 (134 with void) and canonical instance ids (100) at 512 px; training
augments with a random flip only (big_vision also takes an Inception-style crop box).
Arguments: ``stage``, ``oracle``, ``res`` (512), ``patch_size`` (16), ``runlocal``.
"""

import ml_collections

from bv.core.config import parse_arg
from bv.uvim.configs.common import stage_config

NUM_CLASSES = 133


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, stage="1", oracle="", res=512, patch_size=16, runlocal=False)
    res, patch = (32, 8) if opts.runlocal else (opts.res, opts.patch_size)
    labels = f"coco_panoptic|resize({res})|resize({res}, key='labels', method='nearest')"
    tail = "value_range(-1, 1)|make_canonical|keep('image', 'labels')"
    pp_train = f"decode|{labels}|joint_flip_lr|{tail}"
    pp_eval = f"decode|{labels}|{tail}"
    data = {"name": "coco/2017_panoptic", "split": "train[4096:]"}
    adapter = {"kind": "panoptic", "num_classes": NUM_CLASSES, "max_instances": 100}
    evals = {
        "coco_panoptic": {
            "type": "uvim_panoptic",
            "num_classes": NUM_CLASSES,
            "data": {"name": "coco/2017_panoptic", "split": "validation"},
        },
    }
    config = stage_config(
        stage=str(opts.stage),
        data=data,
        pp_train=pp_train,
        pp_eval=pp_eval,
        adapter=adapter,
        evals=evals,
        res=res,
        patch=patch,
        total_epochs=1000 if str(opts.stage) == "1" else 200,
        oracle=opts.oracle,
        runlocal=opts.runlocal,
    )
    for name in ("val", "perplexity"):
        if name in config.evals:
            config.evals[name].data.split = "train[:4096]"  # big_vision's holdout
    return config
