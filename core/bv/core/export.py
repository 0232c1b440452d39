"""``bv-export``: turn a training workdir's checkpoint into a Hub model folder, and optionally upload it.

    bv-export runs/vit_mnist out/vit_mnist                      # bv format: config.json, model.safetensors, README.md
    bv-export runs/vit_mnist out/vit_mnist --push org/vit-mnist # ... and upload it (token: HF_TOKEN or `hf auth login`)
    bv-export runs/vit_mnist out/timm --format timm             # a folder timm loads
    bv-export runs/vit_mnist out/ckpt.npz --format big_vision   # big_vision's .npz
    bv-export runs/vit_mnist out/vit_mnist_ema --ema            # the params' EMA (runs with config.ema)

The model card is filled from the run: model and data set from ``config.json``,
the final evaluation metrics from ``metrics.jsonl``, the inference
preprocessing from the first classification evaluator's pp string.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from bv.core import checkpoint, cli, registry
from bv.core.data import sources
from bv.core.errors import UserError
from bv.core.hub.card import Metric
from bv.core.hub.config import HubConfig
from bv.core.metrics_log import METRICS_FILE

log = logging.getLogger("bv.export")

_LABEL_OPS = ("onehot", "keep", "drop", "copy")
_SIZE_OPS = ("resize", "central_crop", "random_crop", "inception_crop", "decode_jpeg_and_inception_crop")
_METRIC_NAMES = {"prec@1": "accuracy"}
FORMATS = ("bv", "timm", "big_vision")


class ExportError(UserError, ValueError):
    """A workdir that cannot be exported; the message says why."""


def inference_pp(pp: str) -> tuple[str, int | None, int]:
    """``(pp without label ops, resolution, channels)`` from an evaluator's pp string."""
    kept: list[str] = []
    resolution: int | None = None
    channels = 3
    for op in (o.strip() for o in pp.split("|")):
        if not op:
            continue
        name, args, kwargs = registry.parse_call(op)
        if name in _LABEL_OPS:
            continue
        kept.append(op)
        if name == "decode":
            channels = int(kwargs.get("channels", args[0] if args else 3))
        size = args[0] if args else kwargs.get("size", kwargs.get("crop_size"))
        if name in _SIZE_OPS and size is not None:
            resolution = int(size if isinstance(size, int) else size[0])
    return "|".join(kept), resolution, channels


def final_metrics(workdir: str, dataset: str, *, ema: bool = False) -> list[Metric]:
    """The last logged value of each evaluator metric (``name/metric`` keys) in ``metrics.jsonl``.

    With ``ema``, those of the params' EMA (``ema/name/metric``) instead.
    """
    path = os.path.join(workdir, METRICS_FILE)
    last: dict[str, float] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                for key, value in record.items():
                    if key.startswith("ema/") != ema:
                        continue
                    key = key[len("ema/") :] if ema else key
                    if "/" in key and isinstance(value, (int, float)):
                        last[key] = float(value)
    metrics = []
    for key, value in sorted(last.items()):
        split, metric = key.split("/", 1)
        if metric in _METRIC_NAMES:
            metrics.append(Metric(_METRIC_NAMES[metric], value, dataset, split))
    return metrics


def _read_run_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ExportError(f"{workdir} has no config.json; expected a bv training workdir (written by bv-train).")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def _labels(config: ml_collections.ConfigDict) -> list[str] | None:
    """The class names of the training data set, when its builder knows them (cheap for TFDS)."""
    try:
        from bv.core.data import input_pipeline

        data = sources.parse_sources(config.input)[0].data  # A mixture's first source names the classes.
        builder = input_pipeline.get_builder(data["name"], data.get("data_dir"))
        feature = builder.info.features["label"]
        names = list(getattr(feature, "names", []) or [])
        return names or None
    except Exception as e:  # noqa: BLE001 - label names are optional; say why they are missing
        log.info("No label names for the model card (%s).", e)
        return None


