"""``config.json`` of a bv model folder: what to build and how to feed it.

    {"format": "bv", "format_version": 1, "model_name": "vit",
     "model": {"variant": "B/16", "pool_type": "gap"}, "num_classes": 1000,
     "resolution": 224, "pp": "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)",
     "labels": ["tench", ...], "package": "bv-vit", "version": "0.1.0"}

``model`` holds the keyword arguments of the registered model factory
(``bv.core.registry.models``); ``pp`` is the bv preprocessing string that turns
an encoded image into the model's input; ``labels`` names the classes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

FORMAT = "bv"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


class ConfigFormatError(ValueError):
    """A config.json that is not a model config bv can use."""


@dataclasses.dataclass
class HubConfig:
    """The JSON-serialisable description of a published model."""

    model_name: str
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_classes: int | None = None
    resolution: int = 224
    channels: int = 3
    pp: str = ""
    labels: list[str] | None = None
    package: str = ""
    version: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # provenance, metrics, ...

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        out.update(dataclasses.asdict(self))
        out["model"] = _jsonable(self.model)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, source: str = "config.json") -> HubConfig:
        if not isinstance(data, Mapping):
            raise ConfigFormatError(f"{source} must hold a JSON object, got {type(data).__name__}.")
        if data.get("format") != FORMAT:
            raise ConfigFormatError(f'{source} is not a bv model config (it has no "format": "bv" entry).')
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigFormatError(
                f"{source} has format_version {version!r}; this bv-core reads up to {FORMAT_VERSION}. "
                "Upgrade bv-core to load it."
            )
        if not isinstance(data.get("model_name"), str) or not data["model_name"]:
            raise ConfigFormatError(f"{source} has no model_name (expected a registered model name such as 'vit').")
        if not isinstance(data.get("model", {}), Mapping):
            raise ConfigFormatError(f"{source}: 'model' must be an object of model keyword arguments.")
        num_classes = data.get("num_classes")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
            raise ConfigFormatError(
                f"{source}: num_classes must be a non-negative integer or null, got {num_classes!r}."
            )
        resolution = data.get("resolution", 224)
        if not isinstance(resolution, int) or resolution <= 0:
            raise ConfigFormatError(f"{source}: resolution must be a positive integer, got {resolution!r}.")
        channels = data.get("channels", 3)
        if not isinstance(channels, int) or channels <= 0:
            raise ConfigFormatError(f"{source}: channels must be a positive integer, got {channels!r}.")
        labels = data.get("labels")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
            raise ConfigFormatError(f"{source}: labels must be a list of strings or null.")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and (v is not None or k == "num_classes")})

    def replace(self, **changes: Any) -> HubConfig:
        return dataclasses.replace(self, **changes)


def write_config(path: str, config: HubConfig) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: str) -> dict[str, Any]:
    """A JSON object from ``path`` with a clear error for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigFormatError(f"{path} is not valid JSON: {e}.") from e
    if not isinstance(data, dict):
        raise ConfigFormatError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def _jsonable(value: Any) -> Any:
    """Tuples become lists and numpy scalars numbers, so the config survives a JSON round trip."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
