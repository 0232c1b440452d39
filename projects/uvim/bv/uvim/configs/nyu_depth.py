r"""UViM depth estimation on NYU depth v2 (big_vision's ``vqvae_nyu_depth`` and
``train_nyu_depth_pretrained``), stage I or stage II.

    bv-train --config bv.uvim.configs.nyu_depth:stage=1 --workdir runs/uvim_depth_stage1
    bv-train --config bv.uvim.configs.nyu_depth:stage=2,oracle=runs/uvim_depth_stage1 --workdir runs/uvim_depth

Depth in metres is quantized into 256 bins between 1 mm and 10 m (bin 0, no reading, is
left out of the loss); predictions are bin centres. Evaluated by RMSE, absolute relative
error, log10 error and delta thresholds (``uvim_depth``) on the standard 426x560 crop.
big_vision trained these on TPU pods; nothing of that size was run here (no NYU data on
this machine). ``runlocal`` shrinks everything for three CPU steps (TFDS mock data in the
tests). Arguments: ``stage``, ``oracle``, ``res`` (512), ``patch_size`` (16), ``runlocal``.
"""

import ml_collections

from bv.core.config import parse_arg
from bv.uvim.configs.common import stage_config

MIN_DEPTH, MAX_DEPTH, BINS = 1e-3, 10.0, 256


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, stage="1", oracle="", res=512, patch_size=16, runlocal=False)
    res, patch = (32, 8) if opts.runlocal else (opts.res, opts.patch_size)
    resize = f"resize({res})|resize({res}, key='labels', method='nearest')"
    tail = "value_range(-1, 1)|keep('image', 'labels')"
    pp_train = f"decode|nyu_depth|joint_flip_lr|{resize}|{tail}"
    pp_eval = f"decode|nyu_depth|nyu_eval_crop|{resize}|{tail}"
    data = {"name": "nyu_depth_v2", "split": "train"}
    adapter = {"kind": "depth", "bins": BINS, "min_depth": MIN_DEPTH, "max_depth": MAX_DEPTH}
    evals = {
        "nyu_depth": {
            "type": "uvim_depth",
            "min_depth": MIN_DEPTH,
            "max_depth": MAX_DEPTH,
            "data": {"name": "nyu_depth_v2", "split": "validation"},
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
        total_epochs=200 if str(opts.stage) == "1" else 50,
        oracle=opts.oracle,
        runlocal=opts.runlocal,
        lr=1e-3,
        wd=1e-5,
    )
    for name in ("val", "perplexity"):
        if name in config.evals:
            config.evals[name].data.split = "validation"
    return config