def _exportable_hub_class(workdir: str, config: ml_collections.ConfigDict) -> Any:
    """The Hub class that writes the run's model, or an ExportError that says why there is none."""
    name = config.get("model_name")
    exportable = ", ".join(n for n in registry.hub_model_names() if hasattr(registry.hub_class(n), "config_from_run"))
    if not name:
        raise ExportError(
            f"The run in {workdir} (task {config.get('task', 'classification')!r}) names no config.model_name, so "
            f"bv export has no Hub model to write; it exports runs of these models: {exportable}. A project whose "
            "task trains another kind of model exports it itself (see the project's README)."
        )
    try:
        hub_cls = registry.hub_class(name)
    except registry.UnknownNameError as e:
        raise ExportError(f"The run's model {name!r} is not installed: {e}") from None
    if hub_cls is None or not hasattr(hub_cls, "config_from_run"):
        raise ExportError(
            f"The run's model {name!r} cannot be exported as a Hub folder (its Hub support only loads weights "
            f"into training, through config.model_init); bv export writes these models: {exportable}."
            + getattr(hub_cls, "export_hint", "")
        )
    return hub_cls


def build_model(
    workdir: str, *, checkpoint_path: str | None = None, ema: bool = False
) -> tuple[Any, list[Metric], list[str]]:
    """(the Hub model of the run's final checkpoint, its final metrics, its data sets).

    ``ema`` takes the EMA of the params (``config.ema``) instead of the params.
    """
    config = _read_run_config(workdir)
    hub_cls = _exportable_hub_class(workdir, config)
    name = config.get("model_name")
    ckpt = checkpoint_path or checkpoint.latest(workdir)
    if ckpt is None:
        raise ExportError(f"{workdir} has no complete checkpoint to export.")
    evals = [dict(e) for e in config.get("evals", {}).values() if e.get("type") == "classification"]
    pp_source = evals[0].get("pp_fn", "") if evals else config.input.get("pp", "")
    pp, resolution, channels = inference_pp(pp_source)
    datasets = [str(src.data["name"]) for src in sources.parse_sources(config.input)]
    dataset = datasets[0]  # A mixture's metrics are named after its first data set.
    step = checkpoint.read_metadata(ckpt)["step"]
    hub_config = HubConfig(
        model_name=name,
        model=config.get("model", ml_collections.ConfigDict()).to_dict(),
        num_classes=config.get("num_classes"),
        resolution=resolution or 224,
        channels=channels,
        pp=pp,
        labels=_labels(config),
        extra={"trained_steps": int(step), "dataset": ",".join(datasets)},
    )
    hub_config = hub_cls.config_from_run(hub_config, config)
    if ema and "ema" not in checkpoint.top_level_entries(ckpt):
        raise ExportError(f"{ckpt} holds no EMA of the params: the run did not set config.ema. Drop --ema.")
    params = checkpoint.load_params(ckpt, subtree="ema" if ema else "params")
    model = hub_cls(hub_config, params=params)
    return model, final_metrics(workdir, dataset, ema=ema), datasets


