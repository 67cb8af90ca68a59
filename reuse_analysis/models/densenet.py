"""DenseNet (Huang et al., "Densely Connected Convolutional Networks", 2017) and its presets.

Module names are exactly torchvision's (``features.denseblock1.denselayer1.conv1`` …)
because they become checkpoint keys: a torchvision state_dict loads into the matching
preset with ``strict=True``. On top of torchvision this adds what the paper's CIFAR
models need: the 3×3 CIFAR stem, plain layers without a bottleneck (DenseNet / -C),
a compression factor θ other than 0.5, and dropout where the paper puts it.

The model keeps its :class:`DenseNetConfig` as ``model.config``; ``config.to_dict()`` is
what a checkpoint stores so that a later command can rebuild the model from the file alone.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from reuse_analysis.models import _efficient

STEMS: tuple[str, ...] = ("cifar", "imagenet")


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DenseNetConfig:
    """Everything needed to rebuild a DenseNet; saved inside every checkpoint."""

    growth_rate: int  # k: channels each layer adds to the concatenation
    block_config: tuple[int, ...]  # layers per dense block, e.g. (12, 12, 12) for DenseNet-40
    num_init_features: int  # channels out of the stem: 16 (plain CIFAR) or 2k (BC, ImageNet)
    bn_size: int  # bottleneck width = bn_size·k (DenseNet-B); 0 = no bottleneck (plain, -C)
    compression: float  # θ: a transition keeps floor(θ·channels); 1.0 = no compression
    drop_rate: float = 0.0  # dropout after every conv but the stem's (paper §4.2: 0.2 without aug.)
    num_classes: int = 10  # classifier outputs
    in_channels: int = 3  # image channels (1 for grayscale)
    stem: str = "cifar"  # "cifar": 3×3 conv; "imagenet": 7×7/2 conv, BN, ReLU, 3×3/2 max-pool
    memory_efficient: bool = False  # recompute each bottleneck conv in backward: less memory

    def __post_init__(self) -> None:
        # Accept a list (JSON has no tuples) but store a tuple so the config stays hashable.
        if isinstance(self.block_config, list):
            object.__setattr__(self, "block_config", tuple(self.block_config))
        for name in ("compression", "drop_rate"):
            value = getattr(self, name)
            if _is_int(value):
                object.__setattr__(self, name, float(value))
        self._validate()

    def _validate(self) -> None:
        for name in ("growth_rate", "num_init_features", "num_classes", "in_channels"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("bn_size", self.bn_size, minimum=0)
        if not isinstance(self.block_config, tuple) or not self.block_config:
            raise ValueError(
                f"block_config must be a non-empty sequence of layer counts, "
                f"got {self.block_config!r}"
            )
        for count in self.block_config:
            _check_int("each entry of block_config", count, minimum=1)
        if not isinstance(self.compression, float) or not 0.0 < self.compression <= 1.0:
            raise ValueError(
                f"compression (θ) must be a number in (0, 1], got {self.compression!r}"
            )
        if not isinstance(self.drop_rate, float) or not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be a number in [0, 1), got {self.drop_rate!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if not isinstance(self.memory_efficient, bool):
            raise ValueError(
                f"memory_efficient must be True or False, got {self.memory_efficient!r}"
            )
        _block_widths(self)  # raises if a transition would compress a block to nothing

    @property
    def variant(self) -> str:
        """The paper's name for the layer type: "plain", "B" (bottleneck), "C" (θ<1) or "BC"."""
        tag = ("B" if self.bn_size > 0 else "") + ("C" if self.compression < 1.0 else "")
        return tag or "plain"

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only (block_config as a list), so it survives JSON and
        ``torch.load(weights_only=True)``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["block_config"] = list(self.block_config)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DenseNetConfig:
        """Rebuild a config saved by :meth:`to_dict`; unknown or missing keys are errors so
        that a checkpoint from a different model is not silently misread."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(
                f"unknown DenseNetConfig field(s): {', '.join(unknown)}; "
                f"known fields: {', '.join(known)}"
            )
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if name not in d]
        if missing:
            raise ValueError(f"DenseNetConfig is missing required field(s): {', '.join(missing)}")
        return cls(**d)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _transition_width(in_channels: int, compression: float) -> int:
    """Channels a transition keeps: floor(θ·m), as in the paper and torchvision (m // 2)."""
    return math.floor(compression * in_channels)


def _block_widths(config: DenseNetConfig) -> list[tuple[int, int]]:
    """(input, output) channels of every dense block, in order."""
    widths = []
    channels = config.num_init_features
    for b, num_layers in enumerate(config.block_config, start=1):
        out = channels + num_layers * config.growth_rate
        widths.append((channels, out))
        channels = _transition_width(out, config.compression)
        if b < len(config.block_config) and channels < 1:
            raise ValueError(
                f"compression {config.compression} leaves transition{b} with no channels "
                f"(it reads {out}); use a larger compression"
            )
    return widths


# ----------------------------------------------------------------------------- building blocks
def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class _DenseLayer(nn.Module):
    """One layer: BN-ReLU-Conv(1×1, bn_size·k)-BN-ReLU-Conv(3×3, k) with a bottleneck,
    BN-ReLU-Conv(3×3, k) without one (then only ``norm1/relu1/conv1`` exist)."""

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.bottleneck = bn_size > 0
        width, kernel = (bn_size * growth_rate, 1) if self.bottleneck else (growth_rate, 3)
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(
            num_input_features, width, kernel_size=kernel, padding=kernel // 2, bias=False
        )
        self.drop1 = _dropout(drop_rate)
        if self.bottleneck:
            self.norm2 = nn.BatchNorm2d(width)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)
            self.drop2 = _dropout(drop_rate)
        self.memory_efficient = memory_efficient

    def _first_conv(self, *inputs: Tensor) -> Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def _recomputed_first_conv(self, *inputs: Tensor) -> Tensor:
        """The same output as :meth:`_first_conv`, but leaving norm1's running stats alone."""
        norm = self.norm1
        x = F.batch_norm(
            torch.cat(inputs, 1),
            norm.running_mean,
            norm.running_var,
            norm.weight,
            norm.bias,
            training=norm.training,
            momentum=0.0,  # running ← 1·running + 0·batch: unchanged
            eps=norm.eps,
        )
        return self.conv1(self.relu1(x))

    def _checkpointed_first_conv(self, inputs: list[Tensor]) -> Tensor:
        # The concatenation and first conv are cheap to redo but their outputs are the widest
        # tensors in the layer: recompute them in backward instead of storing them. The
        # recomputation must not update norm1's running stats a second time (torchvision's
        # memory-efficient DenseNet does, so its statistics drift from the normal path's).
        calls = 0

        def run(*xs: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            return self._first_conv(*xs) if calls == 1 else self._recomputed_first_conv(*xs)

        return cp.checkpoint(run, *inputs, use_reentrant=False)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        """Read the block's features so far (oldest first) and return the ``k`` new channels."""
        # isinstance: under torch.fx tracing the inputs are proxies, which take the plain path.
        if self.memory_efficient and any(isinstance(t, Tensor) and t.requires_grad for t in inputs):
            out = self._checkpointed_first_conv(inputs)
        else:
            out = self._first_conv(*inputs)
        out = self.drop1(out)
        if self.bottleneck:
            out = self.drop2(self.conv2(self.relu2(self.norm2(out))))
        return out


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; layer t reads cat([x0, …, x_{t-1}]), the block returns
    cat([x0, …, x_L]).

    By default (``fused = True``) the block runs as one fused operation over a shared
    channels-last buffer (:mod:`reuse_analysis.models._efficient`): no concatenations,
    memory linear in depth, the same numbers. It runs layer by layer instead where the fused
    path does not apply: dropout while training, autocast, gradients in eval mode, hooks on
    a layer, ``torch.compile`` or FX tracing, or ``fused = False``.
    """

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.memory_efficient = memory_efficient
        self.fused = True
        for i in range(num_layers):
            layer = _DenseLayer(
                num_input_features + i * growth_rate,
                growth_rate=growth_rate,
                bn_size=bn_size,
                drop_rate=drop_rate,
                memory_efficient=memory_efficient,
            )
            self.add_module(f"denselayer{i + 1}", layer)

    def _can_fuse(self, layers: list[nn.Module], x: Tensor) -> bool:
        if not self.fused or not isinstance(x, Tensor) or torch.compiler.is_compiling():
            return False
        return _unhooked(*layers) and _efficient.supports(layers, x)

    def forward(self, init_features: Tensor) -> Tensor:
        layers = list(self.values())
        if self._can_fuse(layers, init_features):
            return _efficient.dense_block(init_features, layers, self.memory_efficient)
        features = [init_features]
        for layer in layers:
            features.append(layer(features))
        return torch.cat(features, 1)


def _hooks(m: nn.Module) -> tuple[dict, ...]:
    return m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks


def _unhooked(*modules: nn.Module) -> bool:
    """Whether no hook, global or on ``modules`` and their submodules, expects each
    submodule to be called (a fused path calls none of them)."""
    hooked = [
        nn.modules.module._global_forward_hooks,
        nn.modules.module._global_forward_pre_hooks,
    ]
    hooked += [h for module in modules for m in module.modules() for h in _hooks(m)]
    return not any(hooked)


def _norm_relu(norm: nn.BatchNorm2d, relu: nn.Module, x: Tensor) -> Tensor:
    """``relu(norm(x))``, fused where :func:`_efficient.norm_relu` can and no hook is on
    ``norm`` or ``relu``."""
    if _unhooked(norm, relu):
        return _efficient.norm_relu(x, norm)
    return relu(norm(x))


class _Transition(nn.Sequential):
    """BN-ReLU-Conv(1×1, compress)-[Dropout]-AvgPool(2×2) between two dense blocks."""

    def __init__(
        self, num_input_features: int, num_output_features: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False)
        self.drop = _dropout(drop_rate)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.drop(self.conv(_norm_relu(self.norm, self.relu, x))))


def _feature_info(
    config: DenseNetConfig, stem: list[str], widths: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """What the model is made of, forward order, timm style: per part its module name, role
    (``stem``, ``block``, ``transition``, ``head_norm``, ``classifier``), output channels
    and the factor by which the resolution has been reduced there."""
    reduction = 4 if config.stem == "imagenet" else 1
    info = [
        {"module": f"features.{n}", "kind": "stem", "num_chs": config.num_init_features,
         "reduction": reduction}
        for n in stem
    ]  # fmt: skip
    for b, (_, out_width) in enumerate(widths, start=1):
        info.append(
            {"module": f"features.denseblock{b}", "kind": "block", "num_chs": out_width,
             "reduction": reduction}
        )  # fmt: skip
        if b < len(widths):
            reduction *= 2
            info.append(
                {"module": f"features.transition{b}", "kind": "transition",
                 "num_chs": _transition_width(out_width, config.compression),
                 "reduction": reduction}
            )  # fmt: skip
    info.append(
        {"module": "features.norm5", "kind": "head_norm", "num_chs": widths[-1][1],
         "reduction": reduction}
    )  # fmt: skip
    info.append(
        {"module": "classifier", "kind": "classifier", "num_chs": config.num_classes,
         "reduction": None}
    )  # fmt: skip
    return info


def _stem(config: DenseNetConfig) -> list[tuple[str, nn.Module]]:
    width = config.num_init_features
    if config.stem == "cifar":
        return [("conv0", nn.Conv2d(config.in_channels, width, 3, padding=1, bias=False))]
    return [
        ("conv0", nn.Conv2d(config.in_channels, width, 7, stride=2, padding=3, bias=False)),
        ("norm0", nn.BatchNorm2d(width)),
        ("relu0", nn.ReLU(inplace=True)),
        ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
    ]


# ----------------------------------------------------------------------------- model
def global_pool(a: Tensor) -> Tensor:
    """Global average pooling to ``[N, C, 1, 1]`` (the DenseNet head's)."""
    return F.adaptive_avg_pool2d(a, 1)


@dataclass(frozen=True)
class DenseNetParts:
    """The modules of a :class:`DenseNet` in forward order, for code that runs it piece by
    piece (the data-driven metrics) without knowing its module names."""

    stem: tuple[nn.Module, ...]  # everything before block 1
    blocks: tuple[nn.ModuleDict, ...]  # each block's layers, in order
    transitions: tuple[nn.Module | None, ...]  # after each block; None after the last
    head_norm: nn.BatchNorm2d  # the norm in front of the classifier (``norm5``)
    classifier: nn.Linear  # the head's first Linear: it reads the last block's features
    #: pools the rectified ``head_norm`` output to what ``classifier`` reads, before it is
    #: flattened: global average pooling, or (a rebuilt head) an h×w map
    pool: Callable[[Tensor], Tensor] = global_pool
    positions: int = 1  # features per channel that ``classifier`` reads (h·w of the map)
    #: what follows ``classifier`` (the rest of an MLP head); identity for one Linear
    head_rest: nn.Module = field(default_factory=nn.Identity)


def parts_from_feature_info(model: nn.Module, **head: Any) -> DenseNetParts:
    """A model's modules by role, found through its ``feature_info`` (see
    :func:`_feature_info`); ``head`` sets the head's ``pool``, ``positions``, ``head_rest``."""
    by_kind: dict[str, list[nn.Module]] = {}
    for info in model.feature_info:
        by_kind.setdefault(info["kind"], []).append(model.get_submodule(info["module"]))
    blocks = tuple(by_kind["block"])
    transitions = tuple(by_kind.get("transition", []))
    return DenseNetParts(
        stem=tuple(by_kind["stem"]),
        blocks=blocks,  # type: ignore[arg-type]
        transitions=transitions + (None,) * (len(blocks) - len(transitions)),
        head_norm=by_kind["head_norm"][0],  # type: ignore[arg-type]
        classifier=by_kind["classifier"][0],  # type: ignore[arg-type]
        **head,
    )


class DenseNet(nn.Module):
    """A DenseNet, DenseNet-B, -C or -BC built from a :class:`DenseNetConfig`.

    Layout and parameter names follow torchvision: ``features`` (stem, ``denseblock{b}``
    with ``denselayer{l}``, ``transition{b}``, ``norm5``) then ``classifier``. One deliberate
    difference: with ``drop_rate > 0`` dropout follows every convolution but the stem's, as
    in the paper (§4.2), where torchvision drops only each layer's output. Dropout has no
    parameters, so checkpoints are interchangeable either way.

    Speed and memory: each dense block runs fused over one shared channels-last buffer (see
    ``_DenseBlock``), which stores the block's output plus each layer's ``4k``-channel
    bottleneck output for backward, where torchvision's layers store every concatenation
    twice (memory quadratic in depth). ``memory_efficient=True`` stores only the block's
    output and recomputes the bottleneck convs in backward (one more 1×1 conv per layer).
    Where the fused path does not apply (dropout while training, autocast …) layers run one
    by one, and ``memory_efficient=True`` then checkpoints each layer's first conv instead.
    All paths give the same outputs, gradients and BN running statistics up to float
    rounding. ``model.to(memory_format=torch.channels_last)`` with channels-last inputs is
    the fastest layout on CPU (the fused blocks are channels-last inside either way).
    """

    def __init__(self, config: DenseNetConfig) -> None:
        super().__init__()
        self.config = config
        stem = _stem(config)
        self.features = nn.Sequential(OrderedDict(stem))
        widths = _block_widths(config)
        for b, (num_layers, (in_width, out_width)) in enumerate(
            zip(config.block_config, widths, strict=True), start=1
        ):
            block = _DenseBlock(
                num_layers=num_layers,
                num_input_features=in_width,
                bn_size=config.bn_size,
                growth_rate=config.growth_rate,
                drop_rate=config.drop_rate,
                memory_efficient=config.memory_efficient,
            )
            self.features.add_module(f"denseblock{b}", block)
            if b < len(widths):
                trans = _Transition(
                    out_width, _transition_width(out_width, config.compression), config.drop_rate
                )
                self.features.add_module(f"transition{b}", trans)
        num_features = widths[-1][1]
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, config.num_classes)
        self.feature_info = _feature_info(config, [name for name, _ in stem], widths)
        self._init_weights()

    def parts(self) -> DenseNetParts:
        """The model's modules by role, found through :attr:`feature_info`."""
        return parts_from_feature_info(self)

    def _init_weights(self) -> None:
        """torchvision's initialisation (He-normal convs, BN at identity, zero Linear bias)."""
        if self.classifier.weight.is_meta:
            return  # nothing to fill; skipping keeps shape-only builds (param counts) fast
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        if _unhooked(self.features):
            # The modules one by one, so that norm5 and the ReLU after it can run fused.
            *body, norm5 = self.features.children()
            for module in body:
                x = module(x)
            out = _efficient.norm_relu(x, norm5)
        else:
            out = F.relu(self.features(x), inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


# ----------------------------------------------------------------------------- presets
def _densenet(overrides: Mapping[str, Any], **paper: Any) -> DenseNet:
    """Build a preset from the paper's numbers; the caller's overrides win."""
    return DenseNet(DenseNetConfig.from_dict({**paper, **overrides}))


_CIFAR_PLAIN: dict[str, Any] = {"bn_size": 0, "compression": 1.0, "stem": "cifar"}
_CIFAR_BC: dict[str, Any] = {"bn_size": 4, "compression": 0.5, "stem": "cifar"}
_IMAGENET: dict[str, Any] = {
    "bn_size": 4,
    "compression": 0.5,
    "stem": "imagenet",
    "num_classes": 1000,
}


def densenet40(**overrides: Any) -> DenseNet:
    """DenseNet (L=40, k=12), the model of the paper's Figure 5."""
    return _densenet(
        overrides, growth_rate=12, block_config=(12,) * 3, num_init_features=16, **_CIFAR_PLAIN
    )


def densenet100_k12(**overrides: Any) -> DenseNet:
    """DenseNet (L=100, k=12) for CIFAR/SVHN."""
    return _densenet(
        overrides, growth_rate=12, block_config=(32,) * 3, num_init_features=16, **_CIFAR_PLAIN
    )


def densenet100_k24(**overrides: Any) -> DenseNet:
    """DenseNet (L=100, k=24) for CIFAR/SVHN."""
    return _densenet(
        overrides, growth_rate=24, block_config=(32,) * 3, num_init_features=16, **_CIFAR_PLAIN
    )


def densenet_bc_100(**overrides: Any) -> DenseNet:
    """DenseNet-BC (L=100, k=12) for CIFAR/SVHN."""
    return _densenet(
        overrides, growth_rate=12, block_config=(16,) * 3, num_init_features=24, **_CIFAR_BC
    )


def densenet_bc_250(**overrides: Any) -> DenseNet:
    """DenseNet-BC (L=250, k=24) for CIFAR/SVHN."""
    return _densenet(
        overrides, growth_rate=24, block_config=(41,) * 3, num_init_features=48, **_CIFAR_BC
    )


def densenet_bc_190(**overrides: Any) -> DenseNet:
    """DenseNet-BC (L=190, k=40), the paper's best CIFAR model."""
    return _densenet(
        overrides, growth_rate=40, block_config=(31,) * 3, num_init_features=80, **_CIFAR_BC
    )


def densenet121(**overrides: Any) -> DenseNet:
    """DenseNet-121 (k=32) for ImageNet; loads torchvision's weights."""
    return _densenet(
        overrides, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, **_IMAGENET
    )


def densenet161(**overrides: Any) -> DenseNet:
    """DenseNet-161 (k=48) for ImageNet; loads torchvision's weights."""
    return _densenet(
        overrides, growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96, **_IMAGENET
    )


def densenet169(**overrides: Any) -> DenseNet:
    """DenseNet-169 (k=32) for ImageNet; loads torchvision's weights."""
    return _densenet(
        overrides, growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64, **_IMAGENET
    )


def densenet201(**overrides: Any) -> DenseNet:
    """DenseNet-201 (k=32) for ImageNet; loads torchvision's weights."""
    return _densenet(
        overrides, growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64, **_IMAGENET
    )


def densenet264(**overrides: Any) -> DenseNet:
    """DenseNet-264 (k=32) for ImageNet (not in torchvision)."""
    return _densenet(
        overrides, growth_rate=32, block_config=(6, 12, 64, 48), num_init_features=64, **_IMAGENET
    )


# Parameters in millions as published (paper Table 2 for CIFAR at 10 classes; ImageNet
# models at 1000 classes), for tests and documentation.
PAPER_PARAMS: dict[str, float] = {
    "densenet40": 1.0,
    "densenet100_k12": 7.0,
    "densenet100_k24": 27.2,
    "densenet_bc_100": 0.8,
    "densenet_bc_250": 15.3,
    "densenet_bc_190": 25.6,
    "densenet121": 8.0,
    "densenet161": 28.7,
    "densenet169": 14.1,
    "densenet201": 20.0,
    "densenet264": 33.3,
}
