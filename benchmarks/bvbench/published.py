"""timm's published throughput figures, for the GPU section of the suite."""

from __future__ import annotations

from typing import Any

# timm's own published throughput of vit_base_patch16_224 (huggingface/pytorch-image-models,
# results/*.csv at commit aa4b5850c154, read for this suite): the device, what was measured, batch, img/s.
TIMM_PUBLISHED: list[dict[str, Any]] = [
    {
        "device": "RTX 3090",
        "mode": "train",
        "precision": "AMP (fp16), PyTorch 1.12",
        "batch_size": 192,
        "img_s": 390.86,
        "source": "results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv",
    },
    {
        "device": "RTX 4090",
        "mode": "infer",
        "precision": "AMP (fp16), PyTorch 2.9.1",
        "batch_size": 1024,
        "img_s": 2992.79,
        "source": "results/benchmark-infer-amp-nchw-pt291-cu128-4090.csv",
    },
    {
        "device": "RTX 5090",
        "mode": "infer",
        "precision": "AMP (fp16), PyTorch 2.9.1",
        "batch_size": 1024,
        "img_s": 3915.56,
        "source": "results/benchmark-infer-amp-nchw-pt291-cu130-5090.csv",
    },
    {
        "device": "RTX PRO 6000 Max-Q",
        "mode": "infer",
        "precision": "bf16, PyTorch 2.9.1, torch.compile",
        "batch_size": 2048,
        "img_s": 5059.16,
        "source": "results/benchmark-infer-bf16-nchw-pt291-cu130-pro6000maxq-dynamo.csv",
    },
]
