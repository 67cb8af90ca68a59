"""Every registered model described in one row: what ``reuse-analysis models`` lists.

Parameters are counted on the meta device, so describing DenseNet-264 allocates nothing.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any

import torch

from reuse_analysis.models import MODELS, PAPER_PARAMS, ZOO, create_model
from reuse_analysis.models.densenet import DenseNetConfig

#: Side of the images the CIFAR-style presets and the zoo are built for (28–32 pixels).
SMALL_INPUT = 32
#: Side of the images an ImageNet-stem DenseNet is built for (torchvision's crop).
IMAGENET_INPUT = 224


@dataclass(frozen=True)
class ModelEntry:
    """One registered model at its preset's defaults."""

    name: str  # the --arch value
    family: str  # "densenet" (the paper's presets) or "zoo" (the textbook's CNNs)
    description: str  # first line of the preset's docstring
    parameters: int  # weights and biases at the defaults (batch-norm buffers not counted)
    paper_parameters_m: float | None  # the paper's Table 1/2 count in millions, if it has one
    input_size: int  # default side of the square input image, in pixels
    in_channels: int
    num_classes: int
    config: dict[str, Any]  # the preset's config, as a checkpoint stores it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def input_size(config: Any) -> int:
    """The default input side for a model config: 224 behind an ImageNet stem, else 32."""
    if isinstance(config, DenseNetConfig) and config.stem == "imagenet":
        return IMAGENET_INPUT
    return SMALL_INPUT


def describe(name: str) -> ModelEntry:
    """The row of ``name`` (a key of :data:`reuse_analysis.models.MODELS`)."""
    with torch.device("meta"):
        model = create_model(name)
    config = model.config
    doc = inspect.getdoc(MODELS[name]) or ""
    return ModelEntry(
        name=name,
        family="zoo" if name in ZOO else "densenet",
        description=doc.splitlines()[0] if doc else "",
        parameters=sum(p.numel() for p in model.parameters()),
        paper_parameters_m=PAPER_PARAMS.get(name),
        input_size=input_size(config),
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        config=config.to_dict(),
    )


def catalog() -> list[ModelEntry]:
    """Every registered model, in registry order (the paper's DenseNets, then the zoo)."""
    return [describe(name) for name in MODELS]
