"""The textbook's modern CNNs, sized for small images: AlexNet, VGG-11, NiN, GoogLeNet,
ResNet-18 and the plain DenseNet of *Dive into Deep Learning* (d2l.ai), chapter 8.

The book trains them on Fashion-MNIST resized to 224 (AlexNet, VGG) or 96 pixels. Here
they take 28×28 and 32×32 images directly, with 1 or 3 channels and any number of
classes: stems lose their large strides, pools that would shrink a 28-pixel image to
nothing are rounded up or made adaptive, and every network ends in a fixed-size pooling
before its head. Each class docstring lists what changed against the book.

Every model keeps a small frozen config as ``model.config`` (like
:class:`~reuse_analysis.models.densenet.DenseNetConfig`); ``config.to_dict()`` is what a
checkpoint stores and ``Config.from_dict`` rebuilds it, so later commands rebuild the
model from the file alone. Module names avoid a single top-level ``net``/``model``
attribute, which checkpoint loading would take for a wrapper prefix.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ----------------------------------------------------------------------------- configs
def _tupled(value: Any) -> Any:
    """Lists (what JSON gives back) as tuples, nested ones too, so configs stay hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


def _listed(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_listed(v) for v in value]
    return value


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ZooConfig:
    """Fields every zoo model has; subclasses add their architecture's numbers."""

    num_classes: int = 10  # classifier outputs
    in_channels: int = 3  # image channels (1 for grayscale)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _tupled(getattr(self, f.name)))
        self._validate()

    def _validate(self) -> None:
        _positive_int("num_classes", self.num_classes)
        _positive_int("in_channels", self.in_channels)
        drop = getattr(self, "drop_rate", 0.0)
        if isinstance(drop, int) and not isinstance(drop, bool):
            object.__setattr__(self, "drop_rate", float(drop))
            drop = float(drop)
        if not isinstance(drop, float) or not 0.0 <= drop < 1.0:
            raise ValueError(f"drop_rate must be a number in [0, 1), got {drop!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (tuples as lists): survives JSON and ``weights_only`` loading."""
        return {f.name: _listed(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ZooConfig:
        """Rebuild a config saved by :meth:`to_dict`; unknown keys are errors, so that a
        checkpoint of another architecture is not silently misread."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                f"known fields: {', '.join(known)}"
            )
        return cls(**d)


def _check_widths(name: str, widths: tuple[int, ...], count: int) -> None:
    if len(widths) != count:
        raise ValueError(f"{name} needs {count} entries, got {len(widths)}: {widths!r}")
    for w in widths:
        _positive_int(f"each entry of {name}", w)


@dataclass(frozen=True)
class AlexNetConfig(ZooConfig):
    widths: tuple[int, ...] = (96, 256, 384, 384, 256)  # channels of the five convolutions
    hidden: int = 4096  # width of the two hidden fully connected layers
    drop_rate: float = 0.5  # dropout after each hidden fully connected layer

    def _validate(self) -> None:
        super()._validate()
        _check_widths("widths", self.widths, 5)
        _positive_int("hidden", self.hidden)


@dataclass(frozen=True)
class VGGConfig(ZooConfig):
    # (convolutions, channels) per VGG block; VGG-11 by default. Each block ends in a 2×2 pool.
    conv_arch: tuple[tuple[int, int], ...] = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
    hidden: int = 4096  # width of the two hidden fully connected layers
    drop_rate: float = 0.5  # dropout after each hidden fully connected layer

    def _validate(self) -> None:
        super()._validate()
        if not self.conv_arch:
            raise ValueError("conv_arch needs at least one (convolutions, channels) block")
        for block in self.conv_arch:
            if len(block) != 2:
                raise ValueError(f"each conv_arch entry is (convolutions, channels), got {block}")
            _positive_int("convolutions in a conv_arch block", block[0])
            _positive_int("channels in a conv_arch block", block[1])
        _positive_int("hidden", self.hidden)


@dataclass(frozen=True)
class NiNConfig(ZooConfig):
    widths: tuple[int, ...] = (96, 256, 384)  # channels of the three NiN blocks before the last
    drop_rate: float = 0.5  # dropout before the last NiN block (the classifier block)

    def _validate(self) -> None:
        super()._validate()
        _check_widths("widths", self.widths, 3)


@dataclass(frozen=True)
class GoogLeNetConfig(ZooConfig):
    """GoogLeNet has the book's fixed numbers; only the input and output sizes vary."""


@dataclass(frozen=True)
class ResNetConfig(ZooConfig):
    # (residual blocks, channels) per stage; ResNet-18 by default.
    arch: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (2, 256), (2, 512))

    def _validate(self) -> None:
        super()._validate()
        if not self.arch:
            raise ValueError("arch needs at least one (residual blocks, channels) stage")
        for stage in self.arch:
            if len(stage) != 2:
                raise ValueError(f"each arch entry is (residual blocks, channels), got {stage}")
            _positive_int("residual blocks in a stage", stage[0])
            _positive_int("channels in a stage", stage[1])


@dataclass(frozen=True)
class D2LDenseNetConfig(ZooConfig):
    num_init_features: int = 64  # channels out of the stem
    growth_rate: int = 32  # k: channels each conv block adds
    block_config: tuple[int, ...] = (4, 4, 4, 4)  # conv blocks per dense block

    def _validate(self) -> None:
        super()._validate()
        _positive_int("num_init_features", self.num_init_features)
        _positive_int("growth_rate", self.growth_rate)
        if not self.block_config:
            raise ValueError("block_config needs at least one dense block")
        for n in self.block_config:
            _positive_int("each entry of block_config", n)
        width = self.num_init_features
        for b, n in enumerate(self.block_config[:-1], start=1):
            width = (width + n * self.growth_rate) // 2
            if width < 1:
                raise ValueError(f"transition{b} would keep no channels")


# ----------------------------------------------------------------------------- AlexNet
class AlexNet(nn.Module):
    """AlexNet as in d2l §8.1 (five convolutions, three max-pools, two 4096-wide hidden
    layers with dropout 0.5), for small images.

    Changes against the book (which resizes images to 224): the first convolution is
    3×3 with stride 1 and padding 1 instead of 11×11 with stride 4; the last max-pool is
    an adaptive max-pool to 3×3, so that 28- and 32-pixel inputs both give the head
    256·3·3 features (the book's head reads 256·5·5).
    """

    def __init__(self, config: AlexNetConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3, c4, c5 = config.widths
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, c1, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(3),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c5 * 9, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.drop_rate),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.drop_rate),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------- VGG
class VGG(nn.Module):
    """VGG as in d2l §8.2: blocks of 3×3 convolutions + ReLU, each ending in a 2×2
    max-pool, then two hidden fully connected layers with dropout 0.5. VGG-11 by default.

    Changes against the book (224-pixel inputs, a head reading 512·7·7): the pools round
    up (``ceil_mode``), so five of them take 28 and 32 pixels down to 1×1 instead of to
    nothing, and an adaptive average pool to 1×1 feeds the head 512 features.
    """

    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_channels
        for num_convs, width in config.conv_arch:
            for _ in range(num_convs):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.drop_rate),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.drop_rate),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------- NiN
