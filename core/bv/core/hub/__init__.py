"""Hub-native models: ``from_pretrained``, ``save_pretrained`` and ``push_to_hub`` for every bv model.

A model package subclasses :class:`PretrainedModel`; see ``bv.core.hub.model``.
"""

from bv.core.hub.card import Metric, make_card
from bv.core.hub.config import ConfigFormatError, HubConfig
from bv.core.hub.fit import ParamsMismatchError, fit_params
from bv.core.hub.model import PretrainedModel, SaveError, load_model
from bv.core.hub.source import SourceError
from bv.core.hub.weights import WeightsError, read_weights, write_weights

__all__ = [
    "ConfigFormatError",
    "HubConfig",
    "Metric",
    "ParamsMismatchError",
    "PretrainedModel",
    "SaveError",
    "SourceError",
    "WeightsError",
    "fit_params",
    "load_model",
    "make_card",
    "read_weights",
    "write_weights",
]
