"""DenseNets written the way public repositories write them, for structure-inference tests.

Each builder returns a real ``nn.Module`` that runs forward; only the module names, the
nesting and the concatenation order differ. ``EXPECTED`` lists what inference must find.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class _Layer(nn.Module):
    """A dense layer with configurable attribute names (bn1/conv1/bn2/conv2 style)."""

    def __init__(self, cin, k, width, names=("bn1", "conv1", "bn2", "conv2"), newest_first=False):
        super().__init__()
        self.names, self.newest_first = names, newest_first
        n1, c1, n2, c2 = names
        if width:
            setattr(self, n1, nn.BatchNorm2d(cin))
            setattr(self, c1, nn.Conv2d(cin, width, 1, bias=False))
            setattr(self, n2, nn.BatchNorm2d(width))
            setattr(self, c2, nn.Conv2d(width, k, 3, padding=1, bias=False))
        else:
            setattr(self, n1, nn.BatchNorm2d(cin))
            setattr(self, c1, nn.Conv2d(cin, k, 3, padding=1, bias=False))
        self.width = width

    def forward(self, x):
        n1, c1, n2, c2 = self.names
        out = getattr(self, c1)(F.relu(getattr(self, n1)(x)))
        if self.width:
            out = getattr(self, c2)(F.relu(getattr(self, n2)(out)))
        return torch.cat([out, x] if self.newest_first else [x, out], 1)


class _SeqLayer(nn.Module):
    """``bottleneck`` and ``conv`` as Sequential(BN, ReLU, Conv): keys end in ``.2``."""

    def __init__(self, cin, k, width):
        super().__init__()
        self.bottleneck = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, width, 1, bias=False)
        )
        self.conv = nn.Sequential(
            nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, k, 3, padding=1, bias=False)
        )

    def forward(self, x):
        return torch.cat([x, self.conv(self.bottleneck(x))], 1)


class _Trans(nn.Module):
    def __init__(self, cin, cout, names=("bn", "conv")):
        super().__init__()
        self.names = names
        setattr(self, names[0], nn.BatchNorm2d(cin))
        setattr(self, names[1], nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
        n, c = self.names
        return F.avg_pool2d(getattr(self, c)(F.relu(getattr(self, n)(x))), 2)


def _plan(c0, k, layers, theta):
    """Input widths of every block and transition output widths."""
    widths, c = [], c0
    for i, n in enumerate(layers):
        out = c + n * k
        nxt = int(out * theta) if i < len(layers) - 1 else None
        widths.append((c, out, nxt))
        c = nxt
    return widths


class _Head(nn.Module):
    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(x), 1), 1)


class AttrBlocksNet(nn.Module):
    """``conv1``, ``{block}{b}{sep}{i}.*``, ``{trans}{b}.*``, ``bn``, ``{fc}``.

    kuangliu style: block="dense", sep=".", trans names ("bn","conv"), fc="linear",
    newest-first. bearpaw: trans ("bn1","conv1"), fc="fc". The widely copied CIFAR
    implementation: block="block", sep=".layer.", fc="fc".
    """

    def __init__(
        self,
        *,
        k=12,
        layers=(4, 4, 4),
        c0=24,
        width=48,
        theta=0.5,
        in_ch=3,
        classes=10,
        block="dense",
        sep=".",
        trans="trans",
        trans_names=("bn", "conv"),
        norm="bn",
        fc="linear",
        newest_first=False,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, c0, 3, padding=1, bias=False)
        self.order = []
        for b, (cin, cout, nxt) in enumerate(_plan(c0, k, layers, theta), start=1):
            seq = nn.Sequential(
                *[
                    _Layer(cin + i * k, k, width, newest_first=newest_first)
                    for i in range(layers[b - 1])
                ]
            )
            if sep == ".":
                setattr(self, f"{block}{b}", seq)
                self.order.append(f"{block}{b}")
            else:
                holder = nn.Module()
                holder.layer = seq
                setattr(self, f"{block}{b}", holder)
                self.order.append(f"{block}{b}.layer")
            if nxt is not None:
                setattr(self, f"{trans}{b}", _Trans(cout, nxt, trans_names))
                self.order.append(f"{trans}{b}")
            last = cout
        setattr(self, norm, nn.BatchNorm2d(last))
        setattr(self, fc, nn.Linear(last, classes))
        self.norm_name, self.fc_name = norm, fc

    def forward(self, x):
        x = self.conv1(x)
        for name in self.order:
            x = self.get_submodule(name)(x)
        x = _Head()(getattr(self, self.norm_name)(x))
        return getattr(self, self.fc_name)(x)


class FeaturesNet(nn.Module):
    """``features.denseblock{b}.{container}.{i}.conv1`` with torchvision-like transitions.

    With ``conv0_outside``, the stem is ``conv0`` at the top level, outside ``features``.
    """

    def __init__(
        self, *, container="layers", conv0_outside=False, k=12, layers=(3, 3, 3), c0=24, width=48
    ):
        super().__init__()
        stem = nn.Conv2d(3, c0, 3, padding=1, bias=False)
        self.features = nn.Sequential()
        if conv0_outside:
            self.conv0 = stem
        else:
            self.features.add_module("conv0", stem)
        self.conv0_outside = conv0_outside
        for b, (cin, cout, nxt) in enumerate(_plan(c0, k, layers, 0.5), start=1):
            block = nn.Module()
            setattr(
                block,
                container,
                nn.ModuleList(
                    _Layer(cin + i * k, k, width, names=("norm1", "conv1", "norm2", "conv2"))
                    for i in range(layers[b - 1])
                ),
            )
            block.forward = _run_list(getattr(block, container))
            self.features.add_module(f"denseblock{b}", block)
            if nxt is not None:
                self.features.add_module(f"transition{b}", _Trans(cout, nxt, ("norm", "conv")))
            last = cout
        self.features.add_module("norm5", nn.BatchNorm2d(last))
        self.classifier = nn.Linear(last, 10)

    def forward(self, x):
        if self.conv0_outside:
            x = self.conv0(x)
        return self.classifier(_Head()(self.features(x)))


def _run_list(modules):
    def forward(x):
        for m in modules:
            x = m(x)
        return x

    return forward


class IndexedNet(nn.Module):
    """``stem``, ``blocks.{b}.layers.{i}.bottleneck.2``, ``transitions.{b}.conv.2``, ``head``.

    Blocks and transitions live in separate ModuleLists, so sorted key order is not the
    forward order.
    """

    def __init__(self, *, k=8, layers=(3, 4, 2), c0=16, width=32, in_ch=3, classes=7):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, c0, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for b, (cin, cout, nxt) in enumerate(_plan(c0, k, layers, 0.5)):
            holder = nn.Module()
            holder.layers = nn.Sequential(
                *[_SeqLayer(cin + i * k, k, width) for i in range(layers[b])]
            )
            self.blocks.append(holder)
            if nxt is not None:
                trans = nn.Module()
                trans.conv = nn.Sequential(
                    nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, nxt, 1, bias=False)
                )
                self.transitions.append(trans)
            last = cout
        self.final_norm = nn.BatchNorm2d(last)
        self.head = nn.Linear(last, classes)

    def forward(self, x):
        x = self.stem(x)
        for b, block in enumerate(self.blocks):
            x = block.layers(x)
            if b < len(self.transitions):
                x = F.avg_pool2d(self.transitions[b].conv(x), 2)
        return self.head(_Head()(self.final_norm(x)))


class FlatNet(nn.Module):
    """Everything in one flat Sequential: stem, layers, transitions, norm, all by index."""

    def __init__(self, *, k=6, layers=(3, 3), c0=12):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, c0, 3, padding=1, bias=False)]
        for b, (cin, cout, nxt) in enumerate(_plan(c0, k, layers, 0.5)):
            mods += [_Layer(cin + i * k, k, 0) for i in range(layers[b])]
            if nxt is not None:
                mods.append(_Trans(cout, nxt))
            last = cout
        mods.append(nn.BatchNorm2d(last))
        self.body = nn.Sequential(*mods)
        self.fc = nn.Linear(last, 10)

    def forward(self, x):
        return self.fc(_Head()(self.body(x)))


@dataclass(frozen=True)
class Expected:
    """What inference must report for a layout."""

    layers: tuple[int, ...]
    growth: int
    c0: int
    bottleneck: int | None
    input_channels: int
    classes: int
    first_conv: str  # weight key of block 1, layer 1's first conv
    extra: tuple[str, ...]  # weight keys of the extra columns, block by block


def layouts():
    """``{name: (module builder, input shape, Expected)}`` for every layout under test."""
    return {
        "kuangliu": (
            lambda: AttrBlocksNet(newest_first=True),
            (2, 3, 32, 32),
            Expected(
                (4, 4, 4),
                12,
                24,
                48,
                3,
                10,
                "dense1.0.conv1.weight",
                ("trans1.conv.weight", "trans2.conv.weight", "linear.weight"),
            ),
        ),
        "bearpaw": (
            lambda: AttrBlocksNet(trans_names=("bn1", "conv1"), fc="fc"),
            (2, 3, 32, 32),
            Expected(
                (4, 4, 4),
                12,
                24,
                48,
                3,
                10,
                "dense1.0.conv1.weight",
                ("trans1.conv1.weight", "trans2.conv1.weight", "fc.weight"),
            ),
        ),
        "block_layer": (
            lambda: AttrBlocksNet(
                block="block",
                sep=".layer.",
                trans_names=("bn1", "conv1"),
                norm="bn1",
                fc="fc",
                k=6,
                layers=(5, 5, 5),
                c0=12,
                width=0,
                theta=1.0,
            ),
            (2, 3, 32, 32),
            Expected(
                (5, 5, 5),
                6,
                12,
                None,
                3,
                10,
                "block1.layer.0.conv1.weight",
                ("trans1.conv1.weight", "trans2.conv1.weight", "fc.weight"),
            ),
        ),
        "features_layers": (
            lambda: FeaturesNet(container="layers"),
            (2, 3, 32, 32),
            Expected(
                (3, 3, 3),
                12,
                24,
                48,
                3,
                10,
                "features.denseblock1.layers.0.conv1.weight",
                (
                    "features.transition1.conv.weight",
                    "features.transition2.conv.weight",
                    "classifier.weight",
                ),
            ),
        ),
        "features_block_conv0_outside": (
            lambda: FeaturesNet(container="block", conv0_outside=True),
            (2, 3, 32, 32),
            Expected(
                (3, 3, 3),
                12,
                24,
                48,
                3,
                10,
                "features.denseblock1.block.0.conv1.weight",
                (
                    "features.transition1.conv.weight",
                    "features.transition2.conv.weight",
                    "classifier.weight",
                ),
            ),
        ),
        "indexed_modulelists": (
            lambda: IndexedNet(),
            (2, 3, 32, 32),
            Expected(
                (3, 4, 2),
                8,
                16,
                32,
                3,
                7,
                "blocks.0.layers.0.bottleneck.2.weight",
                ("transitions.0.conv.2.weight", "transitions.1.conv.2.weight", "head.weight"),
            ),
        ),
        "bottleneck_2k": (
            lambda: AttrBlocksNet(k=10, width=20, c0=20, layers=(3, 3, 3)),
            (2, 3, 32, 32),
            Expected(
                (3, 3, 3),
                10,
                20,
                20,
                3,
                10,
                "dense1.0.conv1.weight",
                ("trans1.conv.weight", "trans2.conv.weight", "linear.weight"),
            ),
        ),
        "four_blocks_grayscale": (
            lambda: AttrBlocksNet(k=8, width=32, c0=16, layers=(2, 3, 4, 3), in_ch=1),
            (2, 1, 28, 28),
            Expected(
                (2, 3, 4, 3),
                8,
                16,
                32,
                1,
                10,
                "dense1.0.conv1.weight",
                ("trans1.conv.weight", "trans2.conv.weight", "trans3.conv.weight", "linear.weight"),
            ),
        ),
        "flat_sequential": (
            lambda: FlatNet(),
            (2, 3, 32, 32),
            Expected(
                (3, 3),
                6,
                12,
                None,
                3,
                10,
                "body.1.conv1.weight",
                ("body.4.conv.weight", "fc.weight"),
            ),
        ),
    }
