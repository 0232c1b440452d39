"""The training sources named by ``config.input``: one data set, or a weighted mixture.

Only reads the config (no data is opened); ``bv.core.data.mixture`` streams the sources.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from bv.core.config import ConfigError


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One data set of the training input: its name in the config, data config, pp and weight."""

    name: str
    data: Mapping[str, Any]
    pp: str | None
    weight: float


def parse_sources(input_cfg: Mapping[str, Any]) -> list[SourceConfig]:
    """The training sources of ``config.input``: one for ``data=dict(name=...)``, several for a mixture.

    A mixture is ``data={source: weight, ...}``; each source's settings are ``input[source]``
    with ``data=dict(name=..., split=...)`` and optionally its own ``pp`` (default ``input.pp``).
    """
    if hasattr(input_cfg, "to_dict"):  # an ml_collections ConfigDict
        input_cfg = input_cfg.to_dict()
    data = input_cfg.get("data")
    default_pp = input_cfg.get("pp")
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(
            "config.input.data must be dict(name=..., split=...) for one data set, or {source: weight, ...} "
            f"for a mixture; got {data!r}."
        )
    if "name" in data:
        return [SourceConfig(str(data["name"]), data, default_pp, 1.0)]
    sources = []
    for name, weight in data.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(
                f"config.input.data[{name!r}] = {weight!r}: a mixture maps each source to a weight (a number >= 0). "
                "For a single data set write data=dict(name=..., split=...)."
            )
        source = input_cfg.get(name)
        if not isinstance(source, Mapping) or not isinstance(source.get("data"), Mapping):
            raise ConfigError(
                f"Mixture source {name!r} has no settings: expected config.input.{name} = "
                "dict(data=dict(name=..., split=...), pp=...) (pp is optional and defaults to config.input.pp)."
            )
        if "name" not in source["data"] or "split" not in source["data"]:
            raise ConfigError(f"config.input.{name}.data needs both a name and a split, got {dict(source['data'])!r}.")
        pp = source.get("pp", default_pp)
        if not pp:
            raise ConfigError(f"Mixture source {name!r} has no pp: set config.input.{name}.pp or config.input.pp.")
        if weight > 0:
            sources.append(SourceConfig(name, source["data"], pp, float(weight)))
    if not sources:
        raise ConfigError(f"Every weight of the mixture config.input.data is 0: {dict(data)!r}.")
    return sources