def check_out(workdir: str, out: str, fmt: str) -> None:
    """Refuses an ``out`` whose writing would destroy something: nothing is written before this passes.

    ``out`` may not be the workdir or lie inside it (the model's ``config.json`` would replace the
    run's, after which the workdir neither resumes nor exports). A folder format needs a new or empty
    folder, or one holding an earlier export; a ``.npz`` needs a new path or an earlier ``.npz``.
    """
    run, target = os.path.realpath(workdir), os.path.realpath(out)
    if target == run or target.startswith(run.rstrip(os.sep) + os.sep):
        raise ExportError(
            f"OUT {out!r} is {'the workdir' if target == run else 'inside the workdir'} {workdir!r}: the export "
            "would overwrite the run's own files (its config.json). Pass a folder outside the workdir, "
            f"e.g. {os.path.join(os.path.dirname(run) or '.', os.path.basename(run) + '_export')!r}."
        )
    if fmt == "big_vision":
        if os.path.isdir(target):
            raise ExportError(
                f"OUT {out!r} is a folder; --format big_vision writes one .npz file, e.g. {out}/model.npz."
            )
        if os.path.exists(target) and not target.endswith(".npz"):
            raise ExportError(f"OUT {out!r} is an existing file that is not a .npz; refusing to overwrite it.")
        return
    if os.path.exists(target) and not os.path.isdir(target):
        raise ExportError(
            f"OUT {out!r} is a file; --format {fmt} writes a folder (config.json, model.safetensors, README.md). "
            "Pass a new folder name."
        )
    if os.path.isdir(target) and os.listdir(target) and not _is_export(target):
        shown = sorted(os.listdir(target))
        raise ExportError(
            f"OUT {out!r} is a folder that holds other files ({', '.join(shown[:5])}{', ...' if len(shown) > 5 else ''}), "
            "not an earlier export: bv-export writes only into a new or empty folder, or over its own earlier "
            "export. Pass a new folder name."
        )


def _is_export(folder: str) -> bool:
    """Whether ``folder`` holds an earlier export (a bv or timm model folder), and no training run."""
    from bv.core.hub.config import read_json

    if os.path.exists(os.path.join(folder, METRICS_FILE)) or os.path.isdir(
        os.path.join(folder, checkpoint.CHECKPOINTS_DIR)
    ):
        return False
    try:
        data = read_json(os.path.join(folder, "config.json"))
    except (OSError, ValueError):
        return False
    return data.get("format") == "bv" or "architecture" in data


def export(
    workdir: str,
    out: str,
    *,
    fmt: str = "bv",
    checkpoint_path: str | None = None,
    push: str | None = None,
    private: bool | None = None,
    license: str | None = None,
    ema: bool = False,
) -> Any:
    """Writes the run's model to ``out`` in format ``fmt``; with ``push``, uploads the bv folder to that repo."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    if push and fmt != "bv":
        raise ExportError("--push uploads bv-format folders only; drop --format or --push.")
    _read_run_config(workdir)  # a workdir at all? (says so before anything about OUT)
    check_out(workdir, out, fmt)
    model, metrics, datasets = build_model(workdir, checkpoint_path=checkpoint_path, ema=ema)
    card = {"metrics": metrics, "datasets": datasets, "license": license}
    if fmt == "bv":
        model.save_pretrained(out, model_card_kwargs=card)
        if push:
            url = model.push_to_hub(push, private=private, model_card_kwargs=card)
            print(f"Uploaded to {url}")
    elif fmt == "timm":
        model.save_timm(out)
    else:
        model.save_big_vision(out)
    return model


def main(argv: Sequence[str] | None = None, *, prog: str = "bv-export") -> None:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a bv training workdir's checkpoint as a Hub model folder (or timm / big_vision files).",
    )
    parser.add_argument("workdir", help="the training workdir (with config.json and checkpoints/)")
    parser.add_argument("out", help="the folder to write (a .npz file for --format big_vision)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="bv")
    parser.add_argument("--checkpoint", help="a checkpoint folder to export instead of the workdir's latest")
    parser.add_argument("--push", metavar="REPO", help="also upload the folder to this Hub repo (e.g. org/name)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    parser.add_argument("--license", help="the license to put in the model card, e.g. apache-2.0")
    parser.add_argument("--ema", action="store_true", help="export the EMA of the params (runs with config.ema)")
    args = parser.parse_args(argv)
    # force: absl (imported with orbax) may already have put its handler on the root logger.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout, force=True
    )
    with cli.user_errors(prog):
        export(
            args.workdir,
            args.out,
            fmt=args.fmt,
            checkpoint_path=args.checkpoint,
            push=args.push,
            private=args.private,
            license=args.license,
            ema=args.ema,
        )
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
