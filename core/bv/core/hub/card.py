"""The ``README.md`` model card of a bv model folder: YAML metadata the Hub indexes, then usage."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from bv.core.hub.config import HubConfig

_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ description }}

## Use it

```python
# pip install {{ package }}
from {{ module }} import {{ class_name }}

model = {{ class_name }}.from_pretrained("{{ repo_id }}")
logits = model(images)  # images: float32 [batch, {{ resolution }}, {{ resolution }}, channels], preprocessed as below
```

Preprocessing (a bv pp string, from an encoded image to the model's input):
`{{ pp }}`

{{ results }}
## Format

`config.json` says what to build (model `{{ model_name }}` with its keyword arguments, classes, resolution,
preprocessing, labels); `model.safetensors` holds the Flax parameters under their `/`-joined names.
Produced by {{ package }} {{ version }}.
"""


@dataclasses.dataclass
class Metric:
    """One evaluation result for the card's ``model-index``."""

    name: str  # e.g. "accuracy"
    value: float
    dataset: str  # e.g. "mnist5k"
    split: str = "test"


def make_card(
    config: HubConfig,
    *,
    class_name: str,
    module: str,
    repo_id: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] = (),
    tags: Sequence[str] = (),
    metrics: Sequence[Metric] = (),
    pipeline_tag: str | None = "image-classification",
    description: str = "",
) -> ModelCard:
    """A model card whose front matter has library_name, tags, license, datasets, pipeline_tag and metrics."""
    title = repo_id.split("/")[-1] if repo_id else f"{config.model_name} ({config.package})"
    data = ModelCardData(
        library_name="bv",
        license=license,
        datasets=list(datasets) or None,
        pipeline_tag=pipeline_tag if config.num_classes else "image-feature-extraction",
        tags=sorted({"bv", "jax", "flax", "safetensors", config.model_name, *tags}),
        model_name=title if metrics else None,
        eval_results=[
            EvalResult(
                task_type=pipeline_tag or "image-classification",
                dataset_type=m.dataset,
                dataset_name=m.dataset,
                dataset_split=m.split,
                metric_type=m.name,
                metric_value=float(m.value),
            )
            for m in metrics
        ]
        or None,
    )
    results = ""
    if metrics:
        rows = "\n".join(f"| {m.dataset} | {m.split} | {m.name} | {m.value:.4f} |" for m in metrics)
        results = f"## Results\n\n| dataset | split | metric | value |\n|---|---|---|---|\n{rows}\n"
    return ModelCard.from_template(
        data,
        template_str=_TEMPLATE,
        title=title,
        description=description
        or f"A `{config.model_name}` model ({_describe(config)}) for bv, the JAX/Flax big_vision rebuild.",
        package=config.package or "bv-core",
        module=module,
        class_name=class_name,
        repo_id=repo_id or "path/to/this/folder",
        resolution=config.resolution,
        pp=config.pp or "(not recorded)",
        results=results,
        model_name=config.model_name,
        version=config.version or "?",
    )


def _describe(config: HubConfig) -> str:
    parts = [f"{k}={v}" for k, v in sorted(config.model.items())]
    parts.append(f"{config.num_classes} classes" if config.num_classes else "no classifier head")
    return ", ".join(parts)
