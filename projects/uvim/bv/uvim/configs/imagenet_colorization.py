r"""UViM colorization on ImageNet (big_vision's ``vqvae_imagenet2012_colorization`` and
``train_imagenet2012_colorization_pretrained``), stage I or stage II.

    bv-train --config bv.uvim.configs.imagenet_colorization:stage=1 --workdir runs/uvim_color_stage1
    bv-train --config bv.uvim.configs.imagenet_colorization:stage=2,oracle=runs/uvim_color_stage1 --workdir runs/uvim_color

The input is the grey image (3 equal channels), the output its colours in [-1, 1],
squared error; evaluated by PSNR (``uvim_psnr``, also reporting the grey input's PSNR as
the baseline) instead of big_vision's ColTran FID, which needs a downloaded Inception
network. big_vision trained these on TPU pods; nothing of that size was run here.
``runlocal``: three CPU steps (TFDS mock data in the tests). The offline demo on real
photographs is ``bv.uvim.configs.photos``. Arguments: ``stage``, ``oracle``, ``res``
(512), ``patch_size`` (16), ``runlocal``.
"""

import ml_collections

from bv.core.config import parse_arg
from bv.uvim.configs.common import stage_config

GREY = (
    "copy(inkey='image', outkey='labels')|rgb_to_grayscale_to_rgb|value_range(-1, 1)|value_range(-1, 1, key='labels')"
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, stage="1", oracle="", res=512, patch_size=16, runlocal=False)
    res, patch = (32, 8) if opts.runlocal else (opts.res, opts.patch_size)
    keep = "keep('image', 'labels')"
    pp_train = f"decode_jpeg_and_inception_crop({res})|flip_lr|{GREY}|{keep}"
    pp_eval = f"decode|resize({res})|{GREY}|{keep}"
    data = {"name": "imagenet2012", "split": "train[4096:]"}
    adapter = {"kind": "colorization"}
    evals = {"psnr_val": {"type": "uvim_psnr", "data": {"name": "imagenet2012", "split": "validation"}}}
    config = stage_config(
        stage=str(opts.stage),
        data=data,
        pp_train=pp_train,
        pp_eval=pp_eval,
        adapter=adapter,
        evals=evals,
        res=res,
        patch=patch,
        total_epochs=100 if str(opts.stage) == "1" else 50,
        oracle=opts.oracle,
        runlocal=opts.runlocal,
    )
    for name in ("val", "perplexity"):
        if name in config.evals:
            config.evals[name].data.split = "train[:4096]"
    return config
