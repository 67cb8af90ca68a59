"""Models by name: the DenseNet family of the paper, in a plain registry (timm style).

``create_model("densenet40", num_classes=100)`` is what ``--arch NAME`` resolves to;
``model_from_config(checkpoint["config"])`` rebuilds a saved model from its config alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from reuse_analysis.models.densenet import (
    PAPER_PARAMS,
    DenseNet,
    DenseNetConfig,
    densenet40,
    densenet100_k12,
    densenet100_k24,
    densenet121,
    densenet161,
    densenet169,
    densenet201,
    densenet264,
    densenet_bc_100,
    densenet_bc_190,
    densenet_bc_250,
)

__all__ = [
    "MODELS",
    "PAPER_PARAMS",
    "DenseNet",
    "DenseNetConfig",
    "create_model",
    "get_config",
    "list_models",
    "model_from_config",
]

# name → preset; each preset takes keyword overrides of DenseNetConfig fields.
MODELS: dict[str, Callable[..., DenseNet]] = {
    "densenet40": densenet40,
    "densenet100_k12": densenet100_k12,
    "densenet100_k24": densenet100_k24,
    "densenet_bc_100": densenet_bc_100,
    "densenet_bc_250": densenet_bc_250,
    "densenet_bc_190": densenet_bc_190,
    "densenet121": densenet121,
    "densenet161": densenet161,
    "densenet169": densenet169,
    "densenet201": densenet201,
    "densenet264": densenet264,
}


def list_models() -> list[str]:
    """Registered model names, CIFAR presets first, in the paper's order."""
    return list(MODELS)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the preset ``name``; ``overrides`` replace config fields (e.g. ``num_classes``)."""
    try:
        preset = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None
    return preset(**overrides)


def get_config(name: str, **overrides: Any) -> DenseNetConfig:
    """The config ``create_model(name, **overrides)`` would use, without allocating weights."""
    # The presets hold the paper's numbers; building on the meta device reads them for free.
    with torch.device("meta"):
        return create_model(name, **overrides).config


def model_from_config(cfg: DenseNetConfig | Mapping[str, Any]) -> DenseNet:
    """Rebuild a model from a config or from the dict a checkpoint stored (``to_dict()``)."""
    if not isinstance(cfg, DenseNetConfig):
        cfg = DenseNetConfig.from_dict(cfg)
    return DenseNet(cfg)
