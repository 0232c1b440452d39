"""SigLIP from scratch (arXiv:2303.15343): both towers trained with the sigmoid loss, chunked across devices.

    bv-train --config bv.lit.configs.siglip_replication --workdir runs/siglip
    bv-train --config "bv.lit.configs.siglip_replication:variant=B/16,batch_size=32768" --workdir runs/siglip

The SigLIP recipe at a size one can run: a ViT with MAP pooling and big_vision's text
transformer (same size, ``last`` pooling; text padded with the eos id so the last token
is always an end token), ``t`` starting at 10 and the bias at -10, Adam with beta2 0.95,
weight decay 1e-4, lr 1e-3 with warmup and cosine decay. The loss is
``sigmoid_chunked``: each device scores its images against its own texts, then passes
its texts on around the ``data`` axis, so no device ever holds the whole batch's text
embeddings (memory linear in the per-device batch). The paper trains on WebLI (not in
TFDS); this config uses ``coco_captions`` (``data`` to change it) and evaluates COCO
retrieval. Its SentencePiece vocabulary is big_vision's ``c4_en`` (32k; register the local
file with ``bv.pp.tokenizers.register_sp_model("c4_en", path)``, or pass ``tok`` and
``vocab``). Not run here (no data or accelerator on the development machine); the paper's
B/16 reaches 73.4% ImageNet zero-shot after 9B WebLI examples at batch 32k. Tests train it
for two steps with ``runlocal`` on a small captions data set of COCO's layout.
"""

import ml_collections

from bv.core.config import parse_arg
from bv.lit.configs import common

WIDTHS = {"mu": 32, "Ti": 192, "S": 384, "M": 512, "B": 768, "L": 1024, "So400m": 1152}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(
        arg, variant="B/16", res=224, token_len=64, tok="sp(model='c4_en')", vocab=32_000,
        batch_size=4096, total_steps=20_000, data="coco_captions", runlocal=False,
    )  # fmt: skip
    config = ml_collections.ConfigDict()
    config.seed = 0
    if opts.runlocal:
        opts.variant, opts.res, opts.token_len, opts.batch_size, opts.total_steps = "mu/16", 32, 8, 8, 2
        opts.tok = f"words(vocab={list(common.SMOKE_WORDS)!r})"
        opts.vocab = len(common.SMOKE_WORDS) + 4
    pp_tokens = common.tokenize(opts.tok, opts.token_len, "texts", bert=False)

    config.input = dict(
        data=dict(name=opts.data, split="train"),
        batch_size=opts.batch_size,
        shuffle_buffer_size=250_000 if not opts.runlocal else 50,
        pp=(
            f"decode|resize({opts.res})|value_range(-1, 1)|coco_captions(outkey='texts')|choice(key='texts')|"
            f"{pp_tokens}|keep('image', 'labels')"
        ),
    )
    config.total_steps = opts.total_steps
    config.log_training_steps = 50 if not opts.runlocal else 1
    config.ckpt_steps = 1000

    config.model_name = "two_towers"
    config.task = "image_text"
    config.loss = "sigmoid_chunked"
    size = opts.variant.split("/")[0]
    config.model = dict(
        image_model="vit",
        image=dict(variant=opts.variant, pool_type="map"),
        text_model="text_transformer",
        text=dict(variant=size, vocab_size=opts.vocab),
        temperature_init=10.0,
        bias_init=-10.0,
    )
    # The image embedding is the MAP head's output; the text one the last token's, projected to the
    # image width (big_vision's SigLIP checkpoints: img/ headless, txt/head).
    config.model.out_dim = (None, WIDTHS[size])

    config.optax_name = "scale_by_adam"
    config.optax = dict(b2=0.95)
    config.lr = 1e-3
    config.wd = 1e-4
    config.schedule = dict(decay_type="cosine", warmup_steps=max(int(0.05 * opts.total_steps), 1))
    config.grad_clip_norm = 1.0

    config.evals = dict(
        retrieval_coco=dict(
            type="retrieval",
            data=dict(name=opts.data, split="val" if not opts.runlocal else "val[:16]"),
            text_key="captions/text",
            pp_img=f"decode|resize({opts.res})|value_range(-1, 1)",
            pp_txt=pp_tokens,
            log_steps=1000 if not opts.runlocal else 2,
        )
    )
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    return config