def _nin_block(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int):
    """One convolution followed by two 1×1 convolutions (per-pixel MLP), ReLU after each."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(inplace=True),
    )


class NiN(nn.Module):
    """Network in Network as in d2l §8.3: three NiN blocks with max-pools, dropout 0.5, a
    last NiN block with one channel per class, and global average pooling (no linear head).

    Changes against the book (224-pixel inputs): the first block's convolution is 3×3 with
    stride 1 and padding 1 instead of 11×11 with stride 4.
    """

    def __init__(self, config: NiNConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.widths
        self.features = nn.Sequential(
            _nin_block(config.in_channels, c1, kernel=3, stride=1, padding=1),
            nn.MaxPool2d(3, stride=2),
            _nin_block(c1, c2, kernel=5, stride=1, padding=2),
            nn.MaxPool2d(3, stride=2),
            _nin_block(c2, c3, kernel=3, stride=1, padding=1),
            nn.MaxPool2d(3, stride=2),
            nn.Dropout(config.drop_rate),
            _nin_block(c3, config.num_classes, kernel=3, stride=1, padding=1),
            nn.AdaptiveAvgPool2d(1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.features(x), 1)


# ----------------------------------------------------------------------------- GoogLeNet
class Inception(nn.Module):
    """d2l's Inception block: four parallel branches, concatenated along the channels.

    ``b1``: 1×1 conv; ``b2``: 1×1 conv then 3×3 conv; ``b3``: 1×1 conv then 5×5 conv;
    ``b4``: 3×3 max-pool (stride 1) then 1×1 conv; ReLU after every convolution.
    """

    def __init__(
        self,
        in_channels: int,
        c1: int,
        c2: tuple[int, int],
        c3: tuple[int, int],
        c4: int,
    ) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(in_channels, c1, 1), nn.ReLU(inplace=True))
        self.b2 = nn.Sequential(
            nn.Conv2d(in_channels, c2[0], 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2[0], c2[1], 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.b3 = nn.Sequential(
            nn.Conv2d(in_channels, c3[0], 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3[0], c3[1], 5, padding=2),
            nn.ReLU(inplace=True),
        )
        self.b4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1),
            nn.Conv2d(in_channels, c4, 1),
            nn.ReLU(inplace=True),
        )
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.b1(x), self.b2(x), self.b3(x), self.b4(x)), dim=1)


# (name, c1, c2, c3, c4) of the nine Inception blocks, in the book's order; "pool" marks
# the 3×3 stride-2 max-pools between the stages.
_INCEPTIONS: tuple[tuple[str, int, tuple[int, int], tuple[int, int], int] | str, ...] = (
    ("inception3a", 64, (96, 128), (16, 32), 32),
    ("inception3b", 128, (128, 192), (32, 96), 64),
    "pool3",
    ("inception4a", 192, (96, 208), (16, 48), 64),
    ("inception4b", 160, (112, 224), (24, 64), 64),
    ("inception4c", 128, (128, 256), (24, 64), 64),
    ("inception4d", 112, (144, 288), (32, 64), 64),
    ("inception4e", 256, (160, 320), (32, 128), 128),
    "pool4",
    ("inception5a", 256, (160, 320), (32, 128), 128),
    ("inception5b", 384, (192, 384), (48, 128), 128),
)


class GoogLeNet(nn.Module):
    """GoogLeNet (Inception v1) as in d2l §8.4: a stem, nine Inception blocks in three
    stages with max-pools between them, global average pooling and a linear classifier.

    Changes against the book (96-pixel inputs, five halvings): the stem's first
    convolution is 3×3 with stride 1 instead of 7×7 with stride 2, and the max-pool after
    it is gone, so a 32-pixel image reaches the last stage at 4×4 (28 pixels: 4×4 too).
    """

    def __init__(self, config: GoogLeNetConfig) -> None:
        super().__init__()
        self.config = config
        parts: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(config.in_channels, 64, kernel_size=3, padding=1)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(64, 64, kernel_size=1)),
            ("relu2", nn.ReLU(inplace=True)),
            ("conv3", nn.Conv2d(64, 192, kernel_size=3, padding=1)),
            ("relu3", nn.ReLU(inplace=True)),
            ("pool2", nn.MaxPool2d(3, stride=2, padding=1)),
        ]
        channels = 192
        for spec in _INCEPTIONS:
            if isinstance(spec, str):
                parts.append((spec, nn.MaxPool2d(3, stride=2, padding=1)))
                continue
            name, c1, c2, c3, c4 = spec
            block = Inception(channels, c1, c2, c3, c4)
            parts.append((name, block))
            channels = block.out_channels
        parts.append(("avgpool", nn.AdaptiveAvgPool2d(1)))
        self.features = nn.Sequential(OrderedDict(parts))
        self.classifier = nn.Linear(channels, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ----------------------------------------------------------------------------- ResNet
class Residual(nn.Module):
    """d2l's residual block: 3×3 conv, BN, ReLU, 3×3 conv, BN, plus the input (through a
    1×1 convolution when the shape changes), then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = (
            nn.Conv2d(in_channels, channels, 1, stride=stride)
            if stride != 1 or in_channels != channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return F.relu(y + x)


class ResNet(nn.Module):
    """ResNet as in d2l §8.6: a stem, stages of residual blocks (the first block of every
    stage but the first halves the resolution and widens through a 1×1 shortcut), global
    average pooling and a linear classifier. ResNet-18 by default: 2-2-2-2 blocks of
    64-128-256-512 channels.

    Changes against the book (96-pixel inputs): the stem is a 3×3 convolution with stride
    1, BN and ReLU, without the 7×7 stride-2 convolution's stride and the max-pool after
    it (the usual CIFAR ResNet-18); 32 pixels reach the last stage at 4×4.
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        first = config.arch[0][1]
        stages: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(config.in_channels, first, kernel_size=3, padding=1)),
            ("bn0", nn.BatchNorm2d(first)),
            ("relu0", nn.ReLU(inplace=True)),
        ]
        channels = first
        for s, (num_blocks, width) in enumerate(config.arch, start=1):
            blocks = []
            for i in range(num_blocks):
                stride = 2 if i == 0 and s > 1 else 1
                blocks.append(Residual(channels, width, stride))
                channels = width
            stages.append((f"stage{s}", nn.Sequential(*blocks)))
        stages.append(("avgpool", nn.AdaptiveAvgPool2d(1)))
        self.features = nn.Sequential(OrderedDict(stages))
        self.classifier = nn.Linear(channels, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ----------------------------------------------------------------------------- d2l DenseNet
def _conv_block(in_channels: int, channels: int) -> nn.Sequential:
    """BN, ReLU, 3×3 convolution (d2l's ``conv_block``)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, channels, kernel_size=3, padding=1),
    )


class D2LDenseBlock(nn.Module):
    """d2l's ``DenseBlock``: each conv block reads everything so far and its output is
    appended, ``X = torch.cat((X, Y), dim=1)``, one concatenation per conv block."""

    def __init__(self, num_convs: int, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(_conv_block(in_channels + i * growth_rate, growth_rate) for i in range(num_convs))
        )
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        for block in self.layers:
            x = torch.cat((x, block(x)), dim=1)
        return x


def _transition_block(in_channels: int, channels: int) -> nn.Sequential:
    """BN, ReLU, 1×1 convolution, 2×2 average pool (d2l's ``transition_block``)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


class D2LDenseNet(nn.Module):
    """The DenseNet of d2l §8.7: a stem, four dense blocks of four plain conv blocks
    (BN-ReLU-3×3 conv, growth rate 32, no bottleneck), transitions that halve the channels
    and the resolution, then BN, ReLU, global average pooling and a linear classifier.

    Changes against the book (96-pixel inputs): the stem is a 3×3 convolution with stride
    1, BN and ReLU, without the 7×7 stride-2 convolution's stride and the max-pool after
    it; 32 pixels reach the last block at 4×4.
    """

    def __init__(self, config: D2LDenseNetConfig) -> None:
        super().__init__()
        self.config = config
        width = config.num_init_features
        parts: list[tuple[str, nn.Module]] = [
            (
                "stem",
                nn.Sequential(
                    nn.Conv2d(config.in_channels, width, kernel_size=3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ),
            )
        ]
        for b, num_convs in enumerate(config.block_config, start=1):
            block = D2LDenseBlock(num_convs, width, config.growth_rate)
            parts.append((f"denseblock{b}", block))
            width = block.out_channels
            if b < len(config.block_config):
                parts.append((f"transition{b}", _transition_block(width, width // 2)))
                width //= 2
        parts += [("norm", nn.BatchNorm2d(width)), ("relu", nn.ReLU(inplace=True))]
        parts.append(("avgpool", nn.AdaptiveAvgPool2d(1)))
        self.features = nn.Sequential(OrderedDict(parts))
        self.classifier = nn.Linear(width, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ----------------------------------------------------------------------------- presets
def _build(model_cls: type[nn.Module], config_cls: type[ZooConfig], overrides: Mapping):
    return model_cls(config_cls.from_dict(dict(overrides)))


def alexnet(**overrides: Any) -> AlexNet:
    """AlexNet (d2l §8.1) for 28–32-pixel images."""
    return _build(AlexNet, AlexNetConfig, overrides)


def vgg11(**overrides: Any) -> VGG:
    """VGG-11 (d2l §8.2) for 28–32-pixel images."""
    return _build(VGG, VGGConfig, overrides)


def nin(**overrides: Any) -> NiN:
    """Network in Network (d2l §8.3) for 28–32-pixel images."""
    return _build(NiN, NiNConfig, overrides)


def googlenet(**overrides: Any) -> GoogLeNet:
    """GoogLeNet / Inception v1 (d2l §8.4) for 28–32-pixel images."""
    return _build(GoogLeNet, GoogLeNetConfig, overrides)


def resnet18(**overrides: Any) -> ResNet:
    """ResNet-18 (d2l §8.6) for 28–32-pixel images."""
    return _build(ResNet, ResNetConfig, overrides)


def d2l_densenet(**overrides: Any) -> D2LDenseNet:
    """The plain DenseNet of d2l §8.7 (4 blocks × 4 conv blocks, k=32) for small images."""
    return _build(D2LDenseNet, D2LDenseNetConfig, overrides)


#: Registered name → (preset, config class, model class).
ZOO: dict[str, tuple[Any, type[ZooConfig], type[nn.Module]]] = {
    "alexnet": (alexnet, AlexNetConfig, AlexNet),
    "vgg11": (vgg11, VGGConfig, VGG),
    "nin": (nin, NiNConfig, NiN),
    "googlenet": (googlenet, GoogLeNetConfig, GoogLeNet),
    "resnet18": (resnet18, ResNetConfig, ResNet),
    "d2l_densenet": (d2l_densenet, D2LDenseNetConfig, D2LDenseNet),
}
