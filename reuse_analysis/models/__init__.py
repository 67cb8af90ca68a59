"""Models by name: the DenseNet family of the paper and the textbook's modern CNNs, in a
plain registry (timm style).

``create_model("densenet40", num_classes=100)`` is what ``--arch NAME`` resolves to;
``model_from_config(checkpoint["config"], arch=checkpoint["arch"])`` rebuilds a saved
model from its config alone. ``build_model_spec("pkg.module:function")`` calls a user's
own builder instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from reuse_analysis.models.densenet import (
    PAPER_PARAMS,
    DenseNet,
    DenseNetConfig,
    DenseNetParts,
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
from reuse_analysis.models.zoo import ZOO, ZooConfig

__all__ = [
    "MODELS",
    "PAPER_PARAMS",
    "ZOO",
    "DenseNet",
    "DenseNetConfig",
    "DenseNetParts",
    "ZooConfig",
    "build_model_spec",
    "config_class",
    "create_model",
    "get_config",
    "is_densenet",
    "list_models",
    "model_from_config",
]

# name → preset; each preset takes keyword overrides of its config's fields.
MODELS: dict[str, Callable[..., nn.Module]] = {
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
    # The textbook's modern CNNs (d2l.ai ch. 8), for 28–32-pixel images.
    **{name: preset for name, (preset, _, _) in ZOO.items()},
}


def list_models() -> list[str]:
    """Registered model names: the paper's DenseNets (CIFAR presets first), then the zoo."""
    return list(MODELS)


def is_densenet(name: str) -> bool:
    """Whether ``name`` is one of the paper's DenseNet presets (a :class:`DenseNetConfig`)."""
    return name in MODELS and name not in ZOO


def config_class(name: str | None) -> type[DenseNetConfig] | type[ZooConfig]:
    """The config class of a registered architecture; DenseNetConfig for the paper's
    presets and for checkpoints that name no architecture (all files before the zoo)."""
    if name in ZOO:
        return ZOO[name][1]
    return DenseNetConfig


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


def model_from_config(
    cfg: DenseNetConfig | ZooConfig | Mapping[str, Any], arch: str | None = None
) -> nn.Module:
    """Rebuild a model from a config, or from the dict a checkpoint stored (``to_dict()``)
    together with the architecture name stored beside it."""
    if isinstance(cfg, DenseNetConfig):
        return DenseNet(cfg)
    for _, config_cls, model_cls in ZOO.values():
        if type(cfg) is config_cls:
            return model_cls(cfg)
    config_cls = config_class(arch)
    config = config_cls.from_dict(cfg)
    if config_cls is DenseNetConfig:
        return DenseNet(config)
    return ZOO[arch][2](config)


def build_model_spec(spec: str) -> nn.Module:
    """Call a user's builder named ``module:function`` (no arguments) and return its model.

    Importing the module runs its code: the user asked for that by naming it. The current
    directory is searched first, as ``python -m`` would.
    """
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"{spec!r} is neither a registered model nor module:function")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for {spec!r} ({exc})") from None
    finally:
        if added:
            sys.path.remove(cwd)
    builder = module
    for part in func_name.split("."):
        builder = getattr(builder, part, None)
        if builder is None:
            raise ValueError(f"{module_name!r} has no {func_name!r} (from {spec!r})")
    if not callable(builder):
        raise ValueError(f"{spec} is not a function")
    try:
        model = builder()
    except Exception as exc:  # the user's code: say what it raised, in one line
        raise ValueError(f"{spec}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} did not return a torch.nn.Module but {type(model).__name__}")
    return model
