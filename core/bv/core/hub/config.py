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

from bv.core.errors import UserError

FORMAT = "bv"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
# The config.json key that records each weights file's sha256, checked on every load.
WEIGHTS_SHA256 = "weights_sha256"


class ConfigFormatError(UserError, ValueError):
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
        check_fields(data, source)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and (v is not None or k == "num_classes")})

    def replace(self, **changes: Any) -> HubConfig:
        return dataclasses.replace(self, **changes)


def check_fields(data: Mapping[str, Any], source: str) -> None:
    """Checks the fields of ``data`` that it has (num_classes, resolution, channels, labels).

    ``source`` names where they come from: a config.json, or ``from_pretrained(...)``'s arguments.
    """
    num_classes = data.get("num_classes")
    if num_classes is not None and (not _is_int(num_classes) or num_classes < 0):
        raise ConfigFormatError(
            f"{source}: num_classes must be a whole number >= 0 (or None for no head), got {num_classes!r}."
        )
    if "resolution" in data and (not _is_int(data["resolution"]) or data["resolution"] <= 0):
        raise ConfigFormatError(
            f"{source}: resolution must be a positive whole number of pixels, such as 224; got {data['resolution']!r}."
        )
    if "channels" in data and (not _is_int(data["channels"]) or data["channels"] <= 0):
        raise ConfigFormatError(f"{source}: channels must be a positive whole number, got {data['channels']!r}.")
    labels = data.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise ConfigFormatError(f"{source}: labels must be a list of strings or null.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def write_config(path: str, config: HubConfig, *, weights_sha256: Mapping[str, str] | None = None) -> None:
    """Writes ``config.json``; ``weights_sha256`` (file name -> sha256) lets a load detect damaged weights."""
    data = config.to_json()
    if weights_sha256:
        data[WEIGHTS_SHA256] = dict(weights_sha256)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
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
